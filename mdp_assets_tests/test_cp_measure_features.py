"""The built-in engine's Texture, Granularity, RadialDistribution and Correlation (cp-measure) against CellProfiler.

ExampleHuman's shipped reference has no such groups, so the reference is made here by the real CellProfiler
4.2.8.1: `data/examplehuman_cp_measure.cppipe` is ExampleHuman.cppipe's own segmentation and measurements plus
MeasureTexture (scale 3, 256 levels), MeasureGranularity (CellProfiler's defaults), MeasureObjectIntensityDistribution
(4 scaled bins, no Zernikes), MeasureColocalization (within objects, no Costes) and the Nuclei/Cells/Cytoplasm label
images. mdp measures those same label images, so segmentation cannot hide a feature difference.

Tolerances, per group (measured on ExampleHuman's 289 objects per compartment, 3 channels):
- Texture: relative 1e-6 on every object (measured: at most 1.2e-9).
- Granularity: relative 1e-6 on every object (measured: at most 1.7e-8).
- Correlation (Correlation, Overlap, K, Manders, RWC): relative 1e-5 (measured: at most 4.4e-7; mdp's images
  are float32, CellProfiler's float64).
- RadialDistribution: CellProfiler and cp-measure put some objects' centre or rings differently (cp-measure breaks
  ties of the farthest-from-edge point deterministically, CellProfiler through scipy 1.9's maximum_position), so
  per compartment at least 65% of the objects equal CellProfiler (relative 1e-5) on every RadialDistribution
  column (measured: 71-80%), and every column's median object equals it.
"""

import numpy as np
import pandas as pd
import pytest
import tifffile

from mdp_assets.engines.cellprofiler.outputs import file_list, read_csv_output
from mdp_assets.science.features import CpMeasureGroups, measure_compartment, measure_site
from mdp_assets_tests.test_cellprofiler_engine import IMAGES, _run, engine  # noqa: F401  (the engine fixture)

PIPELINE = __import__("pathlib").Path(__file__).parent / "data" / "examplehuman_cp_measure.cppipe"
CHANNELS = {"DNA": "d0", "PH3": "d1", "cellbody": "d2"}  # ExampleHuman.cppipe's NamesAndTypes rules
GROUPS = ("Texture", "Granularity", "RadialDistribution", "Correlation")
COMPARTMENTS = ("Nuclei", "Cells", "Cytoplasm")
EXACT = {"Texture": 1e-6, "Granularity": 1e-6, "Correlation": 1e-5}
RADIAL_OBJECTS_EQUAL = 0.65


def _group(column: str) -> str:
    return (column.split("_") + [""])[1]


def _channels() -> dict[str, np.ndarray]:
    """ExampleHuman's uint8 images in CellProfiler's [0, 1] scale."""
    by_suffix = {image.stem[-2:]: image for image in IMAGES}
    return {name: tifffile.imread(by_suffix[suffix]).astype(np.float32) / 255 for name, suffix in CHANNELS.items()}


@pytest.fixture(scope="module")
def reference(engine, tmp_path_factory):  # noqa: F811
    """CellProfiler's object tables and label images for ExampleHuman, from the pipeline above."""
    work = tmp_path_factory.mktemp("cp_measure_reference")
    out = work / "group-1"
    outcome = _run(engine, PIPELINE, [{"id": "1", "output_dir": str(out), "file_list": str(file_list(IMAGES, work / "files.txt"))}])
    assert [r.ok for r in outcome["results"]] == [True]
    tables = read_csv_output(out)
    assert tables.counts()["Nuclei"] == 289
    labels = {name: tifffile.imread(next(out.glob(f"*_{name}Labels.tiff"))).astype(np.int32) for name in COMPARTMENTS}
    return tables, labels


@pytest.fixture(scope="module")
def measured(reference):
    tables, labels = reference
    channels = _channels()
    return {name: measure_compartment(labels[name], channels, name,
                                      tables.objects[name]["ObjectNumber"].to_numpy())
            for name in COMPARTMENTS}


def _pairs(reference, measured, compartment):
    tables, _ = reference
    expected = tables.objects[compartment].set_index("ObjectNumber")
    expected = expected[[c for c in expected.columns if _group(c) in GROUPS]]
    ours = measured[compartment]
    return expected, ours[[c for c in ours.columns if _group(c) in GROUPS]]


@pytest.mark.slow
@pytest.mark.parametrize("compartment", COMPARTMENTS)
def test_the_same_feature_names_as_cellprofiler(reference, measured, compartment):
    expected, ours = _pairs(reference, measured, compartment)
    assert {_group(c) for c in expected.columns} == set(GROUPS)
    assert set(ours.columns) == set(expected.columns)
    assert len(expected.columns) == 3 * (52 + 16 + 12) + 3 * 8  # per channel: 13x4 texture, 16 granularity, 12 radial


@pytest.mark.slow
@pytest.mark.parametrize("compartment", COMPARTMENTS)
def test_values_within_each_groups_tolerance(reference, measured, compartment):
    expected, ours = _pairs(reference, measured, compartment)
    ours = ours.loc[expected.index, expected.columns]
    for group, rtol in EXACT.items():
        columns = [c for c in expected.columns if _group(c) == group]
        np.testing.assert_allclose(ours[columns].to_numpy(float), expected[columns].to_numpy(float),
                                   rtol=rtol, atol=1e-9, equal_nan=True, err_msg=f"{compartment} {group}")
    radial = [c for c in expected.columns if _group(c) == "RadialDistribution"]
    close = np.isclose(ours[radial].to_numpy(float), expected[radial].to_numpy(float), rtol=1e-5, atol=1e-8,
                       equal_nan=True)
    assert close.all(axis=1).mean() >= RADIAL_OBJECTS_EQUAL, f"{compartment}: {close.all(axis=1).mean():.0%}"
    difference = (ours[radial] - expected[radial]).abs().median()
    assert (difference <= 1e-6).all(), difference[difference > 1e-6].to_dict()


def test_groups_switch_off_and_name_every_channel_pair():
    """Without CellProfiler: the configured groups decide the columns; correlation covers every channel pair."""
    channels = _channels()
    nuclei = np.zeros((120, 120), dtype=np.int32)
    nuclei[20:40, 20:45], nuclei[70:95, 60:90] = 1, 2
    cells = np.zeros_like(nuclei)
    cells[12:50, 12:55], cells[62:105, 50:100] = 1, 2
    cells[nuclei > 0] = nuclei[nuclei > 0]
    crop = {name: image[200:320, 200:320] for name, image in channels.items()}
    plain = measure_site(nuclei, cells, crop, CpMeasureGroups.none())
    assert not [c for c in plain.columns if _group(c) in GROUPS]
    full = measure_site(nuclei, cells, crop)
    added = {c for c in full.columns if c not in plain.columns}
    assert added == {c for c in full.columns if _group(c) in GROUPS}
    assert {"Cytoplasm_Correlation_Correlation_DNA_PH3", "Cytoplasm_Correlation_RWC_cellbody_PH3",
            "Nuclei_Texture_Contrast_DNA_3_00_256", "Cells_Granularity_16_cellbody",
            "Nuclei_RadialDistribution_FracAtD_PH3_4of4"} <= added
    no_texture = measure_site(nuclei, cells, crop, CpMeasureGroups(texture=False, radial_bins=3))
    assert not [c for c in no_texture.columns if _group(c) == "Texture"]
    assert "Cells_RadialDistribution_MeanFrac_DNA_3of3" in no_texture.columns
    assert full[[c for c in full.columns if _group(c) == "Granularity"]].notna().all().all()
