"""The CellProfiler engine as a resource: where its environment is, how many processes, and running a
plate's groups through Dagster Pipes so CellProfiler's log and progress stream into the run."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from mdp_assets.config import CELLPROFILER_VERSION, CellProfilerSettings
from mdp_assets.engines.cellprofiler.runner import DONE
from mdp_assets.errors import MdpError

__all__ = ["CELLPROFILER_VERSION", "CellProfilerEngine", "GroupResult", "run_each_group_alone"]
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
    sites: int = 0  # image sets CellProfiler processed
    warnings: int = 0  # warning lines in its output (all of it is in the step's compute log)
    warning_kinds: tuple[tuple[str, int], ...] = ()  # the most frequent, with their counts

    @classmethod
    def from_runner(cls, group: dict[str, Any]) -> GroupResult:
        """A group as runner.py reports it."""
        return cls(group["id"], group["ok"], group.get("output_dir"), group.get("message"), bool(group.get("skipped")),
                   int(group.get("images") or 0), int(group.get("warnings") or 0),
                   tuple((str(k), int(v)) for k, v in (group.get("warning_kinds") or {}).items()))

    @classmethod
    def done_earlier(cls, group: dict[str, Any], marker: Path) -> GroupResult:
        """A group a previous attempt finished, as its `_group_done.json` recorded it."""
        try:
            recorded = json.loads(marker.read_text())
        except (OSError, ValueError):
            recorded = {}
        return cls.from_runner({**recorded, "id": group["id"], "ok": True, "output_dir": group["output_dir"],
                                "message": None, "skipped": True})

    def summary(self, objects: dict[str, int] | None = None) -> str:
        """One line for the event log: sites done, objects found per object, warnings counted."""
        text = f"CellProfiler group {self.id}: {'done' if self.ok else 'FAILED'}" + (" (done earlier)" if self.skipped else "")
        text += f", {self.sites} site(s)"
        if objects is not None:
            text += "; objects: " + (", ".join(f"{name} {count}" for name, count in objects.items()) or "none")
        text += f"; {self.warnings} warning line(s)"
        if self.warning_kinds:
            text += " (" + "; ".join(f"{count}x {kind}" for kind, count in self.warning_kinds) + ")"
        return text + ("; full output in the step's compute log (stderr)" if self.warnings else "")


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
        results = [GroupResult.from_runner(g) for g in summary["groups"]]
        return summary["cellprofiler_version"], results

    @property
    def command(self) -> list[str]:
        return [str(self.python), str(RUNNER)]

    def launch(
        self, context: dg.AssetExecutionContext | dg.OpExecutionContext, extras: dict[str, Any]
    ) -> dg.PipesClientCompletedInvocation:
        """Start the runner and wait for it; here a local process, in the subclasses a pod or an ECS task."""
        return dg.PipesSubprocessClient().run(command=self.command, context=context, extras=extras)


# Launches the groups at these indices (attempt 0, 1, ...); returns their results and the CellProfiler versions seen.
LaunchGroups = Callable[[list[int], int], tuple[dict[int, GroupResult], set[str]]]


def run_each_group_alone(
    context: dg.AssetExecutionContext | dg.OpExecutionContext, groups: list[dict[str, Any]], retries: int,
    launch: LaunchGroups, where: str,
) -> tuple[str, list[GroupResult]]:
    """The Distributed-CellProfiler bookkeeping the per-group engines (SLURM tasks, pods, ECS tasks) share: groups
    finished earlier (their `_group_done.json`) are not launched, a failed group is launched again alone up to
    `retries` times, and the results come back in the groups' order, so the merge equals the single-process run's."""
    results: dict[int, GroupResult] = {}
    for index, group in enumerate(groups):
        if (Path(group["output_dir"]) / DONE).exists():
            results[index] = GroupResult.done_earlier(group, Path(group["output_dir"]) / DONE)
    versions: set[str] = set()
    pending = [i for i in range(len(groups)) if i not in results]
    for attempt in range(retries + 1):
        if not pending:
            break
        if attempt:
            context.log.warning(f"{where}: launching {len(pending)} failed group(s) again, alone (attempt "
                                f"{attempt + 1} of {retries + 1}): " + ", ".join(groups[i]["id"] for i in pending))
        outcome, found = launch(pending, attempt)
        results.update(outcome)
        versions |= found
        pending = [i for i in pending if not results[i].ok]
    return (sorted(versions)[0] if versions else CELLPROFILER_VERSION), [results[i] for i in range(len(groups))]


def summarize_failures(results: list[GroupResult]) -> str:
    return "\n\n".join(f"group {r.id} failed; CellProfiler said:\n{r.message}" for r in results if not r.ok)

