"""Images for the long term: a real Opera Phenix plate written by mdp as an OME-Zarr HCS plate, read back with
ome-zarr's own reader (wells, fields, channels, pixel sizes, pixels, labels); the single-cell embeddings as
AnnData read back with anndata; the level made only when the storage policy names it."""

import shutil
from pathlib import Path

import anndata
import dagster as dg
import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Multiscales, Plate, Reader, Well

from mdp_assets.plates.inventory import PlateFolder, inventory_plate
from mdp_assets.science.embeddings import H5AD_FILE, write_h5ad
from mdp_assets.science.image_store import read_stack
from mdp_assets.science.ome_zarr import PLATE_STORE, plate_fields, write_hcs_plate
from mdp_assets.services.registration import register_plate
from mdp_assets.storage.policy import shipped_policy
from mdp_assets_tests.conftest import NF1_IMAGES, REALDATA, defs_for, make_deployment, stored, write_manifest

PHENIX = REALDATA / "pe2loaddata-phenix" / "Version1" / "images"
BARCODE = "BR00121482"
CHANNELS = {"HOECHST 33342": "DNA", "Alexa 488": "ER", "488 long": "RNA", "Alexa 568": "AGP", "Alexa 647": "Mito"}
PIXEL_SIZE_UM = 0.597976  # the Harmony index's ImageResolutionX, 5.97976e-07 m


def _phenix_plate(storage) -> str:
    folder = storage.landing_path / BARCODE
    shutil.copytree(PHENIX, folder / "Images")
    (folder / "platemap.csv").write_text("well_position,treatment\nA01,DMSO\n")
    write_manifest(folder, barcode=BARCODE, origin="public", platemap="platemap.csv", naming_scheme="phenix",
                   images_subdir="Images", expected_image_count=6, channels=CHANNELS, nuclei_channel="DNA",
                   treatment_column="treatment")
    return BARCODE


def _nodes(path: Path) -> list:
    return list(Reader(parse_url(str(path)))())


