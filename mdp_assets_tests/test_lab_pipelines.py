"""A real lab's CellProfiler pipelines, byte-for-byte as the lab wrote them, through every level of mdp.

The NF1 Schwann cell lab (WayScience) corrects illumination with `NF1_illum_3channel.cppipe` (Images /
NamesAndTypes input, CorrectIlluminationCalculate per image, CorrectIlluminationApply by subtraction,
SaveImages of 16-bit `*_illumcorrect.tiff`) and analyses the corrected images with
`NF1_analysis_3channel.cppipe` (NamesAndTypes rules on the file names, nuclei, cells and cytoplasm, every
measurement module, ExportToDatabase to `nf1_analysis.sqlite`). The reference is the same two pipelines run
directly with the `cellprofiler` command on the same images, as the lab runs them.
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

from mdp_assets.engines.cellprofiler.describe import describe_pipeline
from mdp_assets.engines.cellprofiler.outputs import read_sqlite_output, single_cells
from mdp_assets.plates.naming import well_from_row_col
from mdp_assets_tests.conftest import NF1_IMAGES, REALDATA, defs_for, make_deployment, stored

pytestmark = pytest.mark.slow

ENVIRONMENT = Path(__file__).resolve().parents[1] / ".mdp" / "cellprofiler"
NF1 = REALDATA / "nf1-schwann-metadata"
ILLUM = NF1 / "1.cellprofiler_ic" / "pipelines" / "NF1_illum_3channel.cppipe"
ANALYSIS = NF1 / "2.cellprofiler_analysis" / "NF1_analysis_3channel.cppipe"
# The files as the lab published them (WayScience/nf1_schwann_cell_painting_data @ c83ad2ad).
SHA256 = {ILLUM: "9661e40a4b395555ffc36096e044ff621c04a3aef003167da56f98f2672bacce"}
PLATE = "Plate_2"


def _python() -> Path:
    python = ENVIRONMENT / "bin" / "python"
    if not python.exists():
        if os.environ.get("CI"):
            pytest.fail(f"CI must build CellProfiler first (make cellprofiler); nothing at {ENVIRONMENT}")
        pytest.skip("CellProfiler environment not built (make cellprofiler)")
    return python


@pytest.fixture
def deployment(tmp_path):
    """The deployment names the lab's two pipelines, as a lab would in its mdp.yaml."""
    return make_deployment(tmp_path / "mdp", engine={"kind": "cellprofiler", "cellprofiler": {
        "environment": str(ENVIRONMENT), "workers": 2,
        "illumination_pipeline": str(ILLUM), "analysis_pipeline": str(ANALYSIS)}})


