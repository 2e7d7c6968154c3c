import dagster as dg

from mdp_assets.config import load_deployment
from mdp_assets.definitions import build_definitions
from mdp_assets_tests.conftest import REPOSITORY

defs = build_definitions(load_deployment(REPOSITORY / "mdp.yaml"))

LEVEL_ASSETS = [
    "raw_images",
    "image_qc",
    "illumination_functions",
    "corrected_images",
    "segmentation_masks",
    "single_cell_features",
    "single_cell_crops",
    "single_cell_qc",
    "single_cell_profiles",
    "well_profiles",
    "profile_quality",
    "single_cell_embeddings",
    "well_embeddings",
    "ome_zarr_plate",
]


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)


def test_every_level_is_an_asset_partitioned_by_plates():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {*LEVEL_ASSETS, "consensus_profiles", "storage_costs"}
    for name in LEVEL_ASSETS:
        partitions = graph.get(dg.AssetKey(name)).partitions_def
        assert isinstance(partitions, dg.DynamicPartitionsDefinition) and partitions.name == "plates", name
    assert graph.get(dg.AssetKey("consensus_profiles")).partitions_def is None
    assert graph.get(dg.AssetKey("storage_costs")).partitions_def is None


def test_levels_are_grouped_and_versioned():
    graph = defs.resolve_asset_graph()
    groups = {graph.get(dg.AssetKey(n)).group_name for n in LEVEL_ASSETS}
    assert groups == {"raw", "qc_and_illumination", "masks", "single_cell", "profiles", "embeddings",
                      "images"}
    assert all(graph.get(dg.AssetKey(n)).code_version for n in LEVEL_ASSETS)


def test_jobs_schedules_and_sensors():
    assert {j.name for j in defs.resolve_all_job_defs()} >= {
        "plate_job", "consensus_job", "verify_job", "lifecycle_job", "storage_costs_job"}
    assert {s.name for s in defs.schedules} == {"verify_schedule", "lifecycle_schedule", "storage_costs_schedule"}
    assert {s.name for s in defs.sensors} == {"new_plate_sensor", "release_transient_levels", "reprocess_stale_levels"}
    assert all(s.description for s in [*defs.sensors, *defs.schedules]), "each says what it does"


def test_image_qc_declares_its_check():
    checks = {key.name for key in defs.resolve_asset_graph().asset_check_keys}
    assert {"qc_pass_fraction", "flagged_fraction", "min_map"} <= checks
