"""A plate's CellProfiler groups fanned out one launch per group: each group of wells its own pod (Kubernetes) or
task (ECS), with its own Pipes session, its own log and its own retries, at most `max_parallel_groups` at once.

This is the Distributed-CellProfiler shape (one job per group of wells, each retried alone) on engines that
already schedule containers; mdp only launches and waits. What differs between engines is `launch_group` (how
one group's runner starts); the bookkeeping here is shared: groups finished earlier (their `_group_done.json`)
are not launched again, a group whose launch fails or whose runner reports failure is launched again alone, and
the results come back in the groups' order so the merge downstream equals the single-process run's.
"""

from __future__ import annotations

import math
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
from dagster_aws.pipes import PipesECSClient
from pydantic import Field

from mdp_assets.engines.cellprofiler.engine import CellProfilerEngine, GroupResult, run_each_group_alone
from mdp_assets.errors import MdpError

__all__ = ["EcsCellProfilerEngine", "KubernetesCellProfilerEngine", "PerGroupCellProfilerEngine", "group_labels"]

_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def group_labels(context: dg.AssetExecutionContext | dg.OpExecutionContext, group_id: str) -> dict[str, str]:
    """Labels a cluster's tools can select on: whose plate, which step, which group (63 characters at most,
    Kubernetes' limit for a label value)."""
    plate = context.partition_key if context.has_partition_key else "unpartitioned"

    def clean(value: str) -> str:
        return _LABEL_UNSAFE.sub("_", value).strip("_.-")[:63] or "none"

    return {"mdp/plate": clean(plate), "mdp/step": clean(context.op_def.name), "mdp/group": clean(group_id)}


class PerGroupCellProfilerEngine(CellProfilerEngine):
    """Base of the engines that launch each group of wells on its own (a pod, an ECS task). `workers` is how many
    groups a step splits into (`for_wells` sets it from `wells_per_group`); each launch runs one group."""

    wells_per_group: int = Field(4, ge=1, description="wells per group, so per pod or task")
    max_parallel_groups: int = Field(8, ge=1, description="groups of one step launched at once")
    retries: int = Field(2, ge=0, description="times a failed group is launched again, alone")
    cpus_per_group: int = Field(1, ge=1, description="CellProfiler processes inside one group's pod or task")

    def for_wells(self, wells: int) -> PerGroupCellProfilerEngine:
        return self.model_copy(update={"workers": max(1, math.ceil(wells / self.wells_per_group))})

    def launch_group(
        self, context: dg.AssetExecutionContext | dg.OpExecutionContext, group: dict[str, Any], extras: dict[str, Any]
    ) -> dg.PipesClientCompletedInvocation:
        """Start one group's runner and wait for it (a pod, an ECS task)."""
        raise NotImplementedError

    def run_groups(
        self, context: dg.AssetExecutionContext | dg.OpExecutionContext, pipeline: Path, groups: list[dict[str, Any]]
    ) -> tuple[str, list[GroupResult]]:
        if not pipeline.exists():
            raise MdpError("CellProfiler pipeline not found", path=pipeline)
        return run_each_group_alone(context, groups, self.retries, where="per-group launch",
                                    launch=lambda pending, attempt: self._launch_at_once(context, pipeline, groups, pending))

    def _launch_at_once(self, context, pipeline: Path, groups: list[dict[str, Any]],
                        pending: list[int]) -> tuple[dict[int, GroupResult], set[str]]:
        """The pending groups launched in parallel, at most `max_parallel_groups` at a time."""
        with ThreadPoolExecutor(max_workers=min(self.max_parallel_groups, len(pending))) as pool:
            launched = list(pool.map(lambda index: self._one_group(context, pipeline, groups[index]), pending))
        outcome = {index: result for index, (result, _) in zip(pending, launched)}
        return outcome, {version for _, version in launched if version}

    def _one_group(self, context, pipeline: Path, group: dict[str, Any]) -> tuple[GroupResult, str | None]:
        extras = {"pipeline": str(pipeline), "groups": [group], "workers": self.cpus_per_group,
                  "java_home": self._java_home()}
        try:
            invocation = self.launch_group(context, group, extras)
        except Exception as error:  # the pod or task failed to start or died: this group fails, the others go on
            context.log.error(f"group {group['id']}: its launch failed: {error}")
            return GroupResult(group["id"], False, None, f"the launch failed: {error}", False), None
        summary = next((m["summary"] for m in invocation.get_custom_messages()
                        if isinstance(m, dict) and "summary" in m), None)
        if summary is None:
            return GroupResult(group["id"], False, None, "the group's runner ended without a result", False), None
        (reported,) = summary["groups"]
        return GroupResult.from_runner(reported), summary["cellprofiler_version"]


