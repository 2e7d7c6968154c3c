"""Provenance, staleness and reprocessing, the DuckDB catalog and verification, on two small demo plates."""

import json
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import rocrate
from pyld import jsonld

from mdp_assets.cli import main
from mdp_assets.definitions import build_definitions
from mdp_assets.plates.demo import DemoPlateSpec, write_demo_plate
from mdp_assets.services.catalog import rebuild_catalog
from mdp_assets.services.instance_status import stale_reasons
from mdp_assets.services.registration import register_plate
from mdp_assets.services.reprocess import materialize_in_process, plate_levels
from mdp_assets.storage.provenance import RO_CRATE_CONTEXT, RO_CRATE_FILE
from mdp_assets.storage.resource import MdpStorage
from mdp_assets_tests.conftest import make_deployment, stored

pytestmark = pytest.mark.slow

PLATES = ["PROV-1", "PROV-2"]
SEGMENTATION_AND_BELOW = {"segmentation_masks", "single_cell_features", "single_cell_crops", "single_cell_qc",
                          "single_cell_profiles", "well_profiles", "profile_quality", "single_cell_embeddings",
                          "well_embeddings", "ome_zarr_plate"}  # its labels are the masks


def _make_two_plates(folder: Path):
    deployment = make_deployment(folder)
    storage = MdpStorage.from_deployment(deployment)
    for seed, plate in enumerate(PLATES):
        write_demo_plate(storage.landing_path, DemoPlateSpec(barcode=plate, seed=seed, rows="BC", columns=(2, 3, 4, 5),
                                                             sites_per_well=1, image_size=128, cells_per_site=9))
        register_plate(storage, plate)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("plates", PLATES)
        defs = build_definitions(deployment)
        assert all(o.success for o in materialize_in_process(instance, defs, storage, PLATES, report=lambda _: None))
        yield storage, instance, defs


@pytest.fixture
def two_plates(tmp_path):
    """Two plates made for this test alone (it changes what is stored)."""
    yield from _make_two_plates(tmp_path)


@pytest.fixture(scope="module")
def _plates_made_once(tmp_path_factory):
    yield from _make_two_plates(tmp_path_factory.mktemp("made-once"))


@pytest.fixture
def made_once(_plates_made_once):
    """Two plates shared by the tests that read what is stored and change no stored level; each starts from the
    default mdp.yaml (a test may write a changed one)."""
    make_deployment(Path(_plates_made_once[0].data_root).parent)
    return _plates_made_once


def _changed(storage: MdpStorage, **kwargs) -> dg.Definitions:
    """The same deployment with the built-in nuclei_min_area changed in its mdp.yaml."""
    folder = Path(storage.data_root).parent
    return build_definitions(make_deployment(folder, segmentation={"nuclei_min_area": 40}), **kwargs)


def _count(instance, asset, plate):
    return len(instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[plate]), limit=100).records)


def test_parameter_change_marks_levels_below_stale_and_reprocessing_touches_only_them(two_plates):
    storage, instance, defs = two_plates
    defs_changed = _changed(storage)
    for plate in PLATES:
        assert stale_reasons(instance, defs, plate_levels(defs), plate) == {}
        reasons = {k.to_user_string(): v for k, v in stale_reasons(instance, defs_changed, plate_levels(defs_changed), plate).items()}
        assert set(reasons) == SEGMENTATION_AND_BELOW
        assert reasons["segmentation_masks"].startswith("code version changed")

    outcomes = materialize_in_process(instance, defs_changed, storage, PLATES, report=lambda _: None)
    assert all(o.success for o in outcomes)
    # corrected_images is transient: released after the first pass, so it is made again to be read, then released.
    expected = tuple(sorted(SEGMENTATION_AND_BELOW | {"corrected_images"}))
    made = {o.plate: tuple(sorted(e.dagster_event.asset_key.path[-1] for e in instance.all_logs(
                o.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)))
            for o in outcomes if o.plate in PLATES}
    assert set(made) == set(PLATES) and set(made.values()) == {expected}
    for plate in PLATES:
        for level in ("raw_images", "image_qc", "illumination_functions"):
            assert _count(instance, level, plate) == 1, f"{level} of {plate} was left alone"
        for level in SEGMENTATION_AND_BELOW | {"corrected_images"}:
            assert _count(instance, level, plate) == 2, f"{level} of {plate} was re-made"
        assert stale_reasons(instance, defs_changed, plate_levels(defs_changed), plate) == {}
        transient = stored(storage, "corrected_images", plate)
        assert sorted(p.name for p in transient.iterdir()) == ["_partition.json", "ro-crate-metadata.json"]


