import shutil

import pytest

from mdp_assets.errors import MdpError
from mdp_assets.plates.tiff_metadata import read_plane, read_tiff_info
from mdp_assets_tests.conftest import NF1_IMAGES, OME_SAMPLES


@pytest.mark.parametrize(
    "name, axes, shape, channels",
    [
        ("multi-channel-z-series.ome.tiff", "CZYX", (3, 5, 167, 439), 3),
        ("multi-channel-time-series.ome.tiff", "TCYX", (7, 3, 167, 439), 3),
        ("4D-series.ome.tiff", "TZYX", (7, 5, 167, 439), 1),
        ("single-channel.ome.tiff", "YX", (167, 439), 1),
    ],
)
def test_ome_xml_gives_channels_and_dimension_order(name, axes, shape, channels):
    info = read_tiff_info(OME_SAMPLES / name)
    assert info.is_ome
    assert info.dimension_order == "XYZCT"
    assert info.axes == axes and info.shape == shape
    # These samples give channels IDs but no names: the ID stands in, in order.
    assert info.channel_names == [f"Channel:0:{i}" for i in range(channels)]
    assert info.dtype == "int8" and (info.width, info.height) == (439, 167)


def test_plain_tiff_has_no_invented_metadata():
    info = read_tiff_info(NF1_IMAGES / "B7_01_1_3_DAPI_001.tif")
    assert (info.width, info.height, info.dtype, info.is_ome) == (1224, 904, "uint16", False)
    assert info.channel_names == [] and info.physical_size_x_um is None and info.objective is None


def test_unreadable_tiff_names_the_file(tmp_path):
    bad = tmp_path / "r01c01f01p01-ch1sk1fk1fl1.tiff"
    bad.write_bytes(b"this is not a TIFF at all")
    with pytest.raises(MdpError, match="unreadable TIFF") as error:
        read_tiff_info(bad)
    assert str(bad) in str(error.value)


def test_truncated_tiff_is_caught_before_pixels_are_used(tmp_path):
    source = NF1_IMAGES / "B7_01_1_3_DAPI_001.tif"
    truncated = tmp_path / source.name
    shutil.copy(source, truncated)
    with open(truncated, "r+b") as handle:
        handle.truncate(source.stat().st_size // 2)
    with pytest.raises(MdpError, match="truncated TIFF") as error:
        read_tiff_info(truncated)
    assert str(truncated) in str(error.value)
    with pytest.raises(MdpError, match="truncated TIFF"):
        read_plane(truncated)
