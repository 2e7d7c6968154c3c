"""The Dagster entry point: every data level as a plate-partitioned asset.

`defs` is what `dagster dev` / `make dev` load. Its data root comes from the MDP_DATA_ROOT environment
variable (read by Dagster when a run starts, never at import); `make` sets it to `.mdp/data`.
`build_definitions` lets tests and deployments wire their own storage.
"""

from __future__ import annotations

import dagster as dg

from mdp_assets.defs.embeddings import assets as embeddings_assets
from mdp_assets.defs.illumination import assets as illumination_assets
from mdp_assets.defs.jobs import consensus_job, plate_job
from mdp_assets.defs.parameters import PipelineParameters, with_code_versions
from mdp_assets.defs.plates.resources import IntakeSettings
from mdp_assets.defs.plates.sensors import new_plate_sensor
from mdp_assets.defs.profiles import assets as profiles_assets
from mdp_assets.defs.raw import assets as raw_assets
from mdp_assets.defs.segmentation import assets as segmentation_assets
from mdp_assets.defs.single_cell import assets as single_cell_assets
from mdp_assets.defs.storage.io_manager import PlateLevelIOManager
from mdp_assets.defs.storage.resources import MdpStorage

ASSET_MODULES = [
    raw_assets,
    illumination_assets,
    segmentation_assets,
    single_cell_assets,
    profiles_assets,
    embeddings_assets,
]


def build_definitions(
    storage: MdpStorage | None = None,
    intake: IntakeSettings | None = None,
    parameters: PipelineParameters | None = None,
) -> dg.Definitions:
    storage = storage or MdpStorage(data_root=dg.EnvVar("MDP_DATA_ROOT"))
    parameters = parameters or PipelineParameters()
    assets = [a for a in dg.load_assets_from_modules(ASSET_MODULES) if isinstance(a, dg.AssetsDefinition)]
    return dg.Definitions(
        assets=with_code_versions(assets, parameters),
        jobs=[plate_job, consensus_job],
        sensors=[new_plate_sensor],
        resources={
            "storage": storage,
            "intake": intake or IntakeSettings(),
            "parameters": parameters,
            "io_manager": PlateLevelIOManager(storage=storage, parameters=parameters),
        },
    )


defs = build_definitions()
