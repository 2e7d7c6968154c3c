"""The real CellProfiler 4.2.8.1, run headless through Dagster Pipes, on CellProfiler's ExampleHuman data."""

import os
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

import yaml

from mdp_assets.config import SHIPPED_PIPELINES
from mdp_assets.definitions import build_definitions
from mdp_assets.engines.cellprofiler.engine import CellProfilerEngine, summarize_failures
from mdp_assets.engines.cellprofiler.outputs import (
    CellProfilerOutput,
    file_list,
    read_csv_output,
    read_sqlite_output,
    single_cells,
)
from mdp_assets.engines.cellprofiler.pipelines import CELL_PAINTING_CHANNELS, illumination_pipeline
from mdp_assets.storage.resource import MdpStorage
from mdp_assets_tests.conftest import REALDATA, good_and_bad_groups, make_deployment, stored

EXAMPLE = REALDATA / "cellprofiler-examplehuman"
PIPELINE = EXAMPLE / "ExampleHuman" / "ExampleHuman.cppipe"
IMAGES = sorted((EXAMPLE / "ExampleHuman" / "images").glob("*.tif"))
ENVIRONMENT = Path(__file__).resolve().parents[1] / ".mdp" / "cellprofiler"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine():
    engine = CellProfilerEngine(environment=str(ENVIRONMENT), workers=2)
    if not engine.available():
        if os.environ.get("CI"):
            pytest.fail(f"CI must build CellProfiler first (make cellprofiler); nothing at {ENVIRONMENT}")
        pytest.skip("CellProfiler environment not built (make cellprofiler)")
    return engine


def _run(engine, pipeline, groups):
    """Run groups through a real Dagster asset (so through PipesSubprocessClient)."""
    outcome = {}

    @dg.asset
    def cellprofiler_step(context: dg.AssetExecutionContext, cellprofiler: CellProfilerEngine) -> dg.MaterializeResult:
        outcome["version"], outcome["results"] = cellprofiler.run_groups(context, pipeline, groups)
        return dg.MaterializeResult(metadata={"groups": len(groups)})

    with dg.instance_for_test() as instance:
        result = dg.materialize([cellprofiler_step], resources={"cellprofiler": engine}, instance=instance)
        outcome["logs"] = [e.message for e in result.all_events if e.event_type_value == "ENGINE_EVENT" or e.message]
    assert result.success
    return outcome


# CellProfiler's Zernike features are taken about each object's minimum enclosing circle; on a different CPU
# (SIMD paths of numpy's reductions) a near-tie in that circle can go the other way for an object, moving its
# centre and every one of its Zernike moments (seen here: 1 of 289 cells, up to 3e-3 absolute, on AMD EPYC
# against the reference's machine). Those columns may differ for at most this share of the objects.
ZERNIKE_OBJECTS_ALLOWED_TO_DIFFER = 0.01


def _assert_same_objects(ours, reference, rtol=1e-6):
    assert ours.counts() == reference.counts()
    for name, expected in reference.objects.items():
        table = ours.objects[name].set_index(["ImageNumber", "ObjectNumber"]).sort_index()
        expected = expected.set_index(["ImageNumber", "ObjectNumber"]).sort_index()
        assert set(table.columns) == set(expected.columns), name
        numeric = [c for c in expected.columns if pd.api.types.is_numeric_dtype(expected[c])]
        zernike = [c for c in numeric if "_Zernike_" in c]
        exact = [c for c in numeric if c not in zernike]
        np.testing.assert_allclose(table[exact].to_numpy(float), expected[exact].to_numpy(float),
                                   rtol=rtol, atol=1e-12, equal_nan=True, err_msg=name)
        if zernike:
            same = np.isclose(table[zernike].to_numpy(float), expected[zernike].to_numpy(float),
                              rtol=rtol, atol=1e-12, equal_nan=True).all(axis=1)
            assert (~same).mean() <= ZERNIKE_OBJECTS_ALLOWED_TO_DIFFER, (
                f"{name}: Zernike features differ for {(~same).sum()} of {len(same)} objects")


def test_examplehuman_counts_and_features_equal_cellprofilers_reference(engine, tmp_path):
    out = tmp_path / "group-1"
    outcome = _run(engine, PIPELINE, [{"id": "1", "output_dir": str(out), "file_list": str(file_list(IMAGES, tmp_path / "files.txt"))}])
    assert outcome["version"] == "4.2.8.1"
    assert [r.ok for r in outcome["results"]] == [True]
    ours = read_csv_output(out)
    assert ours.counts() == {"Cells": 289, "Cytoplasm": 289, "Nuclei": 289, "PH3": 22}
    _assert_same_objects(ours, read_csv_output(EXAMPLE / "outputs" / "csv"))
    cells = single_cells(ours)
    assert len(cells) == 289 and cells["Nuclei_AreaShape_Area"].notna().all()
    assert {"Metadata_ImageNumber", "Metadata_ObjectNumber", "Cells_AreaShape_Area", "Cytoplasm_AreaShape_Area"} <= set(cells.columns)


def test_sqlite_and_csv_outputs_convert_to_the_same_tables():
    from_csv = read_csv_output(EXAMPLE / "outputs" / "csv")
    from_sqlite = read_sqlite_output(EXAMPLE / "outputs" / "sqlite" / "ExampleHuman.db")
    _assert_same_objects(from_sqlite, from_csv)
    via_sqlite, via_csv = single_cells(from_sqlite), single_cells(from_csv)
    # ExportToDatabase did not write the image's Metadata_Frame / Metadata_Series; every other column is shared.
    assert set(via_csv.columns) - set(via_sqlite.columns) == {"Metadata_Frame", "Metadata_Series"}
    assert set(via_sqlite.columns) <= set(via_csv.columns)
    pd.testing.assert_frame_equal(via_sqlite.sort_index(axis=1), via_csv[via_sqlite.columns].sort_index(axis=1),
                                  check_dtype=False, rtol=1e-6)