@pytest.mark.slow
def test_real_phenix_plate_as_ome_zarr_and_its_embeddings_as_anndata(storage, instance):
    barcode = _phenix_plate(storage)
    register_plate(storage, barcode)
    instance.add_dynamic_partitions("plates", [barcode])
    result = defs_for(storage).resolve_job_def("plate_job").execute_in_process(instance=instance, partition_key=barcode)
    assert result.success
    events = {e.materialization.asset_key.to_user_string(): e.materialization
              for e in result.get_asset_materialization_events()}
    meta = {k: v.value for k, v in events["ome_zarr_plate"].metadata.items()}
    assert meta["tier"] == storage.policy().stages("ome_zarr_plate")[0].tier == "internal-drive"
    assert (meta["wells"], meta["fields"], meta["fields_with_labels"]) == (1, 1, 1) and meta["bytes"] > 1e6
    assert meta["channels"] == "AGP, Brightfield, DNA, ER, Mito, RNA" and meta["labels"] == "Cells, Nuclei"
    assert meta["pixel_size_um"] == pytest.approx(PIXEL_SIZE_UM, rel=1e-6)

    store = stored(storage, "ome_zarr_plate", barcode) / PLATE_STORE
    plate_node = _nodes(store)[0]
    plate = plate_node.first(Plate)
    assert plate is not None and plate.well_paths == ["A/1"] and plate.row_names == ["A"] and plate.col_names == ["1"]
    assert plate.plate_data["name"] == barcode and plate.plate_data["field_count"] == 1
    well = _nodes(store / "A" / "1")[0].first(Well)
    assert [image["path"] for image in well.well_data["images"]] == ["0"]

    image, *labels = _nodes(store / "A" / "1" / "0")
    assert image.first(Multiscales) is not None
    assert [a["name"] for a in image.metadata["axes"]] == ["c", "y", "x"]
    assert image.metadata["channel_names"] == ["AGP", "Brightfield", "DNA", "ER", "Mito", "RNA"]
    scale = image.metadata["coordinateTransformations"][0][0]["scale"]
    assert scale[1:] == pytest.approx([PIXEL_SIZE_UM] * 2, rel=1e-6)
    assert [a.get("unit") for a in image.metadata["axes"][1:]] == ["micrometer", "micrometer"]
    assert len(image.data) == 3 and image.data[1].shape == (6, 540, 540)  # 1080 px fields: a pyramid of three

    raw = pd.read_parquet(stored(storage, "raw_images", barcode) / "table.parquet")
    pixels = image.data[0].compute()
    for index, channel in enumerate(image.metadata["channel_names"]):
        file_name = raw.loc[raw["Metadata_Channel"] == channel, "file_name"].item()
        source = tifffile.imread(PHENIX / file_name)
        assert pixels.dtype == source.dtype == np.uint16
        assert np.array_equal(pixels[index], source), channel

    masks_dir = stored(storage, "segmentation_masks", barcode)
    sites = pd.read_parquet(masks_dir / "sites.parquet")
    masks, mask_names = read_stack(masks_dir / sites["file_name"].item())
    found = {node.metadata["name"]: node for node in labels if node.first(Label) is not None}
    assert set(found) == set(mask_names) == {"Nuclei", "Cells"}
    for index, name in enumerate(mask_names):
        assert np.array_equal(found[name].data[0].compute(), masks[index]), name
        assert found[name].data[0].max().compute() == sites["Count_Nuclei"].item() if name == "Nuclei" else True

    # The single-cell embeddings as AnnData: X the embedding, obs the Metadata_ columns, row for row.
    embeddings_dir = stored(storage, "single_cell_embeddings", barcode)
    table = pd.read_parquet(embeddings_dir / "table.parquet")
    adata = anndata.read_h5ad(embeddings_dir / H5AD_FILE)
    components = [c for c in table.columns if c.startswith("Embedding_")]
    metadata = [c for c in table.columns if c.startswith("Metadata_")]
    assert adata.shape == (len(table), len(components)) and len(table) > 0
    assert list(adata.var_names) == components and list(adata.obs.columns) == metadata
    assert np.array_equal(adata.X, table[components].to_numpy())
    assert list(adata.obs_names) == [f"{w}_s{s}_{o}" for w, s, o in
                                     zip(table["Metadata_Well"], table["Metadata_Site"], table["Metadata_ObjectNumber"])]
    for column in metadata:
        expected = table[column]
        got = adata.obs[column].reset_index(drop=True)
        if pd.api.types.is_numeric_dtype(expected):
            assert np.allclose(got.to_numpy(float), expected.to_numpy(float), equal_nan=True), column
        else:
            assert [None if pd.isna(v) else str(v) for v in got] == \
                   [None if pd.isna(v) else str(v) for v in expected], column
    assert adata.uns["plate"] == barcode
    assert np.allclose(adata.uns["pca"]["variance_ratio"], events["single_cell_embeddings"].metadata[
        "explained_variance_ratio"].value, atol=1e-6)


