"""The CellProfiler engine as a resource: where its environment is, how many processes, and running a
plate's groups through Dagster Pipes so CellProfiler's log and progress stream into the run."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
from dagster_aws.pipes import PipesECSClient
from pydantic import Field

from mdp_assets.config import CELLPROFILER_VERSION, CellProfilerSettings
from mdp_assets.errors import MdpError

__all__ = ["CELLPROFILER_VERSION", "CellProfilerEngine", "KubernetesCellProfilerEngine", "EcsCellProfilerEngine"]
# The concurrency pool of the steps that run CellProfiler (or the built-in engine in its place): a service
# caps them across all runs with `concurrency: pools:` in its dagster.yaml (deploy/dagster.yaml).
CELLPROFILER_POOL = "cellprofiler"
RUNNER = Path(__file__).resolve().parent / "runner.py"


@dataclass(frozen=True)
class GroupResult:
    id: str
    ok: bool
    output_dir: str | None
    message: str | None
    skipped: bool


class CellProfilerEngine(dg.ConfigurableResource):
    """CellProfiler 4.2.8.1 in its own Python 3.9 environment (built by `make cellprofiler`)."""

    environment: str = Field(".mdp/cellprofiler", description="the virtual environment `make cellprofiler` builds")
    workers: int = Field(0, ge=0, description="CellProfiler processes at once; 0: one per core")
    java_home: str | None = Field(None, description="JAVA_HOME; default: found from javac")

    @classmethod
    def from_settings(cls, settings: CellProfilerSettings) -> CellProfilerEngine:
        return cls(environment=settings.environment, workers=settings.workers, java_home=settings.java_home)

    @property
    def python(self) -> Path:
        return Path(self.environment).expanduser().resolve() / "bin" / "python"

    def available(self) -> bool:
        return self.python.exists()

    def for_wells(self, wells: int) -> CellProfilerEngine:
        """The engine for a step over `wells` wells; the SLURM engine sets its number of groups from it."""
        return self

    def _java_home(self) -> str | None:
        if self.java_home:
            return self.java_home
        javac = shutil.which("javac")
        return str(Path(os.path.realpath(javac)).parent.parent) if javac else None

    def run_groups(
        self, context: dg.AssetExecutionContext | dg.OpExecutionContext, pipeline: Path, groups: list[dict[str, Any]]
    ) -> tuple[str, list[GroupResult]]:
        """Run every group (id, output_dir, data_file or file_list) through the Pipes runner; returns
        CellProfiler's version and one result per group. Groups finished earlier are skipped."""
        if not self.available():
            raise MdpError(f"no CellProfiler environment at {self.python.parent.parent}; run `make cellprofiler`")
        if not pipeline.exists():
            raise MdpError("CellProfiler pipeline not found", path=pipeline)
        extras = {"pipeline": str(pipeline), "groups": groups, "workers": self.workers or os.cpu_count() or 1,
                  "java_home": self._java_home()}
        messages = self.launch(context, extras).get_custom_messages()
        summary = next((m["summary"] for m in messages if isinstance(m, dict) and "summary" in m), None)
        if summary is None:
            raise MdpError("the CellProfiler runner ended without a summary; see the run's log")
        results = [GroupResult(g["id"], g["ok"], g.get("output_dir"), g.get("message"), bool(g.get("skipped")))
                   for g in summary["groups"]]
        return summary["cellprofiler_version"], results

    @property
    def command(self) -> list[str]:
        return [str(self.python), str(RUNNER)]

    def launch(
        self, context: dg.AssetExecutionContext | dg.OpExecutionContext, extras: dict[str, Any]
    ) -> dg.PipesClientCompletedInvocation:
        """Start the runner and wait for it; here a local process, in the subclasses a pod or an ECS task."""
        return dg.PipesSubprocessClient().run(command=self.command, context=context, extras=extras)