def _cellprofiler(pipeline: Path, images: Path, output: Path) -> None:
    env = dict(os.environ)
    javac = shutil.which("javac")
    if javac:
        env.setdefault("JAVA_HOME", str(Path(os.path.realpath(javac)).parent.parent))
    done = subprocess.run([str(_python()), "-m", "cellprofiler", "-c", "-r", "-p", str(pipeline), "-i", str(images),
                           "-o", str(output)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout[-3000:]


def _reference(folder: Path) -> None:
    """The lab's way: the illumination pipeline on the image folder, the analysis on the corrected folder."""
    _cellprofiler(ILLUM, NF1_IMAGES, folder / "illum")
    corrected = folder / "Corrected_Plate_2"  # the folder name the analysis pipeline reads the plate from
    shutil.copytree(folder / "illum", corrected)
    _cellprofiler(ANALYSIS, corrected, folder / "analysis")


def _well(name: str) -> str:
    return well_from_row_col(ord(name[0]) - ord("A") + 1, int(name[1:]))


def test_the_nf1_labs_pipelines_run_unmodified_through_every_level_and_equal_cellprofiler_run_directly(
        storage, instance, nf1_plate, tmp_path):
    _python()
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (ILLUM, ANALYSIS)}
    assert before[ILLUM] == SHA256[ILLUM]
    reference = tmp_path / "reference"
    direct = threading.Thread(target=_reference, args=(reference,))
    direct.start()  # CellProfiler run directly, while mdp runs the same pipelines
    try:
        defs = defs_for(storage)
        instance.add_dynamic_partitions("plates", [PLATE])
        result = defs.resolve_job_def("plate_job").execute_in_process(instance=instance, partition_key=PLATE,
                                                                      raise_on_error=False)
    finally:
        direct.join()
    assert result.success, _failures(result)
    events = {e.materialization.asset_key.to_user_string(): e.materialization.metadata
              for e in result.get_asset_materialization_events()}
    assert "well_embeddings" in events and "single_cell_profiles" in events
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (ILLUM, ANALYSIS)} == before, "pipelines untouched"

    # Illumination: the lab's pipeline, its 16-bit corrected images exactly as CellProfiler writes them directly.
    illumination = events["illumination_functions"]
    assert illumination["pipeline_sha256"].value == before[ILLUM]
    assert illumination["corrected_images_saved"].value == 15 and illumination["functions_saved"].value == "none"
    saved = stored(storage, "illumination_functions", PLATE) / "corrected"
    for path in sorted((reference / "illum").glob("*_illumcorrect.tiff")):
        ours, theirs = tifffile.imread(saved / path.name), tifffile.imread(path)
        assert ours.dtype == theirs.dtype == np.uint16 and np.array_equal(ours, theirs), path.name
    # Correction happens once: the analysis reads those images; no float32 copy of mdp's own.
    corrected = events["corrected_images"]
    assert corrected["analysis_reads"].value == "the corrected images the illumination pipeline saved"
    stack = tifffile.imread(next(stored(storage, "corrected_images", PLATE).glob("*.ome.tiff")))
    assert stack.dtype == np.uint16 and stack.shape[0] == 3

    # Analysis: the same objects, site by site, and the same feature values as CellProfiler run directly.
    masks = events["segmentation_masks"]
    assert masks["pipeline_sha256"].value == before[ANALYSIS]
    assert masks["masks"].value.startswith("none: NF1_analysis_3channel.cppipe saves no label image")
    theirs = read_sqlite_output(reference / "analysis" / "nf1_analysis.sqlite")
    assert theirs.counts() == {"Cells": 93, "Cytoplasm": 93, "Nuclei": 132}
    assert masks["objects"].value == "Cells: 93, Cytoplasm: 93, Nuclei: 132"
    sites = pd.read_parquet(stored(storage, "segmentation_masks", PLATE) / "sites.parquet").set_index("Metadata_Well")
    expected_counts = theirs.image.assign(Metadata_Well=theirs.image["Image_Metadata_Well"].map(_well)).set_index(
        "Metadata_Well")
    for well, row in expected_counts.iterrows():
        assert (sites.loc[well, "Count_Nuclei"], sites.loc[well, "Count_Cells"]) == (
            row["Image_Count_Nuclei"], row["Image_Count_Cells"]), well

    cells = pd.read_parquet(stored(storage, "single_cell_features", PLATE) / "table.parquet")
    expected = single_cells(theirs)
    expected["Metadata_Well"] = expected["Metadata_Well"].map(_well)
    assert len(cells) == len(expected) == 93
    ids = ("_Parent_", "_Number_Object_Number")  # relationships: Metadata_ columns in mdp's tables
    features = [c for c in expected.columns if not c.startswith("Metadata_") and not any(i in c for i in ids)]
    assert set(features) <= set(cells.columns)  # every feature the lab's pipeline measures, by its own names
    sample = [c for c in features if any(group in c for group in (
        "AreaShape_Area", "Intensity_MeanIntensity_GFP", "Texture_", "Granularity_", "RadialDistribution_",
        "Correlation_Pearson", "Neighbors_NumberOfNeighbors"))]
    assert len(sample) > 100 and {"Nuclei", "Cells", "Cytoplasm"} == {c.split("_")[0] for c in sample}
    key = ["Metadata_Well", "Metadata_ObjectNumber"]
    ours = cells.set_index(key).sort_index()[sample]
    reference_cells = expected.set_index(key).sort_index()[sample]
    assert list(ours.index) == list(reference_cells.index)
    np.testing.assert_allclose(ours.to_numpy(float), reference_cells.to_numpy(float), rtol=1e-9, equal_nan=True)

    # No masks saved: crops say so, and none is made of zeros.
    crops = events["single_cell_crops"]
    assert crops["cells"].value == 0 and crops["cells_without_masks"].value == 93
    assert "saved no label images" in crops["crops_missing"].value