def test_opt_in_automation_requests_exactly_the_stale_partitions(made_once):
    storage, instance, _ = made_once
    before = dg.evaluate_automation_conditions(
        defs=build_definitions(make_deployment(Path(storage.data_root).parent), reprocess_automatically=True),
        instance=instance)
    assert before.total_requested == 0
    changed = _changed(storage, reprocess_automatically=True)
    after = dg.evaluate_automation_conditions(defs=changed, instance=instance, cursor=before.cursor)
    requested = {k.to_user_string(): after.get_requested_partitions(k)
                 for k in changed.resolve_asset_graph().get_all_asset_keys() if after.get_requested_partitions(k)}
    # The changed level and every level below it, for every plate, in one tick; nothing above it.
    assert requested == {level: set(PLATES) for level in SEGMENTATION_AND_BELOW}


def test_provenance_names_inputs_with_checksums_and_is_ro_crate_json_ld(made_once):
    storage, instance, _ = made_once
    folder = stored(storage, "well_profiles", "PROV-1")
    record = json.loads((folder / "_partition.json").read_text())["provenance"]
    features = json.loads((stored(storage, "single_cell_features", "PROV-1") / "_partition.json").read_text())
    used = {item["asset"]: item for item in record["inputs"]}
    # The plate itself comes from its registration, not raw_images; the cells QC flagged are left out.
    assert set(used) == {"single_cell_features", "single_cell_qc"}
    assert used["single_cell_features"]["sha256"] == features["data_version"]
    assert used["single_cell_features"]["data_version"] == features["data_version"]
    assert {"dagster", "numpy", "pandas", "scikit-image", "tifffile", "python"} <= set(record["software"])
    assert record["parameters"]["corr_threshold"] == 0.9 and record["origin"] == "internal"
    partition_record = json.loads((folder / "_partition.json").read_text())
    assert record["outputs"]["sha256"] == partition_record["data_version"] and record["outputs"]["uri"] == folder.as_uri()
    assert record["code_version"] == partition_record["code_version"] and record["run_id"] == partition_record["run_id"]

    crate = json.loads((folder / RO_CRATE_FILE).read_text())
    assert crate["@context"][0] == RO_CRATE_CONTEXT
    bundled = json.loads((Path(rocrate.__file__).parent / "data" / "ro-crate.jsonld").read_text())

    def offline_loader(url, options=None):
        # The RO-Crate context, as the rocrate package ships it (its terms are a superset of 1.1's).
        assert url == RO_CRATE_CONTEXT, url
        return {"contextUrl": None, "documentUrl": url, "document": {"@context": bundled["@context"]}}

    expanded = jsonld.expand(crate, {"documentLoader": offline_loader})
    by_type = {}
    for node in expanded:
        for kind in node.get("@type", []):
            by_type.setdefault(kind, []).append(node)
    action = by_type["http://schema.org/CreateAction"][0]
    assert "http://www.w3.org/ns/prov#Activity" in action["@type"]
    used_ids = {u["@id"] for u in action["http://www.w3.org/ns/prov#used"]}
    assert used["single_cell_features"]["uri"] in used_ids
    software = {n["http://schema.org/name"][0]["@value"] for n in by_type["http://schema.org/SoftwareApplication"]}
    assert {"dagster", "numpy"} <= software
    files = by_type["http://schema.org/MediaObject"]  # RO-Crate's File is schema.org MediaObject
    assert any("table.parquet" in f["@id"] for f in files)


def _catalog_rows(storage):
    with duckdb.connect(str(storage.catalog_path), read_only=True) as con:
        return con.execute("SELECT * EXCLUDE (status, checked_at) FROM stored_files ORDER BY asset_key, partition, relpath").fetchall()


