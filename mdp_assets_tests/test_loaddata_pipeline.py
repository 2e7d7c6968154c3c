"""A LoadData-driven analysis pipeline (the Broad / JUMP way: `FileName_Orig<Channel>`, `FileName_Illum<Channel>`,
Metadata_ columns) run unmodified through mdp, against the same pipeline run directly with `cellprofiler` on the
same LoadData CSV.

The pipeline is `pipelines/examples/NF1_analysis_3channel_loaddata.cppipe` (tools/nf1_loaddata_pipeline.py): the
NF1 lab's analysis modules behind LoadData and CorrectIlluminationApply (each channel divided by the
illumination function LoadData loads), saving Nuclei and Cells label images named `\\g<Batch>_\\g<Plate>_...`.
Its LoadData columns are those of the Cell Painting Gallery's `load_data_with_illum` files (pycytominer's test
data holds one: `<Plate>_Illum<Channel>.npy` under `illum/<Plate>`). One site of the real NF1 plate keeps it short.
"""

import hashlib
import os
import shutil
import subprocess
import threading
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

from mdp_assets.config import SHIPPED_PIPELINES
from mdp_assets.engines.cellprofiler.describe import describe_pipeline
from mdp_assets.engines.cellprofiler.outputs import read_sqlite_output, single_cells
from mdp_assets.engines.cellprofiler.run import analysis_loaddata
from mdp_assets.engines.cellprofiler.runner import WARNING_LINE
from mdp_assets.storage.resource import MdpStorage
from mdp_assets_tests.conftest import NF1_IMAGES, NF1_PLATEMAP, REALDATA, defs_for, make_deployment, stored
from mdp_assets_tests.test_lab_pipelines import ENVIRONMENT, _failures, _python

pytestmark = pytest.mark.slow

PIPELINE = SHIPPED_PIPELINES / "examples" / "NF1_analysis_3channel_loaddata.cppipe"
ILLUMINATION = SHIPPED_PIPELINES / "examples" / "NF1_illum_3channel_loaddata.cppipe"
GALLERY_LOADDATA = (REALDATA / "pycytominer-testdata" / "tests" / "test_data" / "cell_locations_example_data"
                    / "test_BR00126114_load_data_with_illum.parquet")
PLATE, BATCH = "Plate_2", "2023_nf1_batch2"
WELLS = ("B7",)  # as the NF1 file names write it (B07); one site keeps the test short
CHANNELS = ("DAPI", "GFP", "RFP")


def _plate(tmp_path: Path) -> MdpStorage:
    deployment = make_deployment(tmp_path / "mdp", engine={"kind": "cellprofiler", "cellprofiler": {
        "environment": str(ENVIRONMENT), "workers": 1, "illumination_pipeline": str(ILLUMINATION),
        "analysis_pipeline": str(PIPELINE)}})
    storage = MdpStorage.from_deployment(deployment)
    folder = storage.landing_path / PLATE
    folder.mkdir(parents=True)
    for image in sorted(NF1_IMAGES.glob("*.tif")):
        if image.name.split("_")[0] in WELLS:
            shutil.copy(image, folder / image.name)
    shutil.copy(NF1_PLATEMAP, folder / "platemap.csv")
    (folder / "plate.yaml").write_text(yaml.safe_dump({
        "barcode": PLATE, "origin": "public", "platemap": "platemap.csv", "naming_scheme": "nf1",
        "nuclei_channel": "DAPI", "expected_image_count": 3, "treatment_column": "genotype",
        "annotations": {"Batch": BATCH}}))
    return storage


