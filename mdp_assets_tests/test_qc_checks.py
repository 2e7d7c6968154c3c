"""Image QC as asset checks: failures name each file and well, and downstream levels exclude them."""

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage

from mdp_assets_tests.conftest import defs_for, stored
from mdp_assets.plates.demo import DemoPlateSpec, write_demo_plate

pytestmark = pytest.mark.slow

SPEC = DemoPlateSpec(barcode="DEMO-QC", rows="BC", columns=(2, 3, 4, 5), sites_per_well=1, image_size=160, cells_per_site=12)


def test_blurred_image_fails_its_check_and_its_site_is_excluded(storage, instance):
    folder = write_demo_plate(storage.landing_path, SPEC)
    blurred = folder / "r02c02f01p01-ch1sk1fk1fl1.tiff"  # B02, DNA
    with tifffile.TiffFile(blurred) as tif:
        pixels, description = tif.pages[0].asarray(), tif.pages[0].description
    smeared = ndimage.gaussian_filter(pixels.astype(float), 6).astype(np.uint16)
    tifffile.imwrite(blurred, smeared, description=description.encode(), metadata=None)

    defs = defs_for(storage)
    instance.add_dynamic_partitions("plates", [SPEC.barcode])
    result = defs.resolve_job_def("plate_job").execute_in_process(
        instance=instance, partition_key=SPEC.barcode,
        asset_selection=[dg.AssetKey(k) for k in ("raw_images", "image_qc", "illumination_functions",
                                                  "corrected_images", "segmentation_masks", "single_cell_features")],
    )
    assert result.success
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not checks["no_blurred_images"].passed
    failing = checks["no_blurred_images"].metadata["failing_images"].value.records  # a table the UI shows
    assert [(r.data["file_name"], r.data["Metadata_Well"], r.data["Metadata_Channel"]) for r in failing] == [
        (blurred.name, "B02", "DNA")]
    assert checks["no_saturated_images"].passed and checks["no_saturated_images"].metadata["images"].value == 0
    assert checks["qc_pass_fraction"].passed and checks["qc_pass_fraction"].metadata["site_pass_fraction"].value == 7 / 8
    assert not checks["no_empty_or_failed_wells"].passed
    problems = checks["no_empty_or_failed_wells"].metadata["problems"].value.records
    assert [(r.data["well"], r.data["why"]) for r in problems] == [("B02", "every site failed image QC")]

    corrected = {e.materialization.asset_key.to_user_string(): e.materialization for e in result.get_asset_materialization_events()}
    assert corrected["corrected_images"].metadata["excluded_sites"].value == "B02 site 1"
    cells = pd.read_parquet(stored(storage, "single_cell_features", SPEC.barcode) / "table.parquet")
    assert "B02" not in set(cells["Metadata_Well"]) and len(set(cells["Metadata_Well"])) == 7