def test_catalog_totals_match_disk_and_rebuild_gives_the_same_rows(made_once):
    storage, instance, defs = made_once
    rows = _catalog_rows(storage)
    policy = storage.policy()
    folders = [storage.tier(name, policy).root for name in policy.tiers]
    on_disk = sum(p.stat().st_size for root in folders if root.is_dir() for p in root.rglob("*")
                  if p.is_file() and ".git" not in p.relative_to(root).parts)
    with duckdb.connect(str(storage.catalog_path), read_only=True) as con:
        assert con.execute("SELECT sum(bytes) FROM stored_files").fetchone()[0] == on_disk
    storage.catalog_path.unlink()
    assert rebuild_catalog(instance, storage) == len(rows)
    assert _catalog_rows(storage) == rows


def test_verify_names_a_corrupt_file_and_flags_it(two_plates, monkeypatch, capsys):
    storage, instance, defs = two_plates
    victim = stored(storage, "segmentation_masks", "PROV-2") / "B03_s01_masks.tiff"
    data = bytearray(victim.read_bytes())
    data[-10] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert main(["--config", str(Path(storage.data_root).parent / "mdp.yaml"), "verify"]) == 1
    assert f"corrupt: {victim.as_uri()}" in capsys.readouterr().err
    with duckdb.connect(str(storage.catalog_path), read_only=True) as con:
        flagged = con.execute("SELECT uri, status FROM stored_files WHERE status <> 'ok'").fetchall()
    assert flagged == [(victim.as_uri(), "corrupt")]

    result = defs.resolve_job_def("verify_job").execute_in_process(instance=instance, raise_on_error=False)
    checks = {c.asset_key.to_user_string(): c for c in result.get_asset_check_evaluations()}
    assert not checks["segmentation_masks"].passed
    damaged = checks["segmentation_masks"].metadata["damaged_files"].value.records  # a table in the UI
    assert [(r.data["partition"], r.data["uri"], r.data["status"]) for r in damaged] == [
        ("PROV-2", victim.as_uri(), "corrupt")]
    assert checks["raw_images"].passed and checks["well_profiles"].passed
    assert checks["raw_images"].metadata["files_checked"].value > 0

    # One level's check alone re-reads only that level's files.
    job = defs.resolve_implicit_global_asset_job_def()
    alone = job.get_subset(asset_selection=set(), asset_check_selection={
        dg.AssetCheckKey(dg.AssetKey("raw_images"), "stored_files_intact")}).execute_in_process(instance=instance)
    evaluations = alone.get_asset_check_evaluations()
    assert [(c.asset_key.to_user_string(), c.passed) for c in evaluations] == [("raw_images", True)]
    with duckdb.connect(str(storage.catalog_path), read_only=True) as con:
        latest = dict(con.execute("SELECT asset_key = 'raw_images', max(checked_at) FROM stored_files GROUP BY 1").fetchall())
        count = con.execute("SELECT count(*) FROM stored_files WHERE asset_key = 'raw_images'").fetchone()[0]
    assert latest[True] > latest[False]  # the other levels' files kept the verify_job's time
    assert evaluations[0].metadata["files_checked"].value == count


def test_a_qc_threshold_changed_in_mdp_yaml_makes_image_qc_and_the_levels_below_stale(made_once):
    storage, instance, defs = made_once
    changed = build_definitions(make_deployment(Path(storage.data_root).parent, qc={"min_power_log_log_slope": -3.0}))
    levels = {k.path[-1] for k in plate_levels(changed)}
    for plate in PLATES:
        reasons = {k.path[-1]: v for k, v in stale_reasons(instance, changed, plate_levels(changed), plate).items()}
        assert set(reasons) == levels - {"raw_images"}
        assert reasons["image_qc"].startswith("code version changed")
        assert reasons["well_profiles"].startswith("a level it reads is stale")


