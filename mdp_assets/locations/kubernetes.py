"""The Kubernetes code location: each step in its own pod (dagster-k8s `k8s_job_executor`), each CellProfiler
group of wells as a pod of its own through `PipesK8sClient`, all mounting the data-root claim (deploy/helm/values.yaml)."""

import dagster as dg
from dagster_k8s import k8s_job_executor

from mdp_assets.config import load_deployment
from mdp_assets.definitions import build_definitions
from mdp_assets.engines.cellprofiler.containers import KubernetesCellProfilerEngine


@dg.definitions
def defs() -> dg.Definitions:
    deployment = load_deployment()
    engine = KubernetesCellProfilerEngine(
        environment="/opt/mdp/.mdp/cellprofiler",
        image=dg.EnvVar("MDP_IMAGE"),
        namespace=dg.EnvVar("MDP_K8S_NAMESPACE"),
        data_volume_claim=dg.EnvVar("MDP_DATA_VOLUME_CLAIM"),
        data_root=str(deployment.data_root),
        **deployment.config.engine.cellprofiler.containers.model_dump(),
    )
    return build_definitions(deployment, cellprofiler=engine, executor=k8s_job_executor)
