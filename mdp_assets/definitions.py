"""The Dagster entry point: every data level as a plate-partitioned asset.

`defs` is what `dagster dev` / `make dev` load. Its data root comes from the MDP_DATA_ROOT environment
variable (read by Dagster when a run starts, never at import); `make` sets it to `.mdp/data`.
`build_definitions` lets tests and deployments wire their own storage.
"""

from __future__ import annotations

import dagster as dg

from mdp_assets.defs.catalog_checks import build_verify_checks, build_verify_job_and_schedule
from mdp_assets.defs.embeddings import assets as embeddings_assets
from mdp_assets.engines.cellprofiler.engine import CellProfilerEngine
from mdp_assets.defs.illumination import assets as illumination_assets
from mdp_assets.defs.jobs import build_jobs
from mdp_assets.defs.parameters import PipelineParameters, with_code_versions
from mdp_assets.defs.plates.resources import IntakeSettings
from mdp_assets.defs.plates.sensors import new_plate_sensor
from mdp_assets.defs.profiles import assets as profiles_assets
from mdp_assets.defs.raw import assets as raw_assets
from mdp_assets.defs.segmentation import assets as segmentation_assets
from mdp_assets.defs.single_cell import assets as single_cell_assets
from mdp_assets.defs.storage import costs as storage_costs_assets
from mdp_assets.storage.io_manager import PlateLevelIOManager
from mdp_assets.defs.storage.lifecycle import build_lifecycle
from mdp_assets.storage.resource import MdpStorage
from mdp_assets.storage.policy import shipped_policy

ASSET_MODULES = [
    raw_assets,
    illumination_assets,
    segmentation_assets,
    single_cell_assets,
    profiles_assets,
    embeddings_assets,
    storage_costs_assets,
]


# Opt-in reprocessing: a level whose code version changed, or whose inputs were re-made, is re-materialized
# by the automation daemon, partition by partition; levels never made are left to the intake sensor.
REPROCESS_CONDITION = (
    (dg.AutomationCondition.code_version_changed() | dg.AutomationCondition.any_deps_updated())
    & ~dg.AutomationCondition.missing()
    & ~dg.AutomationCondition.any_deps_missing()
    & ~dg.AutomationCondition.in_progress()
)


def consumers_of(assets: list[dg.AssetsDefinition]) -> dict[str, list[str]]:
    """Level -> the levels that read it."""
    consumers: dict[str, list[str]] = {}
    for asset in assets:
        for key in asset.keys:
            for parent in asset.asset_deps[key]:
                consumers.setdefault(parent.path[-1], []).append(key.path[-1])
    return consumers


def build_definitions(
    storage: MdpStorage | None = None,
    intake: IntakeSettings | None = None,
    parameters: PipelineParameters | None = None,
    reprocess_automatically: bool = False,
    cellprofiler: CellProfilerEngine | None = None,
    executor: dg.ExecutorDefinition | None = None,
) -> dg.Definitions:
    """The whole platform. A deployment may set its own storage, intake and step parameters, configure the
    CellProfiler engine, and opt in to automatic reprocessing of stale levels (otherwise: `mdp reprocess`,
    or a backfill in the UI). Engine "auto" becomes "cellprofiler" only when `cellprofiler` is given and
    its environment exists."""
    storage = storage or MdpStorage(data_root=dg.EnvVar("MDP_DATA_ROOT"))
    storage.policy()  # a policy that breaks its own rules stops the definitions from loading, naming the rule
    parameters = parameters or PipelineParameters()
    if parameters.engine == "auto":
        found = cellprofiler is not None and cellprofiler.available()
        # A new resource, not model_copy: Dagster builds run resources from their constructed configuration.
        parameters = PipelineParameters(**{**parameters.model_dump(), "engine": "cellprofiler" if found else "builtin"})
    cellprofiler = cellprofiler or CellProfilerEngine()
    assets = with_code_versions(
        [a for a in dg.load_assets_from_modules(ASSET_MODULES) if isinstance(a, dg.AssetsDefinition)], parameters
    )
    if reprocess_automatically:
        assets = [a.map_asset_specs(lambda s: s.replace_attributes(automation_condition=REPROCESS_CONDITION)) for a in assets]
    verify_checks = build_verify_checks([key for a in assets for key in a.keys])
    verify_job, verify_schedule = build_verify_job_and_schedule(verify_checks)
    lifecycle_job, lifecycle_schedule, release_sensor = build_lifecycle(consumers_of(assets))
    costs_job, costs_schedule = storage_costs_assets.build_storage_costs_job(verify_checks)
    return dg.Definitions(
        assets=assets,
        asset_checks=[verify_checks],
        jobs=[*build_jobs(verify_checks), verify_job, lifecycle_job, costs_job],
        schedules=[verify_schedule, lifecycle_schedule, costs_schedule],
        sensors=[new_plate_sensor, release_sensor],
        resources={
            "storage": storage,
            "intake": intake or IntakeSettings(),
            "parameters": parameters,
            "cellprofiler": cellprofiler,
            "io_manager": PlateLevelIOManager(storage=storage, parameters=parameters),
        },
        executor=executor,
    )


def deployment_definitions(storage: MdpStorage | None = None) -> dg.Definitions:
    """What `make dev` and `mdp` use: the default deployment, with CellProfiler when `make cellprofiler` built it."""
    return build_definitions(storage, cellprofiler=CellProfilerEngine())


def service_storage() -> MdpStorage:
    """The service's storage (deploy/): the shipped service policy, every level in the object store, plates
    arriving under an S3 prefix. Locations, endpoint and bucket come from the environment when a run or a
    sensor tick starts; credentials only from the AWS variables. deploy/README.md lists every variable."""
    return MdpStorage(
        data_root=dg.EnvVar("MDP_DATA_ROOT"),
        policy_file=str(shipped_policy("service")),
        landing_s3_bucket=dg.EnvVar("MDP_LANDING_BUCKET"),
        landing_s3_prefix=dg.EnvVar("MDP_LANDING_PREFIX"),
        s3_endpoint_url=dg.EnvVar("MDP_S3_ENDPOINT_URL"),
        s3_region=dg.EnvVar("AWS_REGION"),
    )


def service_definitions(
    cellprofiler: CellProfilerEngine | None = None, executor: dg.ExecutorDefinition | None = None
) -> dg.Definitions:
    """The code location a service serves (`dagster api grpc -m mdp_assets.locations.<name>`)."""
    intake = IntakeSettings(quiet_period_seconds=dg.EnvVar.int("MDP_QUIET_PERIOD_SECONDS"))
    return build_definitions(service_storage(), intake, cellprofiler=cellprofiler or CellProfilerEngine(),
                             executor=executor)


defs = deployment_definitions()
