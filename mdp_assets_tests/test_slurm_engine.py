"""CellProfiler groups as SLURM jobs, on a real one-node SLURM cluster (deploy/slurm/cluster.sh) with the real
CellProfiler 4.2.8.1, on CellProfiler's ExampleHuman images: each group a task of a job array named after the
plate (read back from the cluster's job-completion log), a failed group submitted again alone, and the
plate's outputs equal to the local engine's."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

from mdp_assets.definitions import build_definitions
from mdp_assets.engines.cellprofiler.executor import cellprofiler_engine
from mdp_assets.engines.cellprofiler.outputs import read_csv_output
from mdp_assets.engines.cellprofiler.slurm import SlurmCellProfilerEngine, _array_spec
from mdp_assets.storage.resource import MdpStorage
from mdp_assets_tests.conftest import REALDATA, good_and_bad_groups, make_deployment, stored

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "deploy" / "slurm" / "cluster.sh"
ENVIRONMENT = ROOT / ".mdp" / "cellprofiler"
EXAMPLE = REALDATA / "cellprofiler-examplehuman" / "ExampleHuman"
PIPELINE = EXAMPLE / "ExampleHuman.cppipe"
IMAGES = sorted((EXAMPLE / "images").glob("*.tif"))
PLATE = "AS_09125"
WELLS = ["D03", "D04", "D05", "D06"]
SEGMENTATION_STEPS = ["raw_images", "image_qc", "illumination_functions", "corrected_images", "segmentation_masks",
                      "single_cell_features"]


def _missing(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"CI must be able to run the SLURM test: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node cluster for this module's tests; its slurm.conf and job-completion log."""
    missing = [tool for tool in ("slurmctld", "slurmd", "sbatch", "munged") if shutil.which(tool) is None]
    if missing:
        _missing(f"SLURM is not installed ({', '.join(missing)}; deploy/system-packages.sh installs it)")
    if os.geteuid() != 0:
        _missing("the test cluster runs as root (SlurmUser=root)")
    if not (ENVIRONMENT / "bin" / "python").exists():
        _missing(f"CellProfiler environment not built (make cellprofiler); nothing at {ENVIRONMENT}")
    folder = tmp_path_factory.mktemp("slurm")
    subprocess.run([str(CLUSTER), "start", str(folder)], check=True, timeout=120)
    try:
        yield {"conf": folder / "slurm.conf", "jobcomp": folder / "jobcomp.log"}
    finally:
        subprocess.run([str(CLUSTER), "stop", str(folder)], check=True, timeout=120)


def completed_jobs(jobcomp: Path) -> list[dict[str, str]]:
    """The cluster's job-completion log (jobcomp/filetxt): one record per finished job or array task."""
    if not jobcomp.exists():
        return []
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in jobcomp.read_text().splitlines() if line.strip()]


def _slurm_section(slurm, **more):
    return {"slurm_conf": str(slurm["conf"]), "memory": "1G", "time_limit": "00:20:00", "poll_seconds": 1, **more}


def _plate_folder(landing: Path) -> None:
    """ExampleHuman's one real site, imaged as four wells (the same pixels under four well names)."""
    folder = landing / PLATE
    folder.mkdir(parents=True)
    for well in WELLS:
        for image in IMAGES:
            shutil.copy(image, folder / image.name.replace("D03", well))
    (folder / "platemap.csv").write_text("well_position,treatment\n" + "".join(f"{w},untreated\n" for w in WELLS))
    (folder / "plate.yaml").write_text(yaml.safe_dump({
        "barcode": PLATE, "origin": "public", "platemap": "platemap.csv", "naming_scheme": "regex",
        "naming_pattern": rf"^{PLATE}_050116030001_(?P<well>[A-P]\d{{2}})f(?P<site>\d{{2}})d(?P<channel>\d)\.tif$",
        "channels": {"0": "DNA", "1": "PH3", "2": "cellbody"}, "expected_image_count": 3 * len(WELLS),
        "treatment_column": "treatment",
    }))


def _run_plate(deployment):
    defs = build_definitions(deployment)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("plates", [PLATE])
        result = defs.resolve_job_def("plate_job").execute_in_process(
            instance=instance, partition_key=PLATE, op_selection=SEGMENTATION_STEPS)
        assert result.success
        return {e.materialization.asset_key.to_user_string(): e.materialization.metadata
                for e in result.get_asset_materialization_events()}


