"""The AWS ECS code location: runs launched as ECS tasks by dagster-aws `EcsRunLauncher` (deploy/ecs/), each CellProfiler
group of wells as a task of its own through `PipesECSClient`, with the data root on EFS in both."""

import dagster as dg

from mdp_assets.config import load_deployment
from mdp_assets.definitions import build_definitions
from mdp_assets.engines.cellprofiler.containers import EcsCellProfilerEngine


@dg.definitions
def defs() -> dg.Definitions:
    deployment = load_deployment()
    settings = deployment.config.engine.cellprofiler.containers.model_dump(exclude={"memory"})
    engine = EcsCellProfilerEngine(
        environment="/opt/mdp/.mdp/cellprofiler",
        cluster=dg.EnvVar("MDP_ECS_CLUSTER"),
        task_definition=dg.EnvVar("MDP_CELLPROFILER_TASK_DEFINITION"),
        region=dg.EnvVar("AWS_REGION"),
        **settings,
    )
    return build_definitions(deployment, cellprofiler=engine)
