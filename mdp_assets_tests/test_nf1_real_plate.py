"""The real NF1 plate: its naming scheme, its real platemap, and annotations reaching single cells."""

import dagster as dg
import pandas as pd
import pytest

from mdp_assets_tests.conftest import defs_for, stored

pytestmark = pytest.mark.slow

NULL_WELLS = {"B07", "D07", "F07", "H12"}


def _materialize(storage, instance, plate, *names):
    defs = defs_for(storage)
    instance.add_dynamic_partitions("plates", [plate])
    job = defs.resolve_job_def("plate_job")
    result = job.execute_in_process(
        instance=instance, partition_key=plate, op_selection=list(names)
    )
    assert result.success
    return defs


def _table(storage, asset, plate) -> pd.DataFrame:
    return pd.read_parquet(stored(storage, asset, plate) / "table.parquet")


def test_nf1_raw_images_join_the_real_platemap(storage, instance, nf1_plate):
    _materialize(storage, instance, nf1_plate, "raw_images")
    raw = _table(storage, "raw_images", nf1_plate)
    assert len(raw) == 15
    assert set(raw["Metadata_Channel"]) == {"DAPI", "GFP", "RFP"}
    genotype = raw.drop_duplicates("Metadata_Well").set_index("Metadata_Well")["Metadata_genotype"]
    assert {w for w, g in genotype.items() if g == "Null"} == NULL_WELLS
    assert genotype["D06"] == "WT"
    row = raw.set_index("file_name").loc["B7_01_1_3_DAPI_001.tif"]
    assert (row["Metadata_Well"], row["Metadata_Site"], row["width"], row["height"], row["dtype"]) == ("B07", 3, 1224, 904, "uint16")
    assert len(row.sha256) == 64 and row.bytes > 0 and row.uri.startswith("file://")


def test_nf1_annotations_reach_single_cell_features(storage, instance, nf1_plate):
    levels = ["raw_images", "image_qc", "illumination_functions", "corrected_images", "segmentation_masks",
              "single_cell_features"]
    _materialize(storage, instance, nf1_plate, *levels)
    cells = _table(storage, "single_cell_features", nf1_plate)
    assert set(cells["Metadata_Well"]) == {"B07", "D06", "D07", "F07", "H12"}
    per_well = cells.groupby("Metadata_Well")["Metadata_genotype"].agg(set)
    for well in NULL_WELLS:
        assert per_well[well] == {"Null"}
    assert per_well["D06"] == {"WT"}
    # CellProfiler found 16 to 29 nuclei per site on these images; the built-in engine is in that range.
    counts = cells.groupby("Metadata_Well").size()
    assert counts.between(10, 45).all(), counts.to_dict()
    for column in ["Metadata_Plate", "Metadata_Site", "Metadata_ObjectNumber", "Metadata_Origin",
                   "Metadata_Perturbation", "Nuclei_AreaShape_Area", "Cells_Intensity_MeanIntensity_RFP",
                   "Cytoplasm_Intensity_MeanIntensity_GFP"]:
        assert column in cells.columns, column
    assert (cells["Cells_AreaShape_Area"] >= cells["Nuclei_AreaShape_Area"]).all()
