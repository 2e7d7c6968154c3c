import pytest

from mdp_assets.errors import MdpError
from mdp_assets.plates.naming import NamingScheme, normalize_well
from mdp_assets.plates.platemap import read_platemap
from mdp_assets_tests.conftest import NF1_IMAGES, NF1_PLATEMAP, REALDATA


def test_phenix_names_of_a_real_plate():
    scheme = NamingScheme("phenix", channel_names={"ch1": "DNA"})
    names = sorted(p.name for p in (REALDATA / "pe2loaddata-phenix" / "Version5" / "images").glob("*.tiff"))
    parsed = [scheme.parse(n) for n in names]
    assert names and all(parsed)
    first = scheme.parse("r03c12f05p02-ch1sk3fk1fl1.tiff")
    assert (first.well, first.site, first.channel, first.z, first.t) == ("C12", 5, "DNA", 2, 3)


def test_nf1_names_of_the_real_plate():
    scheme = NamingScheme("nf1")
    parsed = {p.name: scheme.parse(p.name) for p in NF1_IMAGES.glob("*.tif")}
    assert len(parsed) == 15 and all(parsed.values())
    b7 = parsed["B7_01_1_3_DAPI_001.tif"]
    assert (b7.well, b7.site, b7.channel) == ("B07", 3, "DAPI")
    assert {p.well for p in parsed.values()} == {"B07", "D06", "D07", "F07", "H12"}


def test_imagexpress_and_regex_schemes():
    ixm = NamingScheme("imagexpress", channel_names={"w2": "ER"})
    name = ixm.parse("BR00117010_A01_s3_w2A1B2C3D4-0000-1111-2222-333344445555.tif")
    assert (name.well, name.site, name.channel) == ("A01", 3, "ER")
    custom = NamingScheme("regex", pattern=r"^(?P<well>[A-P]\d+)-(?P<site>\d+)-(?P<channel>\w+)\.tif$")
    assert custom.parse("C5-2-Mito.tif").well == "C05"
    assert custom.parse("notes.txt") is None


def test_bad_well_names():
    with pytest.raises(MdpError):
        normalize_well("Z99")


def test_platemap_with_byte_order_mark(tmp_path):
    source = REALDATA / "nf1-schwann-metadata" / "0.download_data" / "metadata" / "platemap_NF1_plate4.csv"
    assert source.read_bytes().startswith(b"\xef\xbb\xbf")
    platemap = read_platemap(source)
    assert "Metadata_WellRow" in platemap.columns and platemap["Metadata_Well"].iloc[0] == "B02"
    assert all(c.startswith("Metadata_") for c in platemap.columns)


def test_platemap_annotations():
    platemap = read_platemap(NF1_PLATEMAP).set_index("Metadata_Well")
    assert platemap.loc["B07", "Metadata_genotype"] == "Null"
    assert platemap.loc["D06", "Metadata_genotype"] == "WT"


def test_platemap_without_well_column(tmp_path):
    path = tmp_path / "map.csv"
    path.write_text("position,compound\nA1,DMSO\n")
    with pytest.raises(MdpError, match="no well column") as error:
        read_platemap(path)
    assert str(path) in str(error.value)