def _tables(storage: MdpStorage) -> dict[str, pd.DataFrame]:
    """The partition's CellProfiler tables and single cells, but CellProfiler's timings, with the deployment's
    own data root (in the paths of the images and the groups' output folders) written as <data_root>."""
    folder = stored(storage, "segmentation_masks", PLATE) / "cellprofiler"
    tables = {p.stem: pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))}
    # ImageSet_ImageSet is CellProfiler's compressed serialization of each image set, the images' locations
    # inside it: each deployment's copies of the images are under its own data root. The locations themselves
    # are compared below, in the PathName_/URL_ columns.
    image = tables["Image"].drop(columns=[c for c in tables["Image"].columns
                                          if "ExecutionTime" in c or c == "Image_ImageSet_ImageSet"])
    text = [c for c in image.columns if image[c].dtype == object]
    image[text] = image[text].apply(lambda column: column.str.replace(str(storage.data_root), "<data_root>"))
    # A group's work folder is named by its pipeline and its images' locations, which are the deployment's own.
    image[text] = image[text].apply(lambda column: column.str.replace(r"/[0-9a-f]{20}/", "/<group>/", regex=True))
    tables["Image"] = image
    tables["single_cell_features"] = pd.read_parquet(stored(storage, "single_cell_features", PLATE) / "table.parquet")
    return tables


@pytest.mark.slow
def test_a_plates_cellprofiler_groups_run_as_slurm_jobs_named_after_it_and_equal_the_local_run(slurm, tmp_path):
    landing = tmp_path / "landing"
    _plate_folder(landing)
    # The same groups both ways (one well each): locally four processes, on SLURM four array tasks.
    engine = {"kind": "cellprofiler", "cellprofiler": {"environment": str(ENVIRONMENT), "workers": 4,
                                                       "analysis_pipeline": str(PIPELINE)}}
    local = make_deployment(tmp_path / "local", engine=engine, storage={"landing": {"folder": str(landing)}})
    on_slurm = make_deployment(tmp_path / "slurm", storage={"landing": {"folder": str(landing)}}, engine={
        **engine, "cellprofiler": {**engine["cellprofiler"], "executor": "slurm",
                                   "slurm": _slurm_section(slurm, wells_per_group=1)}})
    assert isinstance(cellprofiler_engine(on_slurm), SlurmCellProfilerEngine)

    before = len(completed_jobs(slurm["jobcomp"]))
    slurm_events = _run_plate(on_slurm)
    jobs = completed_jobs(slurm["jobcomp"])[before:]
    local_events = _run_plate(local)

    # Every group of wells was a task of one job array named after the plate and the step, and completed.
    segmentation = [j for j in jobs if j["Name"] == f"mdp-{PLATE}-segmentation_masks"]
    assert sorted(int(j["ArrayTaskId"]) for j in segmentation) == [0, 1, 2, 3], jobs
    assert len({j["ArrayJobId"] for j in segmentation}) == 1 and {j["JobState"] for j in segmentation} == {"COMPLETED"}
    illumination = [j for j in jobs if j["Name"] == f"mdp-{PLATE}-illumination_functions"]
    assert [j["JobState"] for j in illumination] == ["COMPLETED"], "the illumination pipeline is one job over the plate"
    assert len(jobs) == 5, "no other job ran"
    assert slurm_events["segmentation_masks"]["groups"].value == local_events["segmentation_masks"]["groups"].value == 4
    starts = sorted(j["StartTime"] for j in segmentation)
    assert starts[0] == starts[1] < starts[2], "two tasks at once on the cluster's two CPUs"
    # Each task's log is kept: where and when it ran, and the group's result.
    logs = sorted((on_slurm.data_root / "slurm" / PLATE / "logs").glob(f"mdp-{PLATE}-segmentation_masks_*.log"))
    assert len(logs) == 4
    for log, well in zip(logs, WELLS):
        text = log.read_text()
        assert f"mdp: group {well}-{well}, SLURM task" in text and '"ok": true' in text and "runner exited 0" in text

    # The same object tables, image table (but CellProfiler's timings) and single cells as the local engine's.
    ours, reference = _tables(MdpStorage.from_deployment(on_slurm)), _tables(MdpStorage.from_deployment(local))
    assert set(ours) == set(reference) and len(ours["Nuclei"]) == 4 * 289
    for name, table in reference.items():
        pd.testing.assert_frame_equal(ours[name], table, obj=name)
    assert set(ours["single_cell_features"]["Metadata_Well"]) == set(WELLS)