def test_the_labs_pipelines_are_read_by_cellprofiler_core():
    python = _python()
    illum, analysis = describe_pipeline(python, ILLUM), describe_pipeline(python, ANALYSIS)
    assert illum.input == analysis.input == "NamesAndTypes"
    assert illum.images_needed == ("OrigDAPI", "OrigGFP", "OrigRFP")
    assert [(c.image, c.method) for c in illum.corrections] == [("OrigDAPI", "Subtract"), ("OrigGFP", "Subtract"),
                                                               ("OrigRFP", "Subtract")]
    assert [(s.image, s.suffix, s.extension) for s in illum.saved_corrected()] == [
        ("CorrDAPI", "_illumcorrect", "tiff"), ("CorrGFP", "_illumcorrect", "tiff"), ("CorrRFP", "_illumcorrect", "tiff")]
    assert not analysis.corrects_itself and analysis.images_needed == ("DAPI", "GFP", "RFP")
    assert (analysis.export.kind, analysis.export.file_name) == ("database", "nf1_analysis.sqlite")
    assert (analysis.primary, analysis.secondary, analysis.tertiary) == (
        ("Nuclei",), (("Cells", "Nuclei"),), (("Cytoplasm", "Cells", "Nuclei"),))
    assert analysis.saved_labels() == {}


EXAMPLE = REALDATA / "cellprofiler-examplehuman" / "ExampleHuman"


def _examplehuman_plate(tmp_path, analysis: Path):
    from mdp_assets.storage.resource import MdpStorage

    deployment = make_deployment(tmp_path / "eh", engine={"kind": "cellprofiler", "cellprofiler": {
        "environment": str(ENVIRONMENT), "workers": 1, "analysis_pipeline": str(analysis)}})
    storage = MdpStorage.from_deployment(deployment)
    plate = storage.landing_path / "AS_09125"
    plate.mkdir(parents=True)
    for image in sorted((EXAMPLE / "images").glob("*.tif")):
        shutil.copy(image, plate / image.name)
    (plate / "platemap.csv").write_text("well_position,treatment\nD03,untreated\n")
    (plate / "plate.yaml").write_text(__import__("yaml").safe_dump({
        "barcode": "AS_09125", "origin": "public", "platemap": "platemap.csv", "naming_scheme": "regex",
        "naming_pattern": r"^AS_09125_050116030001_(?P<well>[A-P]\d{2})f(?P<site>\d{2})d(?P<channel>\d)\.tif$",
        "channels": {"0": "DNA", "1": "PH3", "2": "cellbody"}, "expected_image_count": 3, "treatment_column": "treatment",
    }))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("plates", ["AS_09125"])
        result = defs_for(storage).resolve_job_def("plate_job").execute_in_process(
            instance=instance, partition_key="AS_09125", raise_on_error=False,
            op_selection=["raw_images", "image_qc", "illumination_functions", "corrected_images", "segmentation_masks"])
    return result, _failures(result)


def _failures(result) -> list[str]:
    """Each failed step's error, with its cause (the MdpError the step raised)."""
    out = []
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            error = event.event_specific_data.error
            out.append(error.message + (error.cause.message if error.cause else ""))
    return out


def test_a_pipeline_that_finds_no_objects_in_most_sites_fails_with_that_message(tmp_path):
    _python()
    blind = tmp_path / "blind.cppipe"  # ExampleHuman, looking for nuclei 800 to 1000 px across: it finds none
    blind.write_text((EXAMPLE / "ExampleHuman.cppipe").read_text().replace(
        "Typical diameter of objects, in pixel units (Min,Max):8,80",
        "Typical diameter of objects, in pixel units (Min,Max):800,1000", 1))
    result, failures = _examplehuman_plate(tmp_path, blind)
    assert not result.success
    assert any("blind.cppipe found no Nuclei in 1 of 1 sites (D03 site 0)" in f for f in failures), failures


def test_a_pipeline_whose_namesandtypes_rules_match_none_of_the_plates_files_is_refused_naming_its_rules(tmp_path):
    _python()
    result, failures = _examplehuman_plate(tmp_path, ANALYSIS)  # the NF1 rules (DAPI, GFP, RFP) on ExampleHuman
    assert not result.success
    assert any("NamesAndTypes of NF1_analysis_3channel.cppipe" in f and 'file does contain "DAPI"' in f
               for f in failures), failures
