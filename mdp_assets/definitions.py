"""The Dagster entry point: every data level as a plate-partitioned asset, built from the deployment's
configuration (`mdp.yaml`, see `mdp_assets.config`).

`defs` is what `dagster dev`, the daemon and the code servers load; it reads the configuration when Dagster
loads the code location, never at import. `build_definitions` builds the same from any `Deployment`
(tests, the service code locations).
"""

from __future__ import annotations

import dagster as dg

from mdp_assets.config import Deployment, IntakeSettings, StepSettings, load_deployment
from mdp_assets.defs.embeddings import assets as embeddings_assets
from mdp_assets.defs.illumination import assets as illumination_assets
from mdp_assets.defs.illumination import checks as illumination_checks
from mdp_assets.defs.images import assets as images_assets
from mdp_assets.defs.raw import checks as raw_checks
from mdp_assets.defs.jobs import build_jobs
from mdp_assets.defs.plates.sensors import new_plate_sensor
from mdp_assets.defs.profiles import assets as profiles_assets
from mdp_assets.defs.reprocess import build_reprocess_sensor
from mdp_assets.defs.raw import assets as raw_assets
from mdp_assets.defs.segmentation import assets as segmentation_assets
from mdp_assets.defs.profiles import checks as profile_checks
from mdp_assets.defs.segmentation import checks as segmentation_checks
from mdp_assets.defs.single_cell import checks as single_cell_checks
from mdp_assets.defs.single_cell import assets as single_cell_assets
from mdp_assets.defs.storage import costs as storage_costs_assets
from mdp_assets.defs.storage.lifecycle import build_lifecycle
from mdp_assets.defs.storage.verify import build_verify_checks, build_verify_job_and_schedule
from mdp_assets.engines.cellprofiler.engine import CellProfilerEngine
from mdp_assets.engines.cellprofiler.executor import cellprofiler_engine
from mdp_assets.services.reprocess import consumers_of
from mdp_assets.storage.io_manager import PlateLevelIOManager
from mdp_assets.storage.resource import MdpStorage

ASSET_MODULES = [
    raw_assets,
    illumination_assets,
    segmentation_assets,
    single_cell_assets,
    profiles_assets,
    embeddings_assets,
    images_assets,
    storage_costs_assets,
]
# The levels' own checks, each its own step over the stored partition: they run with their asset or alone.
CHECK_MODULES = [raw_checks, illumination_checks, segmentation_checks, single_cell_checks, profile_checks]

# Opt-in reprocessing: a level whose code version changed, or whose inputs were re-made, is re-materialized
# by the automation daemon, partition by partition; levels never made are left to the intake sensor.
REPROCESS_CONDITION = (
    (dg.AutomationCondition.code_version_changed() | dg.AutomationCondition.any_deps_updated())
    & ~dg.AutomationCondition.missing()
    & ~dg.AutomationCondition.any_deps_missing()
    & ~dg.AutomationCondition.in_progress()
)


def executor_for(deployment: Deployment) -> dg.ExecutorDefinition:
    execution = deployment.config.execution
    if execution.executor == "in_process":
        return dg.in_process_executor
    return dg.multiprocess_executor.configured({"max_concurrent": execution.max_concurrent_steps})


def build_definitions(
    deployment: Deployment,
    *,
    reprocess_automatically: bool = False,
    cellprofiler: CellProfilerEngine | None = None,
    executor: dg.ExecutorDefinition | None = None,
    storage: MdpStorage | None = None,
) -> dg.Definitions:
    """The whole platform for one deployment. A service location may bring its own CellProfiler launcher
    (a pod, a task) and executor; `storage` replaces the configured one (tests)."""
    storage = storage or MdpStorage.from_deployment(deployment)
    policy = storage.policy()  # a policy that breaks its own rules stops the definitions from loading, naming the rule
    settings = StepSettings.from_config(deployment.config)
    cellprofiler = cellprofiler or cellprofiler_engine(deployment)
    assets = [a for a in dg.load_assets_from_modules(ASSET_MODULES) if isinstance(a, dg.AssetsDefinition)
              and all(policy.builds(key.path[-1]) for key in a.keys)]
    assets = [a.map_asset_specs(lambda spec: spec.replace_attributes(code_version=settings.code_version(spec.key.path[-1])))
              for a in assets]
    if reprocess_automatically:
        assets = [a.map_asset_specs(lambda s: s.replace_attributes(automation_condition=REPROCESS_CONDITION))
                  for a in assets]
    verify_checks = build_verify_checks([key for a in assets for key in a.keys])
    verify_job, verify_schedule = build_verify_job_and_schedule(verify_checks)
    lifecycle_job, lifecycle_schedule, release_sensor = build_lifecycle(consumers_of(assets))
    costs_job, costs_schedule = storage_costs_assets.build_storage_costs_job(verify_checks)
    plate_jobs = build_jobs(verify_checks)  # plate_job, consensus_job
    return dg.Definitions(
        assets=assets,
        asset_checks=[*dg.load_asset_checks_from_modules(CHECK_MODULES), verify_checks],
        jobs=[*plate_jobs, verify_job, lifecycle_job, costs_job],
        schedules=[verify_schedule, lifecycle_schedule, costs_schedule],
        sensors=[new_plate_sensor, release_sensor, build_reprocess_sensor(plate_jobs)],
        resources={
            "storage": storage,
            "intake": IntakeSettings(**deployment.config.intake.model_dump()),
            "settings": settings,
            "cellprofiler": cellprofiler,
            "io_manager": PlateLevelIOManager(storage=storage, settings=settings),
        },
        executor=executor or executor_for(deployment),
    )


@dg.definitions
def defs() -> dg.Definitions:
    """The deployment `MDP_CONFIG` names (else ~/.mdp/mdp.yaml, else the built-in defaults)."""
    return build_definitions(load_deployment())