@pytest.mark.slow
def test_a_failed_group_is_submitted_again_alone_and_its_log_kept(slurm, tmp_path):
    groups = good_and_bad_groups(IMAGES, tmp_path)
    engine = SlurmCellProfilerEngine(environment=str(ENVIRONMENT), work_dir=str(tmp_path / "work"), retries=1,
                                     **_slurm_section(slurm))
    outcome = {}

    @dg.asset(partitions_def=dg.StaticPartitionsDefinition([PLATE]))
    def cellprofiler_step(context: dg.AssetExecutionContext, cellprofiler: SlurmCellProfilerEngine):
        outcome["version"], outcome["results"] = cellprofiler.run_groups(context, PIPELINE, groups)
        return dg.MaterializeResult()

    before = len(completed_jobs(slurm["jobcomp"]))
    with dg.instance_for_test() as instance:
        assert dg.materialize([cellprofiler_step], resources={"cellprofiler": engine}, instance=instance,
                              partition_key=PLATE).success
    jobs = completed_jobs(slurm["jobcomp"])[before:]
    results = {r.id: r for r in outcome["results"]}
    assert outcome["version"] == "4.2.8.1"
    assert results["good"].ok and read_csv_output(tmp_path / "good").counts()["Nuclei"] == 289
    assert not results["bad"].ok and "SLURM log" in results["bad"].message

    # The first array ran both groups; the retry was a job of its own running the failed group alone.
    by_job: dict[str, list[int]] = {}
    for job in jobs:
        assert job["Name"] == f"mdp-{PLATE}-cellprofiler_step"
        by_job.setdefault(job["ArrayJobId"], []).append(int(job["ArrayTaskId"]))
    assert sorted(sorted(tasks) for tasks in by_job.values()) == [[0, 1], [1]], jobs
    logs = sorted((tmp_path / "work" / PLATE / "logs").glob("*.log"))
    assert len(logs) == 3 and sum("not a tiff" in log.read_text() or "Traceback" in log.read_text() for log in logs) >= 2

    # A finished group is not submitted again.
    before = len(completed_jobs(slurm["jobcomp"]))
    with dg.instance_for_test() as instance:
        assert dg.materialize([cellprofiler_step], resources={"cellprofiler": engine}, instance=instance,
                              partition_key=PLATE).success
    assert {r.id: r.skipped for r in outcome["results"]} == {"good": True, "bad": False}
    assert [int(j["ArrayTaskId"]) for j in completed_jobs(slurm["jobcomp"])[before:]] == [1, 1]


def test_the_deployments_slurm_settings_become_the_sbatch_call(tmp_path):
    deployment = make_deployment(tmp_path, engine={"kind": "cellprofiler", "cellprofiler": {
        "executor": "slurm", "slurm": {"partition": "cpu", "account": "lab", "time_limit": "01:30:00",
                                       "cpus_per_group": 2, "memory": "6G", "wells_per_group": 4, "max_running": 10,
                                       "sbatch_args": ["--qos=long"]}}})
    engine = cellprofiler_engine(deployment)
    assert isinstance(engine, SlurmCellProfilerEngine) and engine.work_dir == str(deployment.data_root / "slurm")
    assert engine.for_wells(384).workers == 96 and engine.for_wells(10).workers == 3 and engine.for_wells(1).workers == 1
    command = engine.sbatch_command("mdp-P1-segmentation_masks", [0, 1, 2, 3, 7], tmp_path, tmp_path / "logs",
                                    tmp_path / "group.sh")
    assert command == ["sbatch", "--parsable", "--job-name=mdp-P1-segmentation_masks", "--array=0-3,7%10",
                       "--cpus-per-task=2", "--time=01:30:00", f"--output={tmp_path}/logs/%x_%A_%a.log",
                       f"--chdir={tmp_path}", "--partition=cpu", "--account=lab", "--mem=6G", "--qos=long",
                       str(tmp_path / "group.sh")]
    assert _array_spec([0, 2, 3, 5, 7, 8]) == "0,2-3,5,7-8" and _array_spec([5]) == "5"
    local = cellprofiler_engine(make_deployment(tmp_path / "local", engine={"kind": "cellprofiler"}))
    assert not isinstance(local, SlurmCellProfilerEngine) and local.for_wells(384) is local