class KubernetesCellProfilerEngine(CellProfilerEngine):
    """Each CellProfiler step as its own pod (dagster-k8s `PipesK8sClient`), from the mdp image, which holds the
    CellProfiler environment at `environment`. The pod mounts the claim that holds the data root at the same
    path the run worker uses, so the groups' file lists and output folders mean the same thing in both."""

    image: str = Field(description="the mdp image (deploy/Dockerfile), tag pinned")
    namespace: str = Field("default", description="where the CellProfiler pods run")
    data_volume_claim: str = Field(description="a ReadWriteMany PersistentVolumeClaim holding the data root")
    data_root: str = Field(description="where the run workers mount that claim (MDP_DATA_ROOT)")
    cpus: int = Field(2, ge=1, description="CPU request and limit of a CellProfiler pod, and its CellProfiler processes")
    memory: str = Field("8Gi", description="memory request and limit of a CellProfiler pod")
    service_account: str | None = Field(None, description="the pods' service account (for S3 through IRSA)")

    def available(self) -> bool:
        return True  # the environment lives in the image, not on this machine

    def _java_home(self) -> str | None:
        return self.java_home  # the image sets JAVA_HOME

    def pod_spec(self) -> dict[str, Any]:
        resources = {"cpu": str(self.cpus), "memory": self.memory}
        spec: dict[str, Any] = {
            "containers": [{
                "volumeMounts": [{"name": "mdp-data", "mountPath": self.data_root}],
                "resources": {"requests": resources, "limits": resources},
            }],
            "volumes": [{"name": "mdp-data", "persistentVolumeClaim": {"claimName": self.data_volume_claim}}],
        }
        if self.service_account:
            spec["serviceAccountName"] = self.service_account
        return spec

    def launch(
        self, context: dg.AssetExecutionContext | dg.OpExecutionContext, extras: dict[str, Any]
    ) -> dg.PipesClientCompletedInvocation:
        from dagster_k8s import PipesK8sClient  # an optional extra (pip install mdp[kubernetes])

        return PipesK8sClient().run(
            context=context, image=self.image, command=self.command, namespace=self.namespace,
            base_pod_spec=self.pod_spec(), extras={**extras, "workers": self.workers or self.cpus},
        )


class EcsCellProfilerEngine(CellProfilerEngine):
    """Each CellProfiler step as an ECS task (dagster-aws `PipesECSClient`), from a task definition running the
    mdp image with the data root on EFS at the same path as in the run workers. CellProfiler's log reaches
    the run through CloudWatch."""

    cluster: str = Field(description="the ECS cluster")
    task_definition: str = Field(description="family[:revision] of the CellProfiler task definition")
    container_name: str = Field("cellprofiler", description="the container in that task definition")
    subnets: list[str] = Field(default_factory=list, description="awsvpc subnets (Fargate)")
    security_groups: list[str] = Field(default_factory=list)
    launch_type: str = Field("FARGATE", description="FARGATE or EC2")
    region: str | None = None

    def available(self) -> bool:
        return True

    def _java_home(self) -> str | None:
        return self.java_home

    def run_task_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "cluster": self.cluster,
            "taskDefinition": self.task_definition,
            "launchType": self.launch_type,
            "count": 1,
            "overrides": {"containerOverrides": [{"name": self.container_name, "command": self.command}]},
        }
        if self.subnets:
            params["networkConfiguration"] = {"awsvpcConfiguration": {
                "subnets": self.subnets, "securityGroups": self.security_groups, "assignPublicIp": "DISABLED"}}
        return params

    def launch(
        self, context: dg.AssetExecutionContext | dg.OpExecutionContext, extras: dict[str, Any]
    ) -> dg.PipesClientCompletedInvocation:
        # os.cpu_count() here is the run worker's; the task's processes are set by `workers` (default 2).
        client = PipesECSClient(client=boto3.client("ecs", region_name=self.region))
        return client.run(context=context, run_task_params=self.run_task_params(),
                          extras={**extras, "workers": self.workers or 2}, pipes_container_name=self.container_name)


def summarize_failures(results: list[GroupResult]) -> str:
    return "\n\n".join(f"group {r.id} failed; CellProfiler said:\n{r.message}" for r in results if not r.ok)

