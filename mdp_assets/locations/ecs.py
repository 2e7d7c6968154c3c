"""The AWS ECS code location: runs launched as ECS tasks by dagster-aws `EcsRunLauncher` (deploy/ecs/), CellProfiler
steps as tasks of their own through `PipesECSClient`, with the data root on EFS in both."""

import dagster as dg

from mdp_assets.config import load_deployment
from mdp_assets.definitions import build_definitions
from mdp_assets.engines.cellprofiler.engine import EcsCellProfilerEngine


@dg.definitions
def defs() -> dg.Definitions:
    engine = EcsCellProfilerEngine(
        environment="/opt/mdp/.mdp/cellprofiler",
        cluster=dg.EnvVar("MDP_ECS_CLUSTER"),
        task_definition=dg.EnvVar("MDP_CELLPROFILER_TASK_DEFINITION"),
        region=dg.EnvVar("AWS_REGION"),
    )
    return build_definitions(load_deployment(), cellprofiler=engine)