def _reference_loaddata(functions: Path, folder: Path) -> Path:
    """The CSV a lab would write for these sites: the raw images, the plate's functions as <Plate>_Illum<Channel>.npy
    in illum/<Plate>, Metadata_Plate/Well/Site/Batch."""
    illum = folder / "illum" / PLATE
    illum.mkdir(parents=True)
    for channel in CHANNELS:
        shutil.copy(functions / f"{channel}.npy", illum / f"{PLATE}_Illum{channel}.npy")
    rows = []
    for well in WELLS:
        site = next(NF1_IMAGES.glob(f"{well}_01_1_*_DAPI_001.tif")).name.split("_")[3]  # <well>_01_<n>_<site>_...
        row = {"Metadata_Plate": PLATE, "Metadata_Well": f"{well[0]}{int(well[1:]):02d}", "Metadata_Site": site,
               "Metadata_Batch": BATCH}
        for number, channel in enumerate(CHANNELS, start=1):
            image = next(NF1_IMAGES.glob(f"{well}_01_{number}_{site}_{channel}_001.tif"))
            row |= {f"FileName_Orig{channel}": image.name, f"PathName_Orig{channel}": str(image.parent),
                    f"FileName_Illum{channel}": f"{PLATE}_Illum{channel}.npy", f"PathName_Illum{channel}": str(illum)}
        rows.append(row)
    path = folder / "load_data_with_illum.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _cellprofiler(data_file: Path, output: Path) -> None:
    env = dict(os.environ)
    javac = shutil.which("javac")
    if javac:
        env.setdefault("JAVA_HOME", str(Path(os.path.realpath(javac)).parent.parent))
    done = subprocess.run([str(_python()), "-m", "cellprofiler", "-c", "-r", "-p", str(PIPELINE), "--data-file",
                           str(data_file), "-o", str(output)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout[-3000:]


def _compute_log(instance: dg.DagsterInstance, result, step: str) -> str:
    """The stdout and stderr Dagster captured for the step (the run view's compute log)."""
    captured = [e.event_specific_data for e in result.all_events if e.event_type_value == "LOGS_CAPTURED"
                and step in (e.event_specific_data.step_keys or [])]
    assert captured, "no compute log captured"
    data = instance.compute_log_manager.get_log_data([result.run_id, "compute_logs", captured[0].file_key])
    return (data.stdout or b"").decode(errors="replace") + (data.stderr or b"").decode(errors="replace")


def test_the_example_reads_the_columns_of_the_cell_painting_gallerys_load_data_with_illum():
    description = describe_pipeline(_python(), PIPELINE)
    assert description.input == "LoadData" and description.corrects_itself
    assert description.loaddata_channels() == (set(CHANNELS), set(CHANNELS))
    assert description.metadata_needed == ("Batch", "Plate", "Site", "Well")
    gallery = pd.read_parquet(GALLERY_LOADDATA)
    # The gallery's columns, for its five channels; this pipeline's for its three.
    assert {c for c in gallery.columns if c.startswith(("FileName_", "PathName_"))} == {
        f"{kind}_{image}{channel}" for kind in ("FileName", "PathName") for image in ("Orig", "Illum")
        for channel in ("DNA", "ER", "RNA", "AGP", "Mito")}
    assert set(gallery["FileName_IllumDNA"]) == {"BR00126114_IllumDNA.npy"}  # <Plate>_Illum<Channel>.npy
    files = pd.DataFrame({"Metadata_Well": ["B07"] * 3, "Metadata_Site": [1] * 3, "Metadata_Channel": list(CHANNELS),
                          "path": [f"/images/B7_01_{n}_3_{c}_001.tif" for n, c in enumerate(CHANNELS, 1)]})
    metadata = pd.DataFrame({"Metadata_Well": ["B07"], "Metadata_Site": [1], "Metadata_Batch": [BATCH]}).set_index(
        ["Metadata_Well", "Metadata_Site"])
    names = {c: f"{PLATE}_Illum{c}.npy" for c in CHANNELS}
    table = analysis_loaddata(files, PLATE, description, metadata, Path("/illum") / PLATE, names)
    assert table.iloc[0].to_dict() == {
        **{f"FileName_Orig{c}": f"B7_01_{n}_3_{c}_001.tif" for n, c in enumerate(CHANNELS, 1)},
        **{f"PathName_Orig{c}": "/images" for c in CHANNELS},
        **{f"FileName_Illum{c}": f"{PLATE}_Illum{c}.npy" for c in CHANNELS},
        **{f"PathName_Illum{c}": f"/illum/{PLATE}" for c in CHANNELS},
        "Metadata_Plate": PLATE, "Metadata_Well": "B07", "Metadata_Site": "1", "Metadata_Batch": BATCH}
    with pytest.raises(Exception, match=r"reads metadata \['Metadata_Batch'\].*plate.yaml's annotations"):
        analysis_loaddata(files, PLATE, description, metadata.drop(columns="Metadata_Batch"), Path("/illum"), names)


def test_a_loaddata_pipeline_with_illum_columns_runs_unmodified_and_equals_cellprofiler_on_the_same_csv(tmp_path, capfd):
    _python()
    before = hashlib.sha256(PIPELINE.read_bytes()).hexdigest()
    storage = _plate(tmp_path)
    # pytest's own capture holds the file descriptors Dagster captures a step's output from (as a run worker does).
    with dg.instance_for_test() as instance, capfd.disabled():
        instance.add_dynamic_partitions("plates", [PLATE])
        result = defs_for(storage).resolve_job_def("plate_job").execute_in_process(
            instance=instance, partition_key=PLATE, raise_on_error=False,
            op_selection=["raw_images", "image_qc", "illumination_functions", "corrected_images", "segmentation_masks",
                          "single_cell_features", "single_cell_qc", "single_cell_crops"])
        assert result.success, _failures(result)
        compute_log = _compute_log(instance, result, "segmentation_masks")
        # The event log as the run view shows it (log messages and Dagster events) of the CellProfiler step.
        step_messages = [e.user_message or "" for e in instance.all_logs(result.run_id)
                         if e.step_key == "segmentation_masks"]
    assert hashlib.sha256(PIPELINE.read_bytes()).hexdigest() == before, "the pipeline is untouched"
    events = {e.materialization.asset_key.to_user_string(): e.materialization.metadata
              for e in result.get_asset_materialization_events()}
    # The illumination pipeline saved <Plate>_Illum<Channel>.npy; mdp keeps them as the plate's functions.
    assert events["illumination_functions"]["functions_saved"].value == "DAPI, GFP, RFP"
    # The pipeline corrects illumination itself: it reads the raw images and the functions; no copy of mdp's own.
    assert events["corrected_images"]["analysis_reads"].value.startswith("raw images: NF1_analysis_3channel_loaddata")
    assert events["corrected_images"]["images_written"].value == 0

    reference = tmp_path / "reference"
    _cellprofiler(_reference_loaddata(stored(storage, "illumination_functions", PLATE), reference), reference / "out")
    theirs = read_sqlite_output(reference / "out" / "nf1_analysis.sqlite")
    counts = theirs.counts()
    assert counts["Nuclei"] > 10 and counts["Cells"] > 5, counts
    masks = events["segmentation_masks"]
    assert masks["pipeline_sha256"].value == before
    assert masks["objects"].value == ", ".join(f"{k}: {v}" for k, v in counts.items())
    assert theirs.image["Image_Metadata_Batch"].tolist() == [BATCH]  # the metadata LoadData gave it

    # Site by site the same label images (saved under the Batch/Plate/Well/Site names) and the same features.
    partition = stored(storage, "segmentation_masks", PLATE)
    sites = pd.read_parquet(partition / "sites.parquet")
    assert sites["file_name"].notna().all()
    for site in sites.itertuples(index=False):
        ours = tifffile.imread(partition / site.file_name)
        for layer, objects in enumerate(("Nuclei", "Cells")):
            theirs_labels = tifffile.imread(
                reference / "out" / f"{BATCH}_{PLATE}_{site.Metadata_Well}_{site.Metadata_Site}_{objects}.tiff")
            assert np.array_equal(ours[layer], theirs_labels), (site.Metadata_Well, objects)
    cells = pd.read_parquet(stored(storage, "single_cell_features", PLATE) / "table.parquet")
    expected = single_cells(theirs)
    assert len(cells) == len(expected) == counts["Cells"]
    sample = [c for c in expected.columns if not c.startswith("Metadata_") and any(g in c for g in (
        "AreaShape_Area", "Intensity_MeanIntensity_GFP", "Texture_Contrast", "Granularity_2_", "RadialDistribution_FracAtD",
        "Correlation_Pearson", "Neighbors_NumberOfNeighbors"))]
    assert len(sample) > 30
    key = ["Metadata_Well", "Metadata_ObjectNumber"]
    np.testing.assert_allclose(cells.set_index(key).sort_index()[sample].to_numpy(float),
                               expected.set_index(key).sort_index()[sample].to_numpy(float), rtol=1e-9, equal_nan=True)
    # The event log holds one summary of the group (sites, objects, warnings counted), not CellProfiler's lines:
    # those are in the step's compute log, in full.
    summaries = [m for m in step_messages if m.startswith("CellProfiler group ")]
    assert len(summaries) == 1, summaries
    warnings = [line for line in compute_log.splitlines() if line.startswith("[") and WARNING_LINE.search(line)]
    assert len(warnings) > 0 and "low contrast image" in compute_log  # skimage, on saving the label images
    objects = ", ".join(f"{name} {count}" for name, count in counts.items())
    assert summaries[0].startswith(f"CellProfiler group B07-B07: done, 1 site(s); objects: {objects}; "
                                   f"{len(warnings)} warning line(s) (")
    assert not [m for m in step_messages if "Warning" in m and not m.startswith("CellProfiler group ")]
    assert "Image # 1, module SaveImages" in compute_log
    # Crops come from the saved masks.
    assert events["single_cell_crops"]["cells"].value == counts["Cells"]
