"""Opera Phenix plates: Harmony index XML (versions 1, 5 and 7) and pe2loaddata's LoadData CSVs."""

import shutil

import pandas as pd
import pytest

from mdp_assets.plates.harmony import find_index_file, read_harmony_index
from mdp_assets.plates.inventory import PlateFolder, inventory_plate
from mdp_assets.engines.cellprofiler.loaddata import loaddata_from_harmony, loaddata_from_raw_images, read_pe2loaddata_config
from mdp_assets_tests.conftest import REALDATA, write_manifest

PE2LOADDATA = REALDATA / "pe2loaddata-phenix"


@pytest.mark.parametrize("version", [1, 5, 7])
def test_loaddata_equals_pe2loaddata_reference(version):
    folder = PE2LOADDATA / f"Version{version}"
    plate, images = read_harmony_index(find_index_file(folder / "images"))
    channels, fields = read_pe2loaddata_config(folder / f"config_v{version}.yml")
    ours = loaddata_from_harmony(images, plate, channels, fields, f"tests/data/Version{version}/images/")
    reference = pd.read_csv(folder / f"load_data_version{version}.csv", dtype=str, keep_default_na=False)
    assert list(ours.columns) == list(reference.columns)
    pd.testing.assert_frame_equal(ours.reset_index(drop=True), reference)


def test_phenix_plate_takes_channel_names_and_acquisition_from_harmony(tmp_path):
    plate_dir = tmp_path / "BR00122249"
    shutil.copytree(PE2LOADDATA / "Version5" / "images", plate_dir)
    (plate_dir / "platemap.csv").write_text("well_position,treatment\nA01,DMSO\n")
    write_manifest(plate_dir, barcode="BR00122249", origin="internal", platemap="platemap.csv",
                   naming_scheme="phenix", expected_image_count=6, channels={"Alexa 568": "AGP"})
    table = inventory_plate(PlateFolder.open(plate_dir)).set_index("file_name")
    ch5 = table.loc["r01c01f01p01-ch5sk1fk1fl1.tiff"]
    assert ch5["Metadata_Channel"] == "AGP", "the manifest maps the Harmony channel name"
    assert table.loc["r01c01f01p01-ch1sk1fk1fl1.tiff", "Metadata_Channel"] == "Digital_Phase_Contrast"
    assert ch5["Metadata_PhysicalSizeX_um"] == pytest.approx(0.597976, rel=1e-5)
    assert ch5["Metadata_ObjectiveMagnification"] == 20 and ch5["Metadata_ExposureTime_ms"] == pytest.approx(40.0)
    assert ch5["Metadata_AcquisitionTime"] == "2023-03-23T14:52:41.417-04:00"
    loaddata = loaddata_from_raw_images(table.reset_index())
    assert len(loaddata) == 1 and loaddata.loc[0, "FileName_AGP"] == "r01c01f01p01-ch5sk1fk1fl1.tiff"
    assert (loaddata.loc[0, "Metadata_Well"], loaddata.loc[0, "Metadata_Site"]) == ("A01", "1")


def test_mdp_loaddata_command_writes_the_reference_csv(tmp_path):
    from mdp_assets.cli import main

    plate_dir = tmp_path / "BR00121482"
    shutil.copytree(PE2LOADDATA / "Version1" / "images", plate_dir)
    (plate_dir / "platemap.csv").write_text("well_position,treatment\nA01,DMSO\n")
    write_manifest(plate_dir, barcode="BR00121482", origin="internal", platemap="platemap.csv",
                   naming_scheme="phenix", expected_image_count=6)
    output = tmp_path / "out" / "load_data.csv"
    code = main(["loaddata", str(plate_dir), "-o", str(output), "--path-name", "tests/data/Version1/images/",
                 "--pe2loaddata-config", str(PE2LOADDATA / "Version1" / "config_v1.yml")])
    assert code == 0
    assert output.read_text() == (PE2LOADDATA / "Version1" / "load_data_version1.csv").read_text()


@pytest.mark.parametrize("version", [1, 5, 7])
def test_index_acquisition_metadata_in_units_as_the_xml_writes_them(version):
    """Every Harmony version's index: pixel size (metres -> µm), exposure (s -> ms), objective, AbsTime, each
    image's value read here from the XML itself (Harmony 6+ states channel values once, in Maps/Map/Entry)."""
    import xml.etree.ElementTree as ET

    from mdp_assets.plates.harmony import acquisition_metadata

    path = find_index_file(PE2LOADDATA / f"Version{version}" / "images")
    _, images = read_harmony_index(path)
    ours = acquisition_metadata(images).set_index("file_name")
    local = lambda element: element.tag.rsplit("}", 1)[-1]  # noqa: E731
    root = ET.parse(path).getroot()
    entries = {e.get("ChannelID"): {local(c): c for c in e} for e in root.iter()
               if local(e) == "Entry" and e.get("ChannelID")}
    for image in (e for e in root.iter() if local(e) == "Image" and e.get("Version")):
        fields = {**entries.get(next(c.text for c in image if local(c) == "ChannelID"), {}),
                  **{local(c): c for c in image}}
        row = ours.loc[fields["URL"].text]
        assert fields["ImageResolutionX"].get("Unit") == "m" and fields["ExposureTime"].get("Unit") == "s"
        assert row["Metadata_PhysicalSizeX_um"] == pytest.approx(float(fields["ImageResolutionX"].text) * 1e6)
        assert row["Metadata_ExposureTime_ms"] == pytest.approx(float(fields["ExposureTime"].text) * 1e3)
        assert row["Metadata_ObjectiveMagnification"] == float(fields["ObjectiveMagnification"].text)
        assert row["Metadata_ObjectiveNA"] == float(fields["ObjectiveNA"].text)
        assert row["Metadata_AcquisitionTime"] == fields["AbsTime"].text
    if version == 7:
        assert ours["Metadata_PhysicalSizeX_um"].iloc[0] == pytest.approx(0.296688132474701)