class KubernetesCellProfilerEngine(PerGroupCellProfilerEngine):
    """Each group of wells as its own pod (dagster-k8s `PipesK8sClient`), from the mdp image, which holds the
    CellProfiler environment at `environment`. The pod mounts the claim that holds the data root at the same
    path the run worker uses, so the groups' file lists and output folders mean the same thing in both."""

    image: str = Field(description="the mdp image (deploy/Dockerfile), tag pinned")
    namespace: str = Field("default", description="where the CellProfiler pods run")
    data_volume_claim: str = Field(description="a ReadWriteMany PersistentVolumeClaim holding the data root")
    data_root: str = Field(description="where the run workers mount that claim (MDP_DATA_ROOT)")
    memory: str = Field("4Gi", description="memory request and limit of one group's pod")
    service_account: str | None = Field(None, description="the pods' service account (for S3 through IRSA)")

    def available(self) -> bool:
        return True  # the environment lives in the image, not on this machine

    def _java_home(self) -> str | None:
        return self.java_home  # the image sets JAVA_HOME

    def pod_spec(self) -> dict[str, Any]:
        resources = {"cpu": str(self.cpus_per_group), "memory": self.memory}
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

    def pod_meta(self, context: dg.AssetExecutionContext | dg.OpExecutionContext, group: dict[str, Any]) -> dict[str, Any]:
        return {"labels": group_labels(context, str(group["id"]))}

    def launch_group(
        self, context: dg.AssetExecutionContext | dg.OpExecutionContext, group: dict[str, Any], extras: dict[str, Any]
    ) -> dg.PipesClientCompletedInvocation:
        from dagster_k8s import PipesK8sClient  # an optional extra (pip install mdp[kubernetes])

        return PipesK8sClient().run(
            context=context, image=self.image, command=self.command, namespace=self.namespace,
            base_pod_meta=self.pod_meta(context, group), base_pod_spec=self.pod_spec(), extras=extras,
        )


class EcsCellProfilerEngine(PerGroupCellProfilerEngine):
    """Each group of wells as an ECS task (dagster-aws `PipesECSClient`), from a task definition running the mdp
    image with the data root on EFS at the same path as in the run workers. CellProfiler's log reaches the run
    through CloudWatch."""

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

    def run_task_params(self, context: dg.AssetExecutionContext | dg.OpExecutionContext | None = None,
                        group: dict[str, Any] | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {
            "cluster": self.cluster,
            "taskDefinition": self.task_definition,
            "launchType": self.launch_type,
            "count": 1,
            "overrides": {"containerOverrides": [{"name": self.container_name, "command": self.command}]},
        }
        if context is not None and group is not None:
            params["tags"] = [{"key": key, "value": value} for key, value in group_labels(context, str(group["id"])).items()]
        if self.subnets:
            params["networkConfiguration"] = {"awsvpcConfiguration": {
                "subnets": self.subnets, "securityGroups": self.security_groups, "assignPublicIp": "DISABLED"}}
        return params

    def launch_group(
        self, context: dg.AssetExecutionContext | dg.OpExecutionContext, group: dict[str, Any], extras: dict[str, Any]
    ) -> dg.PipesClientCompletedInvocation:
        client = PipesECSClient(client=boto3.client("ecs", region_name=self.region))
        return client.run(context=context, run_task_params=self.run_task_params(context, group), extras=extras,
                          pipes_container_name=self.container_name)
