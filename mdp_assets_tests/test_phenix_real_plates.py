"""Real Opera Phenix plates (LZW-compressed TIFFs with Harmony XML) through every level, with the metadata
their XML states on the rows: pixel size, channel names, objective, exposure and acquisition time."""

import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import dagster as dg

import pandas as pd
import pytest

from mdp_assets.config import StepSettings
from mdp_assets.plates.naming import channel_identifier
from mdp_assets.services.registration import register_plate
from mdp_assets.storage.resource import MdpStorage
from mdp_assets_tests.conftest import REALDATA, defs_for, make_deployment, run_plate, stored, write_manifest

pytestmark = pytest.mark.slow

PE2LOADDATA = REALDATA / "pe2loaddata-phenix"
# Harmony 4-5 (Index.idx.xml) plates with their images; the Harmony 7 plate's images are not in the snapshot.
PLATES = {
    1: ("BR00121482", {"HOECHST 33342": "DNA", "Alexa 488": "ER", "488 long": "RNA", "Alexa 568": "AGP",
                       "Alexa 647": "Mito"}, "DNA"),
    5: ("BR00122249", {"Alexa 488": "ER", "Alexa 568": "AGP", "Alexa 647": "Mito", "488 650": "RNA"}, "Mito"),
}
LEVELS = ["raw_images", "image_qc", "illumination_functions", "corrected_images", "segmentation_masks",
          "single_cell_features", "single_cell_crops", "single_cell_profiles", "well_profiles",
          "single_cell_embeddings", "well_embeddings"]


def _phenix_plate(storage, version: int) -> str:
    barcode, channels, nuclei = PLATES[version]
    folder = storage.landing_path / barcode
    shutil.copytree(PE2LOADDATA / f"Version{version}" / "images", folder / "Images")
    (folder / "platemap.csv").write_text("well_position,treatment\nA01,DMSO\n")
    write_manifest(folder, barcode=barcode, origin="public", platemap="platemap.csv", naming_scheme="phenix",
                   images_subdir="Images", expected_image_count=6, channels=channels, nuclei_channel=nuclei,
                   treatment_column="treatment", annotations={"time_point": 24, "batch": "pe2loaddata"})
    return barcode


def _index_values(path) -> dict[str, dict[str, str]]:
    """Per image file, the fields and units its Harmony index writes (read here independently of mdp)."""
    values = {}
    for image in ET.parse(path).getroot().iter():
        if image.tag.endswith("}Image") and image.get("Version"):
            fields = {child.tag.rsplit("}", 1)[-1]: (child.text or "").strip() for child in image}
            fields.update({child.tag.rsplit("}", 1)[-1] + "_unit": child.get("Unit") for child in image if child.get("Unit")})
            values[fields["URL"]] = fields
    return values


@pytest.mark.parametrize("version", sorted(PLATES))
def test_real_phenix_plate_reaches_well_embeddings_with_its_xml_metadata(storage, instance, version):
    barcode = _phenix_plate(storage, version)
    result, made, _ = run_plate(storage, instance, barcode)
    assert result.success and set(LEVELS) <= made, set(LEVELS) - made

    raw = pd.read_parquet(stored(storage, "raw_images", barcode) / "table.parquet").set_index("file_name")
    written = _index_values(PE2LOADDATA / f"Version{version}" / "images" / "Index.idx.xml")
    assert set(raw.index) == set(written)
    for name, values in written.items():
        row = raw.loc[name]
        assert values["ImageResolutionX_unit"] == "m"
        assert row["Metadata_PhysicalSizeX_um"] == pytest.approx(float(values["ImageResolutionX"]) * 1e6, rel=1e-12)
        assert row["Metadata_AcquisitionTime"] == values["AbsTime"]
        assert row["Metadata_ObjectiveMagnification"] == float(values["ObjectiveMagnification"])
        assert row["Metadata_ObjectiveNA"] == float(values["ObjectiveNA"])
        assert row["Metadata_ExposureTime_ms"] == pytest.approx(float(values["ExposureTime"]) * 1e3)
        channel = values["ChannelName"]
        assert row["Metadata_Channel"] == PLATES[version][1].get(channel, channel_identifier(channel))
    assert raw["Metadata_PhysicalSizeX_um"].tolist() == pytest.approx([0.597976] * 6, rel=1e-6)
    assert (raw["Metadata_Plate"] == barcode).all() and (raw["Metadata_time_point"] == "24").all()

    cells = pd.read_parquet(stored(storage, "single_cell_features", barcode) / "table.parquet")
    assert len(cells) > 0
    assert cells["Metadata_PhysicalSizeX_um"].tolist() == pytest.approx([0.59797608095667] * len(cells))
    assert set(cells["Metadata_batch"]) == {"pe2loaddata"} and set(cells["Metadata_Plate"]) == {barcode}
    assert cells["Metadata_AcquisitionTime"].notna().all()


CELLPROFILER = Path(__file__).resolve().parents[1] / ".mdp" / "cellprofiler"


@pytest.mark.parametrize("version, engine", [(1, "cellprofiler 4.2.8.1"), (5, "builtin")])
def test_the_default_engine_choice_takes_a_real_phenix_plate_to_well_embeddings(tmp_path, version, engine):
    """`engine.kind: auto` as shipped: CellProfiler's Cell Painting pipeline for the plate that has its five
    channels (Harmony 4), the built-in engine, with the reason, for the one without a DNA stain (Harmony 5)."""
    if not (CELLPROFILER / "bin" / "python").exists():
        if os.environ.get("CI"):
            pytest.fail(f"CI must build CellProfiler first (make cellprofiler); nothing at {CELLPROFILER}")
        pytest.skip("CellProfiler environment not built (make cellprofiler)")
    deployment = make_deployment(tmp_path, engine={"kind": "auto", "cellprofiler": {"environment": str(CELLPROFILER),
                                                                                     "workers": 2}})
    storage = MdpStorage.from_deployment(deployment)
    barcode = _phenix_plate(storage, version)
    register_plate(storage, barcode, settings=StepSettings.from_config(deployment.config))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("plates", [barcode])
        result = defs_for(storage).resolve_job_def("plate_job").execute_in_process(instance=instance,
                                                                                   partition_key=barcode)
        assert result.success
        masks = result.asset_materializations_for_node("segmentation_masks")[0].metadata
        made = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "well_embeddings" in made
    assert masks["engine"].value == engine
    if engine == "builtin":
        assert "reads channels ['DNA'] the plate does not have" in masks["engine_note"].value
    cells = pd.read_parquet(stored(storage, "single_cell_features", barcode) / "table.parquet")
    assert len(cells) > 0 and (cells["Metadata_Plate"] == barcode).all()
