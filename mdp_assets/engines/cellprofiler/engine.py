"""The CellProfiler engine as a resource: where its environment is, how many processes, and running a
plate's groups through Dagster Pipes so CellProfiler's log and progress stream into the run."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from mdp_assets.config import CELLPROFILER_VERSION, CellProfilerSettings
from mdp_assets.errors import MdpError

__all__ = ["CELLPROFILER_VERSION", "CellProfilerEngine", "GroupResult"]
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


def summarize_failures(results: list[GroupResult]) -> str:
    return "\n\n".join(f"group {r.id} failed; CellProfiler said:\n{r.message}" for r in results if not r.ok)