def test_a_broken_pipeline_fails_with_cellprofilers_own_message(engine, tmp_path):
    broken = tmp_path / "broken.cppipe"
    text = PIPELINE.read_text().replace("IdentifyPrimaryObjects:[module_num:5", "IdentifyPrimaryObjectz:[module_num:5")
    broken.write_text(text)
    out = tmp_path / "group-1"
    outcome = _run(engine, broken, [{"id": "1", "output_dir": str(out), "file_list": str(file_list(IMAGES, tmp_path / "f.txt"))}])
    (result,) = outcome["results"]
    assert not result.ok and "IdentifyPrimaryObjectz" in result.message
    assert not (out / "_group_done.json").exists() and not list(out.glob("*.csv")), "nothing half-written is kept"
    assert "IdentifyPrimaryObjectz" in summarize_failures(outcome["results"])


def test_one_failing_group_leaves_the_others_intact_and_a_rerun_does_only_what_failed(engine, tmp_path):
    groups = good_and_bad_groups(IMAGES, tmp_path)
    first = {r.id: r for r in _run(engine, PIPELINE, groups)["results"]}
    assert first["good"].ok and not first["bad"].ok and first["bad"].message
    assert read_csv_output(tmp_path / "good").counts()["Nuclei"] == 289
    second = {r.id: r for r in _run(engine, PIPELINE, groups)["results"]}
    assert second["good"].skipped and second["good"].ok, "a finished group is not run again"
    assert not second["bad"].skipped and not second["bad"].ok


def test_examplehuman_through_the_assets_with_the_labs_own_pipeline(engine, tmp_path):
    """ExampleHuman as a plate: the lab's pipeline (input modules, no LoadData) run by segmentation_masks;
    the object tables in the partition equal CellProfiler's reference, and single_cell_features has 289 cells."""
    deployment = make_deployment(tmp_path, engine={"kind": "cellprofiler", "cellprofiler": {
        "environment": str(ENVIRONMENT), "workers": 2, "analysis_pipeline": str(PIPELINE)}})
    storage = MdpStorage.from_deployment(deployment)
    plate = storage.landing_path / "AS_09125"
    plate.mkdir(parents=True)
    for image in IMAGES:
        shutil.copy(image, plate / image.name)
    (plate / "platemap.csv").write_text("well_position,treatment\nD03,untreated\n")
    (plate / "plate.yaml").write_text(yaml.safe_dump({
        "barcode": "AS_09125", "origin": "public", "platemap": "platemap.csv", "naming_scheme": "regex",
        "naming_pattern": r"^AS_09125_050116030001_(?P<well>[A-P]\d{2})f(?P<site>\d{2})d(?P<channel>\d)\.tif$",
        "channels": {"0": "DNA", "1": "PH3", "2": "cellbody"}, "expected_image_count": 3, "treatment_column": "treatment",
    }))
    defs = build_definitions(deployment)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("plates", ["AS_09125"])
        result = defs.resolve_job_def("plate_job").execute_in_process(
            instance=instance, partition_key="AS_09125",
            op_selection=["raw_images", "image_qc", "illumination_functions", "corrected_images", "segmentation_masks",
                          "single_cell_features"])
        assert result.success
        events = {e.materialization.asset_key.to_user_string(): e.materialization for e in result.get_asset_materialization_events()}
    illumination = events["illumination_functions"].metadata
    assert illumination["engine"].value == "cellprofiler 4.2.8.1"  # the default pipeline, for this plate's channels
    assert illumination["images_per_channel"].value == {"DNA": 1, "PH3": 1, "cellbody": 1}
    functions = stored(storage, "illumination_functions", "AS_09125")
    assert all(np.load(functions / f"{c}.npy").min() >= 1.0 for c in ("DNA", "PH3", "cellbody"))
    masks = events["segmentation_masks"].metadata
    assert masks["engine"].value == "cellprofiler 4.2.8.1"
    provenance = masks["provenance"].value
    assert provenance["software"]["cellprofiler"] == "4.2.8.1"
    assert provenance["parameters"]["pipeline_sha256"] == __import__("hashlib").sha256(PIPELINE.read_bytes()).hexdigest()

    tables = stored(storage, "segmentation_masks", "AS_09125") / "cellprofiler"
    ours = CellProfilerOutput(pd.read_parquet(tables / "Image.parquet"),
                              {p.stem: pd.read_parquet(p) for p in tables.glob("*.parquet") if p.stem != "Image"})
    assert ours.counts() == {"Cells": 289, "Cytoplasm": 289, "Nuclei": 289, "PH3": 22}
    _assert_same_objects(ours, read_csv_output(EXAMPLE / "outputs" / "csv"))

    cells = pd.read_parquet(stored(storage, "single_cell_features", "AS_09125") / "table.parquet")
    assert len(cells) == 289 and set(cells["Metadata_Well"]) == {"D03"} and set(cells["Metadata_treatment"]) == {"untreated"}
    assert events["single_cell_features"].metadata["engine"].value == "cellprofiler 4.2.8.1"


def test_the_shipped_illumination_pipeline_is_the_generators_cell_painting_pipeline():
    assert (SHIPPED_PIPELINES / "illumination.cppipe").read_text() == illumination_pipeline(CELL_PAINTING_CHANNELS)
