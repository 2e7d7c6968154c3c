"""Every compression real instruments and tools write (through imagecodecs): a plate re-saved from the real
Phenix pixels, one well per compression, goes through every level and reads back bit-identical pixels."""

import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile

from mdp_assets.plates.harmony import HARMONY_IMAGE_XML_TAG
from mdp_assets.plates.inventory import PlateFolder, inventory_plate
from mdp_assets.plates.tiff_metadata import read_plane, read_tiff_info
from mdp_assets_tests.conftest import REALDATA, run_plate, table_of, write_manifest

PHENIX_V1 = REALDATA / "pe2loaddata-phenix" / "Version1" / "images"
# (tifffile compression, its arguments for a lossless encoding); one well each, columns 1..8 of row A.
COMPRESSIONS = [
    ("none", None), ("lzw", None), ("adobe_deflate", None), ("packbits", None), ("zstd", None),
    ("jpeg2000", {"level": 0}), ("jpegxr", {"level": 1.0}), ("jpegxl", {"lossless": True}),
]
CHANNELS = {"ch1": "Mito", "ch2": "AGP", "ch3": "RNA", "ch4": "ER", "ch5": "DNA", "ch6": "Brightfield"}


def _resaved_plate(landing, barcode="PHENIX-CODECS"):
    folder = landing / barcode
    folder.mkdir(parents=True)
    for column, (compression, arguments) in enumerate(COMPRESSIONS, start=1):
        for source in sorted(PHENIX_V1.glob("*.tiff")):
            with tifffile.TiffFile(source) as tif:
                pixels = tif.pages[0].asarray()
            target = folder / source.name.replace("r01c01", f"r01c{column:02d}")
            tifffile.imwrite(target, pixels, compression=None if compression == "none" else compression,
                             compressionargs=arguments, metadata=None)
    (folder / "platemap.csv").write_text("well_position,compression\n" + "".join(
        f"A{c:02d},{name}\n" for c, (name, _) in enumerate(COMPRESSIONS, start=1)))
    write_manifest(folder, barcode=barcode, origin="internal", platemap="platemap.csv", naming_scheme="phenix",
                   expected_image_count=6 * len(COMPRESSIONS), channels=CHANNELS, pixel_size_um=0.598)
    return folder


def test_each_compression_reads_back_the_instrument_pixels(tmp_path):
    folder = _resaved_plate(tmp_path)
    for column, (compression, _) in enumerate(COMPRESSIONS, start=1):
        for source in sorted(PHENIX_V1.glob("*.tiff")):
            copy = folder / source.name.replace("r01c01", f"r01c{column:02d}")
            with tifffile.TiffFile(copy) as tif:
                written = tif.pages[0].compression.name
            assert written.lower().replace("_", "") == compression.replace("_", "") or compression == "none"
            np.testing.assert_array_equal(read_plane(copy), read_plane(source))


def test_pixel_size_comes_from_the_manifest_when_no_file_states_it(tmp_path):
    folder = _resaved_plate(tmp_path)
    assert read_tiff_info(next(folder.glob("*.tiff"))).physical_size_x_um is None
    table = inventory_plate(PlateFolder.open(folder))
    assert (table["Metadata_PhysicalSizeX_um"] == 0.598).all()


@pytest.mark.slow
def test_a_plate_in_every_compression_goes_through_every_level(storage, instance):
    folder = _resaved_plate(storage.landing_path)
    result, made, _ = run_plate(storage, instance, folder.name)
    assert result.success and {"single_cell_features", "well_profiles", "well_embeddings"} <= made
    cells = table_of(storage, "single_cell_features", folder.name)
    per_well = cells.groupby("Metadata_compression").size()
    # The same pixels in every well: the same cells, whatever the compression.
    assert len(per_well) == len(COMPRESSIONS) and per_well.nunique() == 1, per_well.to_dict()
    features = [c for c in cells.columns if c.startswith("Nuclei_AreaShape")]
    by_well = [g[features].reset_index(drop=True) for _, g in cells.sort_values("Metadata_ObjectNumber").groupby("Metadata_Well")]
    for other in by_well[1:]:
        pd.testing.assert_frame_equal(other, by_well[0])


def test_harmony_image_xml_gives_metadata_without_the_index(tmp_path):
    """A Phenix folder exported without its Index XML: every value comes from the image's own tag 65500."""
    folder = tmp_path / "BR00121482"
    shutil.copytree(PHENIX_V1, folder)
    (folder / "Index.idx.xml").unlink()
    (folder / "platemap.csv").write_text("well_position\nA01\n")
    write_manifest(folder, barcode="BR00121482", origin="internal", platemap="platemap.csv", naming_scheme="phenix",
                   expected_image_count=6)
    table = inventory_plate(PlateFolder.open(folder)).set_index("file_name")
    hoechst = table.loc["r01c01f01p01-ch5sk1fk1fl1.tiff"]
    with tifffile.TiffFile(PHENIX_V1 / "r01c01f01p01-ch5sk1fk1fl1.tiff") as tif:
        xml = tif.pages[0].tags[HARMONY_IMAGE_XML_TAG].value.decode()
    # What the image's XML writes: AbsTime, the channel's name and exposure, the objective, the camera pixel.
    for written in ["<AbsTime>2021-03-29T20:55:29.518Z</AbsTime>", "<Name>HOECHST 33342</Name>",
                    '<Exposuretime Unit="s">0.01</Exposuretime>', "<Objective>WPlan_Apochromat_20x/1.0_70mm</Objective>",
                    '<PixelSizeX Unit="m">0.0000065</PixelSizeX>', "<BinningX>2</BinningX>",
                    '<Magnification Unit="">1.087</Magnification>']:
        assert written in xml, written
    assert hoechst["Metadata_Channel"] == "HOECHST_33342"  # as CellProfiler can name it
    assert hoechst["Metadata_AcquisitionTime"] == "2021-03-29T20:55:29.518Z"
    assert hoechst["Metadata_ExposureTime_ms"] == pytest.approx(10.0)
    assert (hoechst["Metadata_ObjectiveMagnification"], hoechst["Metadata_ObjectiveNA"]) == (20.0, 1.0)
    # 6.5 µm camera pixel x binning 2 / (20x objective x 1.087 instrument magnification)
    assert hoechst["Metadata_PhysicalSizeX_um"] == pytest.approx(6.5 * 2 / (20 * 1.087), rel=1e-12)
    # The baseline resolution tag says 155 pixels per cm (64.5 µm): never taken as the sample's pixel size.
    assert table["Metadata_PhysicalSizeX_um"].max() < 1
