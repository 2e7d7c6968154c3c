"""Plates of any shape: every level completes, or stops with a message that says what is missing."""

import dagster as dg
import numpy as np
import pytest
import tifffile
from scipy import ndimage

from mdp_assets.plates.demo import DemoPlateSpec, write_demo_plate
from mdp_assets_tests.conftest import run_plate, table_of

pytestmark = pytest.mark.slow

SMALL = {"image_size": 112, "cells_per_site": 9, "sites_per_well": 1}


def _run(storage, instance, spec: DemoPlateSpec, before_run=None):
    folder = write_demo_plate(storage.landing_path, spec)
    if before_run:
        before_run(folder)
    return run_plate(storage, instance, spec.barcode, raise_on_error=False)


def _problems(checks) -> dict[str, str]:
    """The no_empty_or_failed_wells check's table: well -> why."""
    return {r.data["well"]: r.data["why"] for r in checks["no_empty_or_failed_wells"].metadata["problems"].value.records}


def _cells(storage, barcode):
    return table_of(storage, "single_cell_features", barcode)


def test_one_well_one_site(storage, instance):
    spec = DemoPlateSpec(barcode="SHAPE-1WELL", rows="B", columns=(2,), **SMALL)
    result, made, _ = _run(storage, instance, spec)
    assert result.success and "well_embeddings" in made
    embedding = result.asset_materializations_for_node("well_embeddings")[0]
    assert embedding.metadata["components"].value == 0
    assert "fewer than two rows" in embedding.metadata["no_components_because"].value


def test_wells_with_no_cells_are_reported_and_the_rest_go_on(storage, instance):
    spec = DemoPlateSpec(barcode="SHAPE-EMPTY", rows="BC", columns=(2, 3, 4), empty_wells=("B03", "C04"), **SMALL)
    result, made, checks = _run(storage, instance, spec)
    assert result.success and "well_embeddings" in made
    problems = _problems(checks)
    assert problems["B03"] == "no nuclei found" and problems["C04"] == "no nuclei found"
    assert set(_cells(storage, spec.barcode)["Metadata_Well"]) == {"B02", "B04", "C02", "C03"}


def test_no_negative_controls_normalizes_to_all_wells(storage, instance):
    spec = DemoPlateSpec(barcode="SHAPE-NOCTRL", rows="BC", columns=(2, 3, 4), negative_controls=False, **SMALL)
    result, made, _ = _run(storage, instance, spec)
    assert result.success and {"single_cell_profiles", "well_profiles", "well_embeddings"} <= made
    profiles = result.asset_materializations_for_node("single_cell_profiles")[0]
    assert "all" in str(profiles.metadata["normalized_to"].value)


def test_an_extra_channel_is_measured_like_the_others(storage, instance):
    spec = DemoPlateSpec(barcode="SHAPE-BF", rows="BC", columns=(2, 3), extra_channels=("Brightfield",), **SMALL)
    result, made, _ = _run(storage, instance, spec)
    assert result.success and "well_embeddings" in made
    assert "Cells_Intensity_MeanIntensity_Brightfield" in _cells(storage, spec.barcode).columns


def test_a_1536_well_plate_with_two_letter_rows(storage, instance):
    spec = DemoPlateSpec(barcode="SHAPE-1536", rows=("A", "Z", "AF"), columns=(1, 47, 48), **SMALL)
    result, made, _ = _run(storage, instance, spec)
    assert result.success and "well_embeddings" in made
    raw = table_of(storage, "raw_images", spec.barcode)
    assert "r32c48f01p01-ch1sk1fk1fl1.tiff" in set(raw["file_name"])
    assert {"AF48", "Z47", "A01"} <= set(_cells(storage, spec.barcode)["Metadata_Well"])


def _blur(folder, wells):
    """Blur every channel of every site of these wells (Phenix names: r<row>c<col>)."""
    for path in folder.glob("*.tiff"):
        if path.name[:6] in wells:
            with tifffile.TiffFile(path) as tif:
                pixels, description = tif.pages[0].asarray(), tif.pages[0].description
            smeared = ndimage.gaussian_filter(pixels.astype(float), 5).astype(np.uint16)
            tifffile.imwrite(path, smeared, description=description.encode(), metadata=None)


def test_a_well_whose_every_site_fails_qc_is_excluded_and_named(storage, instance):
    spec = DemoPlateSpec(barcode="SHAPE-QCWELL", rows="BC", columns=(2, 3, 4, 5), **{**SMALL, "sites_per_well": 2})
    result, made, checks = _run(storage, instance, spec, lambda folder: _blur(folder, {"r02c03"}))
    assert result.success and "well_embeddings" in made
    assert checks["qc_pass_fraction"].passed
    assert "B03 site 1, B03 site 2" in checks["qc_pass_fraction"].metadata["failing_sites"].value
    assert _problems(checks)["B03"] == "every site failed image QC"
    assert "B03" not in set(_cells(storage, spec.barcode)["Metadata_Well"])


def test_a_plate_mostly_failing_qc_stops_with_the_reason(storage, instance):
    spec = DemoPlateSpec(barcode="SHAPE-QCPLATE", rows="BC", columns=(2, 3, 4, 5), **SMALL)
    blurred = {"r02c02", "r02c03", "r02c04", "r02c05", "r03c02"}
    result, made, checks = _run(storage, instance, spec, lambda folder: _blur_with_absolute_limit(folder, blurred))
    check = checks["qc_pass_fraction"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert check.description.startswith("5 of 8 sites fail QC, more than the limit 50%: the plate stops here")
    assert "image_qc" in made and "illumination_functions" not in made and "single_cell_features" not in made
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert failure.step_key == "illumination_functions"
    assert "5 of 8 sites fail QC, more than the limit 50%: the plate stops here" in str(failure.step_failure_data.error.cause)


def _blur_with_absolute_limit(folder, wells):
    """Most of the plate blurred: a relative rule cannot see a majority, so this plate sets an absolute limit."""
    _blur(folder, wells)
    manifest = folder / "plate.yaml"
    manifest.write_text(manifest.read_text() + "settings:\n  qc:\n    min_power_log_log_slope: -3.0\n")
