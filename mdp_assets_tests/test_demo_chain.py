"""The whole chain, in process, on one small demo plate; then a second plate and the consensus."""

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Plate, Reader

from mdp_assets_tests.conftest import defs_for, stored
from mdp_assets.services.instance_status import stale_assets
from mdp_assets.plates.demo import DemoPlateSpec, write_demo_plate
from mdp_assets.plates.inventory import plate_fingerprint
from mdp_assets.plates.tiff_metadata import read_tiff_info

pytestmark = pytest.mark.slow

SPEC = dict(rows="BC", columns=(2, 3, 4, 5), sites_per_well=1, image_size=192, cells_per_site=16)


def _run_plate(defs, instance, storage, barcode, seed):
    write_demo_plate(storage.landing_path, DemoPlateSpec(barcode=barcode, seed=seed, **SPEC))
    instance.add_dynamic_partitions("plates", [barcode])
    result = defs.resolve_job_def("plate_job").execute_in_process(instance=instance, partition_key=barcode)
    assert result.success
    return result


def _png_in(markdown: str) -> bytes:
    """The PNG a markdown metadata value embeds as a base64 data URI."""
    import base64
    import re

    return base64.b64decode(re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", markdown).group(1))


def _stored(storage, asset, plate="DEMO-T1"):
    return stored(storage, asset, plate)


def test_every_level_of_a_demo_plate(storage, instance):
    defs = defs_for(storage)
    result = _run_plate(defs, instance, storage, "DEMO-T1", 1)
    materialized = {e.materialization.asset_key.to_user_string(): e.materialization for e in result.get_asset_materialization_events()}
    assert len(materialized) == 14
    policy = storage.policy()
    for name, event in materialized.items():
        meta = {k: v.value for k, v in event.metadata.items()}
        assert meta["tier"] == policy.stages(name)[0].tier and meta["bytes"] > 0 and len(meta["sha256"]) == 64, name
        assert meta["uri"].startswith("file://") and ("rows" in meta or meta["files"] > 0), name
        assert meta["uri"] == stored(storage, name, "DEMO-T1").as_uri()
    assert materialized["well_profiles"].metadata["tier"].value == "profiles-git"
    made_from = materialized["image_qc"].metadata["made_from"].value  # provenance a person reads in the UI
    assert made_from.startswith("- raw_images of DEMO-T1: data version ") and "file://" in made_from
    assert materialized["image_qc"].metadata["made_by_run"].value == result.run_id
    assert materialized["corrected_images"].metadata["tier"].value == "deletion"

    raw = pd.read_parquet(_stored(storage, "raw_images") / "table.parquet")
    assert len(raw) == 8 * 5 and set(raw["Metadata_Channel"]) == {"DNA", "ER", "RNA", "AGP", "Mito"}
    assert raw["Metadata_PhysicalSizeX_um"].eq(0.65).all() and raw["Metadata_ObjectiveMagnification"].eq(20).all()
    assert raw["Metadata_ExposureTime_ms"].notna().all() and raw["Metadata_AcquisitionTime"].notna().all()

    qc = pd.read_parquet(_stored(storage, "image_qc") / "table.parquet")
    assert qc["qc_pass"].all() and len(qc) == 40
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["qc_pass_fraction"].passed and checks["qc_pass_fraction"].metadata["images"].value == 40

    illumination = np.load(_stored(storage, "illumination_functions") / "DNA.npy")
    assert illumination.shape == (192, 192) and illumination.min() >= 1.0

    corrected = read_tiff_info(_stored(storage, "corrected_images") / "B02_s01.ome.tiff")
    assert corrected.shape == (5, 192, 192) and corrected.channel_names == ["AGP", "DNA", "ER", "Mito", "RNA"]

    cells = pd.read_parquet(_stored(storage, "single_cell_features") / "table.parquet")
    assert 8 * 12 <= len(cells) <= 8 * 16
    required = ["Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_ObjectNumber", "Metadata_treatment",
                "Metadata_control_type", "Metadata_PhysicalSizeX_um", "Metadata_AcquisitionTime"]
    assert all(c in cells.columns for c in required)
    meta = [c for c in cells.columns if c.startswith("Metadata_")]
    assert cells.columns[: len(meta)].tolist() == meta, "Metadata_ columns come first"
    assert cells["Metadata_treatment"].notna().all()
    for compartment in ("Nuclei", "Cells", "Cytoplasm"):
        assert f"{compartment}_Intensity_MeanIntensity_Mito" in cells.columns

    crops = zarr.open_array(str(_stored(storage, "single_cell_crops") / "crops.zarr"), mode="r")
    index = pd.read_parquet(_stored(storage, "single_cell_crops") / "index.parquet")
    assert crops.shape == (len(cells), 6, 48, 48) and len(index) == len(cells)
    assert crops.attrs["channel_names"][-1] == "CellMask" and float(crops[0, -1].max()) == 1.0

    cell_qc = pd.read_parquet(_stored(storage, "single_cell_qc") / "table.parquet")
    assert len(cell_qc) == len(cells) and (cell_qc["Metadata_ObjectNumber"] == cells["Metadata_ObjectNumber"]).all()
    flagged = int(cell_qc["Metadata_cqc_is_outlier"].sum())
    qc_meta = materialized["single_cell_qc"].metadata
    assert qc_meta["flagged_cells"].value == flagged and checks["flagged_fraction"].passed
    assert materialized["well_profiles"].metadata["cells_left_out_by_qc"].value == flagged
    kept = len(cells) - flagged

    quality = pd.read_parquet(_stored(storage, "profile_quality") / "table.parquet")
    assert sorted(quality["Metadata_Perturbation"]) == ["compound_A", "compound_B", "compound_C"]
    assert quality["replicate_wells"].eq(2).all() and quality["control_wells"].eq(2).all()
    quality_meta = {k: v.value for k, v in materialized["profile_quality"].metadata.items()}
    assert quality_meta["mean_average_precision"] == pytest.approx(quality["mean_average_precision"].mean())
    assert 0 <= quality_meta["fraction_retrieved"] <= 1 and checks["min_map"].passed
    # Pictures the UI renders: mAP per treatment, and crops of the cells QC flagged beside cells it kept.
    for level, key in [("profile_quality", "map_per_treatment"), ("single_cell_crops", "flagged_and_kept_cells"),
                       ("well_embeddings", "wells_by_treatment"), ("segmentation_masks", "segmentation"),
                       ("well_profiles", "plate_map_Cells_AreaShape_Area_figure")]:
        png = _png_in(materialized[level].metadata[key].value)
        assert png.startswith(b"\x89PNG") and len(png) > 2000, (level, key)

    for level, rows in [("single_cell_profiles", kept), ("well_profiles", 8), ("single_cell_embeddings", kept),
                        ("well_embeddings", 8)]:
        table = pd.read_parquet(_stored(storage, level) / "table.parquet")
        assert len(table) == rows, level
        meta = [c for c in table.columns if c.startswith("Metadata_")]
        assert table.columns[: len(meta)].tolist() == meta, f"{level}: Metadata_ columns come first"
        assert {"Metadata_Plate", "Metadata_Well", "Metadata_treatment"} <= set(meta), level

    # The plate as OME-Zarr, read back with ome-zarr's reader: its 8 wells, one field each, labels under each.
    ome = {k: v.value for k, v in materialized["ome_zarr_plate"].metadata.items()}
    assert (ome["wells"], ome["fields"], ome["fields_with_labels"]) == (8, 8, 8) and ome["pixel_size_um"] == 0.65
    plate = next(Reader(parse_url(str(_stored(storage, "ome_zarr_plate") / "plate.ome.zarr")))()).first(Plate)
    assert sorted(plate.well_paths) == [f"{r}/{c}" for r in "BC" for c in (2, 3, 4, 5)]
    field, *labels = Reader(parse_url(str(_stored(storage, "ome_zarr_plate") / "plate.ome.zarr/B/2/0")))()
    assert field.metadata["channel_names"] == ["AGP", "DNA", "ER", "Mito", "RNA"] and field.data[0].shape == (5, 192, 192)
    assert {n.metadata["name"] for n in labels if n.first(Label)} == {"Nuclei", "Cells"}

    wells = pd.read_parquet(_stored(storage, "well_profiles") / "table.parquet")
    controls = wells[wells["Metadata_treatment"] == "DMSO"]
    features = [c for c in wells.columns if not c.startswith("Metadata_")]
    assert np.allclose(controls[features].mean(), 0, atol=1e-9), "well profiles are normalized to DMSO wells"


def test_rerun_detection_and_consensus(storage, instance):
    defs = defs_for(storage)
    _run_plate(defs, instance, storage, "DEMO-T1", 1)
    graph = defs.resolve_asset_graph()
    keys = [k for k in graph.toposorted_asset_keys if graph.get(k).partitions_def is not None]
    fingerprint = plate_fingerprint(storage.plate_folder("DEMO-T1"))
    assert stale_assets(instance, defs, keys, "DEMO-T1", fingerprint) == []
    assert stale_assets(instance, defs, keys, "DEMO-T1", "changed") == keys

    _run_plate(defs, instance, storage, "DEMO-T2", 2)
    result = defs.resolve_job_def("consensus_job").execute_in_process(instance=instance)
    assert result.success
    consensus = pd.read_parquet(stored(storage, "consensus_profiles", None) / "table.parquet")
    assert sorted(consensus["Metadata_Perturbation"]) == ["DMSO", "compound_A", "compound_B", "compound_C"]
    assert (consensus["Metadata_Plate_Count"] == 2).all()
    features = [c for c in consensus.columns if not c.startswith("Metadata_")]
    dmso = consensus.set_index("Metadata_Perturbation").loc["DMSO", features].to_numpy(dtype=float)
    for compound in ("compound_A", "compound_B", "compound_C"):
        profile = consensus.set_index("Metadata_Perturbation").loc[compound, features].to_numpy(dtype=float)
        assert np.linalg.norm(profile - dmso) > 3, f"{compound} is distinguishable from DMSO"
    # Profile quality across plates: both plates' wells together, each treatment against both plates' DMSO.
    meta = result.asset_materializations_for_node("consensus_profiles")[0].metadata
    assert meta["across_plates_quality"].value == "computed"
    assert meta["across_plates_treatments"].value == 3 and meta["across_plates_fraction_retrieved"].value >= 2 / 3
    for compound in ("compound_A", "compound_B", "compound_C"):
        assert f"- {compound}: mAP " in meta["across_plates_per_treatment"].value
    assert _png_in(meta["replicate_correlation"].value).startswith(b"\x89PNG")