def test_real_nf1_plate_wells_and_fields(storage, nf1_plate, tmp_path):
    """Several wells and sites, a plate whose images state no pixel size: scale 1 and no unit, never invented."""
    inventory = inventory_plate(PlateFolder.open(storage.landing_path / nf1_plate))
    assert inventory["Metadata_PhysicalSizeX_um"].isna().all()  # the NF1 TIFFs state no pixel size
    summary = write_hcs_plate(tmp_path / PLATE_STORE, nf1_plate, plate_fields(inventory), "DAPI")
    sites = inventory[["Metadata_Well", "Metadata_Site"]].drop_duplicates()
    plate = _nodes(tmp_path / PLATE_STORE)[0].first(Plate)
    expected_wells = sorted(f"{w[0]}/{int(w[1:])}" for w in sites["Metadata_Well"].unique())
    assert sorted(plate.well_paths) == expected_wells and summary.fields == len(sites)
    for well, group in sites.groupby("Metadata_Well"):
        path = tmp_path / PLATE_STORE / well[0] / str(int(well[1:]))
        images = _nodes(path)[0].first(Well).well_data["images"]
        assert len(images) == len(group)
        for index, site in enumerate(sorted(group["Metadata_Site"])):
            node = _nodes(path / str(index))[0]
            assert node.metadata["channel_names"] == sorted(inventory["Metadata_Channel"].unique())
            rows = inventory[(inventory["Metadata_Well"] == well) & (inventory["Metadata_Site"] == site)]
            pixels = node.data[0].compute()
            for c, channel in enumerate(node.metadata["channel_names"]):
                source = tifffile.imread(NF1_IMAGES / rows.loc[rows["Metadata_Channel"] == channel, "file_name"].item())
                assert np.array_equal(pixels[c], source), (well, site, channel)
            assert node.metadata["coordinateTransformations"][0][0]["scale"] == [1.0, 1.0, 1.0]
            assert all("unit" not in axis for axis in node.metadata["axes"])
    assert summary.labels == []  # no masks given: no labels


def test_a_policy_without_the_level_does_not_make_it(tmp_path):
    policy = yaml.safe_load(shipped_policy("local").read_text())
    del policy["levels"]["ome_zarr_plate"]
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    from mdp_assets.definitions import build_definitions

    without = build_definitions(make_deployment(tmp_path / "without", storage={"policy": str(path)}))
    keys = {k.to_user_string() for k in without.resolve_asset_graph().get_all_asset_keys()}
    assert "ome_zarr_plate" not in keys and "segmentation_masks" in keys
    assert dg.AssetKey("ome_zarr_plate") not in without.resolve_job_def("plate_job").asset_layer.asset_graph.get_all_asset_keys()
    shipped = build_definitions(make_deployment(tmp_path / "shipped"))
    assert dg.AssetKey("ome_zarr_plate") in shipped.resolve_asset_graph().get_all_asset_keys()


def test_h5ad_keeps_missing_values_categories_and_numbers(tmp_path):
    table = pd.DataFrame({
        "Metadata_Plate": ["P1"] * 4, "Metadata_Well": ["B02", "B02", "C03", "C03"], "Metadata_Site": [1, 1, 2, 2],
        "Metadata_ObjectNumber": [1, 2, 1, 2], "Metadata_treatment": ["DMSO", None, "cmpd", "DMSO"],
        "Metadata_dose": [0.0, np.nan, 1.5, 0.0], "Metadata_flag": [True, False, True, True],
        "Embedding_PC1": [0.1, -0.2, 0.3, -0.2], "Embedding_PC2": [1.0, 2.0, -3.0, 0.0],
    })
    table.to_parquet(tmp_path / "table.parquet", index=False)
    assert write_h5ad(tmp_path / "table.parquet", tmp_path / H5AD_FILE, {"plate": "P1"}) == (4, 2)
    adata = anndata.read_h5ad(tmp_path / H5AD_FILE)
    assert list(adata.obs_names) == ["B02_s1_1", "B02_s1_2", "C03_s2_1", "C03_s2_2"]
    assert list(adata.var_names) == ["Embedding_PC1", "Embedding_PC2"]
    assert np.array_equal(adata.X, table[["Embedding_PC1", "Embedding_PC2"]].to_numpy())
    assert isinstance(adata.obs["Metadata_treatment"].dtype, pd.CategoricalDtype)
    assert adata.obs["Metadata_treatment"].isna().tolist() == [False, True, False, False]
    assert adata.obs["Metadata_dose"].isna().tolist() == [False, True, False, False]
    assert adata.obs["Metadata_flag"].tolist() == [True, False, True, True]
    assert adata.obs["Metadata_Site"].tolist() == [1, 1, 2, 2]
