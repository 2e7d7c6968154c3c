"""The Kubernetes/ECS fan-out of CellProfiler groups (engines/cellprofiler/containers.py), run for real with each
group's runner a local Pipes subprocess standing in for its pod or task (no cluster is reachable here): the real
CellProfiler 4.2.8.1 on CellProfiler's ExampleHuman images, one launch per group, a failed group launched again
alone, a finished group not launched again."""

import os
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from mdp_assets.engines.cellprofiler.containers import PerGroupCellProfilerEngine
from mdp_assets.engines.cellprofiler.outputs import read_csv_output
from mdp_assets_tests.conftest import REALDATA, good_and_bad_groups

ROOT = Path(__file__).resolve().parents[1]
ENVIRONMENT = ROOT / ".mdp" / "cellprofiler"
EXAMPLE = REALDATA / "cellprofiler-examplehuman" / "ExampleHuman"
PIPELINE = EXAMPLE / "ExampleHuman.cppipe"
IMAGES = sorted((EXAMPLE / "images").glob("*.tif"))
LAUNCHED: list[str] = []


class LocalProcessPerGroupEngine(PerGroupCellProfilerEngine):
    """The per-group fan-out with a local Pipes subprocess where Kubernetes starts a pod and ECS a task."""

    def launch_group(self, context, group: dict[str, Any], extras: dict[str, Any]) -> dg.PipesClientCompletedInvocation:
        LAUNCHED.append(group["id"])
        return dg.PipesSubprocessClient().run(command=self.command, context=context, extras=extras)


@pytest.mark.slow
def test_each_group_is_launched_alone_and_a_failed_one_again(tmp_path):
    if not (ENVIRONMENT / "bin" / "python").exists():
        if os.environ.get("CI"):
            pytest.fail(f"CI builds the CellProfiler environment; nothing at {ENVIRONMENT}")
        pytest.skip(f"CellProfiler environment not built (make cellprofiler); nothing at {ENVIRONMENT}")
    groups = good_and_bad_groups(IMAGES, tmp_path)
    engine = LocalProcessPerGroupEngine(environment=str(ENVIRONMENT), retries=1, max_parallel_groups=2)
    outcome = {}

    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(["AS_09125"]))
    def cellprofiler_step(context: dg.AssetExecutionContext, cellprofiler: LocalProcessPerGroupEngine):
        outcome["version"], outcome["results"] = cellprofiler.run_groups(context, PIPELINE, groups)
        return dg.MaterializeResult()

    LAUNCHED.clear()
    with dg.instance_for_test() as instance:
        assert dg.materialize([cellprofiler_step], resources={"cellprofiler": engine}, instance=instance,
                              partition_key="AS_09125").success
    results = {r.id: r for r in outcome["results"]}
    assert outcome["version"] == "4.2.8.1"
    assert [r.id for r in outcome["results"]] == ["good", "bad"]  # the groups' order, whatever finished first
    assert results["good"].ok and read_csv_output(tmp_path / "good").counts()["Nuclei"] == 289
    assert not results["bad"].ok and ("Traceback" in results["bad"].message or "not a tiff" in results["bad"].message)
    # One launch per group, then the failed group alone.
    assert sorted(LAUNCHED[:2]) == ["bad", "good"] and LAUNCHED[2:] == ["bad"]

    # A finished group is not launched again.
    LAUNCHED.clear()
    with dg.instance_for_test() as instance:
        assert dg.materialize([cellprofiler_step], resources={"cellprofiler": engine}, instance=instance,
                              partition_key="AS_09125").success
    assert {r.id: r.skipped for r in outcome["results"]} == {"good": True, "bad": False}
    assert LAUNCHED == ["bad", "bad"]
