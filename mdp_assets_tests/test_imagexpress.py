"""A real ImageXpress plate export (MetaXpress 6.7: an HTD plate file, MetaSeries XML in every TIFF) through
intake and every level, with the values its files write on the rows."""

import re
import shutil
from pathlib import Path

import pytest

from mdp_assets.plates.imagexpress import read_htd
from mdp_assets.plates.inventory import PlateFolder, inventory_plate
from mdp_assets.plates.naming import looks_like_image
from mdp_assets_tests.conftest import run_plate, table_of, write_manifest

PLATE = Path(__file__).parent / "data" / "imagexpress-9987_Plate_3434"


def _plate(landing: Path) -> Path:
    folder = landing / "9987_Plate_3434"
    shutil.copytree(PLATE, folder / "TimePoint_1" / "ZStep_0")
    shutil.move(folder / "TimePoint_1" / "ZStep_0" / "9987.HTD", folder / "9987.HTD")
    (folder / "platemap.csv").write_text("Well,condition\nB02,control\nB03,treated\n")
    write_manifest(folder, barcode="9987_Plate_3434", origin="public", platemap="platemap.csv",
                   naming_scheme="imagexpress", images_subdir="TimePoint_1/ZStep_0", expected_image_count=12,
                   nuclei_channel="DAPI", treatment_column="condition")
    return folder


def _written(path: Path, prop: str) -> str:
    """A property's value as MetaMorph wrote it into the TIFF's ImageDescription."""
    text = path.read_bytes().decode("latin-1")
    return re.search(rf'id="{re.escape(prop)}" type="[^"]*" value="([^"]*)"', text).group(1)


def test_the_htd_file_describes_the_plate():
    htd = read_htd(PLATE / "9987.HTD")
    assert (htd.columns, htd.rows) == (12, 8)  # "XWells", 12 / "YWells", 8
    assert htd.wells == ("B02", "B03") and htd.sites == 2
    assert htd.wave_names == {"1": "DAPI", "2": "FITC", "3": "Texas Red", "4": "Cy5"}


def test_metaseries_metadata_reach_the_inventory_with_units(tmp_path):
    folder = _plate(tmp_path)
    table = inventory_plate(PlateFolder.open(folder)).set_index("file_name")
    assert len(table) == 12 and set(table["Metadata_Channel"]) == {"DAPI", "FITC", "Texas_Red"}
    for name, row in table.iterrows():
        image = folder / "TimePoint_1" / "ZStep_0" / name
        assert _written(image, "spatial-calibration-units") == "um"
        assert row["Metadata_PhysicalSizeX_um"] == float(_written(image, "spatial-calibration-x"))
        assert row["Metadata_Objective"] == _written(image, "_MagSetting_") == "40X Plan Apo Lambda"
        assert row["Metadata_ObjectiveMagnification"] == 40.0
        assert row["Metadata_ObjectiveNA"] == float(_written(image, "_MagNA_"))
        exposure = _written(image, "Exposure Time")  # "100 ms"
        assert row["Metadata_ExposureTime_ms"] == float(exposure.removesuffix(" ms"))
        stamp = _written(image, "acquisition-time-local")  # "20240709 13:13:03.006"
        assert row["Metadata_AcquisitionTime"] == f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[9:]}"
        assert row["Metadata_Channel"] == _written(image, "_IllumSetting_").replace(" ", "_")
    assert table.loc["9987_B02_s1_w1.TIF", "Metadata_PhysicalSizeX_um"] == 1.3672


def test_metaxpress_thumbnails_are_not_plate_images():
    assert not looks_like_image("Projection-Mix_E07_s1_w1_thumb187DE64B-038A-4671-BF6B-683721723769.tif")
    assert looks_like_image("9987_B02_s1_w1.TIF")


@pytest.mark.slow
def test_a_real_imagexpress_plate_goes_through_every_level(storage, instance):
    folder = _plate(storage.landing_path)
    result, made, _ = run_plate(storage, instance, folder.name)
    assert result.success and {"single_cell_features", "well_profiles", "well_embeddings"} <= made
    cells = table_of(storage, "single_cell_features", folder.name)
    assert set(cells["Metadata_Well"]) == {"B02", "B03"} and len(cells) > 10
    assert (cells["Metadata_PhysicalSizeX_um"] == 1.3672).all()
    assert "Cells_Intensity_MeanIntensity_Texas_Red" in cells.columns