def test_provenance_names_the_materializations_the_step_loaded(made_once):
    """Each input in a level's provenance is the exact upstream materialization the step read: the same event
    Dagster itself recorded as the step's input (its input event pointer), with that run and data version."""
    storage, instance, _ = made_once
    checked = 0
    for level in ("image_qc", "segmentation_masks", "well_profiles", "single_cell_embeddings"):
        record = instance.fetch_materializations(dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(level), asset_partitions=["PROV-1"]), limit=1).records[0]
        materialization = record.asset_materialization
        provenance = materialization.metadata["provenance"].value
        for item in [i for i in provenance["inputs"] if i["asset"] != "landing_zone"]:
            pointer = materialization.tags[f"dagster/input_event_pointer/{item['asset']}"]
            assert item["storage_id"] == int(pointer), (level, item["asset"])
            upstream = instance.fetch_materializations(dg.AssetRecordsFilter(
                asset_key=dg.AssetKey(item["asset"]), asset_partitions=["PROV-1"],
                after_storage_id=item["storage_id"] - 1, before_storage_id=item["storage_id"] + 1), limit=1).records[0]
            assert item["run_id"] == upstream.run_id
            assert item["data_version"] == upstream.asset_materialization.tags["dagster/data_version"]
            checked += 1
    assert checked == 8  # 1 + 4 + 2 + 1 inputs of the four levels (well_profiles: single cells and their QC)


def _tick(defs: dg.Definitions, instance, storage):
    """One evaluation of the reprocess sensor, as the daemon makes it once a person has turned it on."""
    sensor = defs.resolve_sensor_def("reprocess_stale_levels")
    context = dg.build_sensor_context(instance=instance, repository_def=defs.get_repository_def(),
                                      resources={"storage": storage})
    return sensor(context)


def test_the_reprocess_sensor_turned_on_after_a_change_remakes_exactly_the_stale_levels(two_plates):
    storage, instance, defs = two_plates
    sensor = defs.resolve_sensor_def("reprocess_stale_levels")
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert {job.name for job in sensor.jobs} == {"plate_job", "consensus_job"}  # the daemon refuses untargeted runs
    idle = _tick(defs, instance, storage)
    assert isinstance(idle, dg.SkipReason) and "up to date" in idle.skip_message
    keys = defs.resolve_asset_graph().get_all_asset_keys()
    before = max(r.storage_id for key in keys
                 for r in instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=1).records)

    changed = _changed(storage)  # the built-in nuclei_min_area changed in mdp.yaml
    requests = _tick(changed, instance, storage)
    expected = SEGMENTATION_AND_BELOW | {"corrected_images"}  # the transient level is made again to be read
    assert sorted(r.partition_key for r in requests) == PLATES
    for request in requests:
        assert request.job_name == "plate_job" and request.tags["mdp/command"] == "reprocess"
        assert {k.to_user_string() for k in request.asset_selection} == expected
        assert "segmentation_masks: code version changed" in request.tags["mdp/reasons"]
        assert {(k.asset_key.to_user_string(), k.name) for k in request.asset_check_keys} == {
            ("segmentation_masks", "no_empty_or_failed_wells"), ("single_cell_qc", "flagged_fraction"),
            ("profile_quality", "min_map")}  # the stale levels' own checks, not the verification
        job = changed.resolve_job_def("plate_job").get_subset(asset_selection=set(request.asset_selection),
                                                              asset_check_selection=set(request.asset_check_keys))
        result = job.execute_in_process(instance=instance, partition_key=request.partition_key, tags=request.tags)
        assert result.success
        assert {c.check_name for c in result.get_asset_check_evaluations()} == {"no_empty_or_failed_wells",
                                                                             "flagged_fraction", "min_map"}
    consensus = _tick(changed, instance, storage)  # the plates are done: now the consensus
    assert [(r.job_name, r.partition_key) for r in consensus] == [("consensus_job", None)]
    assert changed.resolve_job_def("consensus_job").execute_in_process(instance=instance).success
    assert isinstance(_tick(changed, instance, storage), dg.SkipReason)

    # From the event log: what was made after the change is exactly the stale levels, each plate once.
    made = []
    for key in keys:
        records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key, after_storage_id=before),
                                                  limit=100).records
        made += [(key.to_user_string(), r.partition_key) for r in records]
    assert sorted(made) == sorted([(level, plate) for level in expected for plate in PLATES]
                                  + [("consensus_profiles", None)])
