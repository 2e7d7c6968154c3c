"""Raw images enter the tiers: `raw_images` copies each plate's image files from the landing zone into the tier
its policy names (hashed while copied, verified, atomic per plate, every file's sha256 recorded), every level
reads them where they are now (a drive's folder, or S3 through the verified cache), the lifecycle moves them
copy-verify-delete (a kill between copy and delete loses nothing), `mdp verify` checks them, costs count them,
and the landing zone is never touched unless the policy releases it (recorded) or keeps the images there
(`reference` mode, visible in the catalog)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

from mdp_assets.checksums import sha256_file
from mdp_assets.cli import main
from mdp_assets.errors import MdpError
from mdp_assets.faults import FAULT_ENV
from mdp_assets.plates.demo import DemoPlateSpec, write_demo_plate
from mdp_assets.services import runs
from mdp_assets.services.lifecycle import run_lifecycle
from mdp_assets.services.registration import register_plate
from mdp_assets.services.reprocess import plan_plate
from mdp_assets.storage import catalog
from mdp_assets.storage.costs import current_costs, projection
from mdp_assets.storage.partitions import partition_key
from mdp_assets.storage.policy import load_policy, shipped_policy
from mdp_assets.storage.resource import MdpStorage
from mdp_assets_tests.conftest import s3_policy_storage, REPOSITORY, defs_for, make_deployment, stored

pytestmark = pytest.mark.slow

SMALL = dict(rows="B", columns=(2, 3), sites_per_well=1, image_size=128, cells_per_site=9)


def landing_state(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Every file of a landing folder: size, modification time (ns) and sha256."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns, sha256_file(p))
            for p in sorted(folder.rglob("*")) if p.is_file()}


def policy_file(tmp_path: Path, name: str = "local", **changes) -> str:
    policy = yaml.safe_load(shipped_policy(name).read_text())
    for key, value in changes.items():
        policy[key] = value
    path = tmp_path / f"policy-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return str(path)


def make_levels(storage: MdpStorage, instance: dg.DagsterInstance, plate: str, levels: list[str]) -> dg.ExecuteInProcessResult:
    result = defs_for(storage).resolve_job_def("plate_job").execute_in_process(
        instance=instance, partition_key=plate, op_selection=levels, raise_on_error=False)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    return result


def image_files(record: dict) -> dict[str, str]:
    return {f["relpath"]: f["sha256"] for f in record["files"] if f["relpath"].startswith("images/")}


def demo_lab(tmp_path: Path, barcode: str, **storage_section):
    deployment = make_deployment(tmp_path, storage=storage_section) if storage_section else make_deployment(tmp_path)
    storage = MdpStorage.from_deployment(deployment)
    write_demo_plate(storage.landing_path, DemoPlateSpec(barcode=barcode, **SMALL))
    register_plate(storage, barcode)
    instance = runs.instance_for(deployment)
    instance.add_dynamic_partitions("plates", [barcode])
    return deployment, storage, instance


# -- a real plate: NF1 plate 2 ---------------------------------------------------------------------------------

def test_the_nf1_plate_images_are_copied_into_the_internal_drive_and_levels_read_them_there(nf1_plate, storage, instance):
    landing = storage.landing_path / nf1_plate
    before = landing_state(landing)
    register_plate(storage, nf1_plate)
    instance.add_dynamic_partitions("plates", [nf1_plate])
    result = make_levels(storage, instance, nf1_plate, ["raw_images"])
    meta = next(e.materialization.metadata for e in result.get_asset_materialization_events())
    assert meta["tier"].value == "internal-drive" and meta["raw_images_mode"].value == "copy"

    folder = stored(storage, "raw_images", nf1_plate)
    assert folder.is_relative_to(storage.root / "internal-drive")
    record = json.loads((folder / "_partition.json").read_text())
    images = image_files(record)
    tiffs = {name: sha for name, (_, _, sha) in before.items() if name.endswith(".tif")}
    assert len(images) == len(tiffs) == 15
    # Each stored image is byte-for-byte the landing file, its sha256 recorded in the record and the catalog.
    assert images == {f"images/{name}": sha for name, sha in tiffs.items()}
    assert all(sha256_file(folder / relpath) == sha for relpath, sha in images.items())
    columns, rows = catalog.query(storage.catalog_path, "SELECT relpath, sha256, tier FROM stored_files "
                                  "WHERE asset_key = 'raw_images' AND relpath LIKE 'images/%'")
    assert {r[0]: r[1] for r in rows} == images and {r[2] for r in rows} == {"internal-drive"}
    assert landing_state(landing) == before, "the landing zone is untouched (bytes and modification times)"

    # The levels read the tier's copy: with the landing folder gone, image_qc and illumination are still made.
    parked = landing.with_name("parked-elsewhere")
    landing.rename(parked)
    try:
        make_levels(storage, instance, nf1_plate, ["image_qc", "illumination_functions"])
        table = storage.store().read("raw_images", nf1_plate).read_table()
        assert all(uri.startswith(folder.as_uri() + "/images/") for uri in table["uri"])
    finally:
        parked.rename(landing)
    assert landing_state(landing) == before


def test_a_plate_refused_at_intake_copies_nothing(tmp_path, instance):
    """The intake checks still run first: a plate whose image changed after registration stops before a byte
    is copied into any tier."""
    storage = MdpStorage.from_deployment(make_deployment(tmp_path))
    write_demo_plate(storage.landing_path, DemoPlateSpec(barcode="BAD1", **SMALL))
    register_plate(storage, "BAD1")
    instance.add_dynamic_partitions("plates", ["BAD1"])
    image = sorted((storage.landing_path / "BAD1").glob("*.tiff"))[0]
    damaged = bytearray(image.read_bytes())
    damaged[-1] ^= 0x01
    image.write_bytes(bytes(damaged))
    result = defs_for(storage).resolve_job_def("plate_job").execute_in_process(
        instance=instance, partition_key="BAD1", op_selection=["raw_images"], raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert image.name in str(failure.step_failure_data.error)
    assert storage.store().locate("raw_images", "BAD1") is None
    assert not any(p.name == image.name for p in storage.root.rglob("*") if p.parent != image.parent)


# -- demo plates: lifecycle, verify, costs ----------------------------------------------------------------------

def test_a_year_later_the_lifecycle_moves_the_images_to_the_external_drive_and_verify_checks_them(tmp_path, capsys):
    deployment, storage, instance = demo_lab(tmp_path, "DEMO-RAW")
    landing = storage.landing_path / "DEMO-RAW"
    before = landing_state(landing)
    make_levels(storage, instance, "DEMO-RAW", ["raw_images", "image_qc"])
    record = storage.store().locate("raw_images", "DEMO-RAW").record
    images = image_files(record)
    assert len(images) == 10 and record["tier"] == "internal-drive"

    # Costs count the image bytes in their tier now, and in the external drive in the 12-month projection.
    columns, rows = catalog.query(storage.catalog_path, "SELECT tier, level, plate, bytes FROM stored_files")
    files = pd.DataFrame(rows, columns=columns)
    costs = current_costs(files, storage.policy())
    image_bytes = sum(f["bytes"] for f in record["files"] if f["relpath"].startswith("images/"))
    raw_cost = costs[(costs["level"] == "raw_images") & (costs["tier"] == "internal-drive")]
    assert int(raw_cost["bytes"].sum()) > image_bytes > 0
    assert float(raw_cost["one_time_cost_usd"].sum()) == pytest.approx(raw_cost["bytes"].sum() / 1e12 * 15)
    parts = pd.DataFrame([{"level": "raw_images", "tier": "internal-drive", "bytes": int(raw_cost["bytes"].sum()),
                           "stage_entered_at": datetime.fromisoformat(record["stage_entered_at"])}])
    later = projection(parts, storage.policy(), datetime.now(timezone.utc))
    assert later.loc[later["month"] == 12, "tier"].tolist() == ["external-drive"]
    assert int(later.loc[later["month"] == 12, "bytes"].sum()) == int(raw_cost["bytes"].sum())

    report = run_lifecycle(storage, datetime.now(timezone.utc) + timedelta(days=366))
    assert not report.failures, report.failures
    assert ("raw_images", "internal-drive", "external-drive") in {(m["asset"], m["from"], m["to"]) for m in report.moves}
    moved = stored(storage, "raw_images", "DEMO-RAW")
    assert moved.is_relative_to(storage.root / "external-drive")
    assert not (storage.root / "internal-drive" / "raw_images" / "DEMO-RAW").exists(), "the source was deleted"
    assert {relpath: sha256_file(moved / relpath) for relpath in images} == images
    assert landing_state(landing) == before, "the landing zone is untouched (bytes and modification times)"

    config = ["--config", str(deployment.path)]
    assert main([*config, "verify"]) == 0
    assert "0 missing, corrupt or uncommitted" in capsys.readouterr().out
    flipped = moved / sorted(images)[3]
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x01
    stat = flipped.stat()
    flipped.write_bytes(bytes(data))
    os.utime(flipped, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert main([*config, "verify"]) == 1
    err = capsys.readouterr().err
    assert f"corrupt: {flipped.as_uri()}" in err and "raw_images of DEMO-RAW" in err
    with pytest.raises(MdpError, match="damaged"):  # and no level is handed the damaged image
        storage.store().read("raw_images", "DEMO-RAW")


def test_a_lifecycle_killed_between_copy_and_delete_of_raw_images_loses_nothing(tmp_path):
    deployment, storage, instance = demo_lab(tmp_path, "KILL-RAW")
    make_levels(storage, instance, "KILL-RAW", ["raw_images"])
    images = image_files(storage.store().locate("raw_images", "KILL-RAW").record)
    as_of = (datetime.now(timezone.utc) + timedelta(days=400)).isoformat()
    env = {**os.environ, "MDP_CONFIG": str(deployment.path), "DAGSTER_HOME": str(deployment.dagster_home),
           "PYTHONPATH": str(REPOSITORY)}
    for fault in ("move.copied", "move.cataloged"):
        if fault == "move.cataloged":  # the plate is back on the internal drive, made again
            make_levels(storage, instance, "KILL-RAW", ["raw_images"])
        done = subprocess.run([sys.executable, "-m", "mdp_assets_tests.fault_driver", "lifecycle", as_of],
                              env={**env, FAULT_ENV: fault}, capture_output=True, text=True, cwd=REPOSITORY, timeout=300)
        assert done.returncode == -9, f"not killed at {fault}: {done.stderr[-2000:]}"
        key = partition_key("raw_images", "KILL-RAW")
        for tier in ("internal-drive", "external-drive"):  # killed between copy and delete: in both, both whole
            folder = storage.tier(tier).folder(key)
            assert {relpath: sha256_file(folder / relpath) for relpath in images} == images, tier
        # A read straight after the crash serves a whole, verified copy.
        assert len(storage.store().read("raw_images", "KILL-RAW").read_table()) == len(images)
        done = subprocess.run([sys.executable, "-m", "mdp_assets_tests.fault_driver", "lifecycle", as_of],
                              env=env, capture_output=True, text=True, cwd=REPOSITORY, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert storage.store().locate("raw_images", "KILL-RAW").tier == "external-drive"
        assert storage.tier("internal-drive").read_record(key) is None
        folder = stored(storage, "raw_images", "KILL-RAW")
        assert {relpath: sha256_file(folder / relpath) for relpath in images} == images
        columns, rows = catalog.query(storage.catalog_path, "SELECT DISTINCT tier FROM stored_files "
                                      "WHERE asset_key = 'raw_images'")
        assert rows == [("external-drive",)]


# -- S3 ------------------------------------------------------------------------------------------------------

def test_an_s3_tier_holds_the_raw_images_and_a_level_reads_them_through_the_cache(tmp_path, instance, s3_endpoint,
                                                                                  s3_credentials):
    storage, client, bucket = s3_policy_storage(tmp_path, s3_endpoint)
    write_demo_plate(storage.landing_path, DemoPlateSpec(barcode="S3RAW", **SMALL))
    register_plate(storage, "S3RAW")
    instance.add_dynamic_partitions("plates", ["S3RAW"])
    landing = storage.landing_path / "S3RAW"
    before = landing_state(landing)
    make_levels(storage, instance, "S3RAW", ["raw_images"])
    listed = {o["Key"].removeprefix("cloud/raw_images/S3RAW/"): o["Size"]
              for o in client.list_objects_v2(Bucket=bucket, Prefix="cloud/raw_images/S3RAW/")["Contents"]}
    record = json.loads(client.get_object(Bucket=bucket, Key="cloud/raw_images/S3RAW/_partition.json")["Body"].read())
    images = image_files(record)
    assert len(images) == 10 and set(images) <= set(listed)
    for relpath, sha in images.items():  # the objects hold the landing bytes
        body = client.get_object(Bucket=bucket, Key=f"cloud/raw_images/S3RAW/{relpath}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == sha == before[relpath.removeprefix("images/")][2]

    # image_qc reads the images from the verified cache, not from the landing zone (moved away meanwhile).
    shutil.rmtree(storage.cache_root, ignore_errors=True)
    landing.rename(landing.with_name("away"))
    make_levels(storage, instance, "S3RAW", ["image_qc"])
    cached = storage.cache_root / "cloud" / "raw_images" / "S3RAW"
    assert {relpath: sha256_file(cached / relpath) for relpath in images} == images
    table = storage.store().read("raw_images", "S3RAW").read_table()
    assert all(uri.startswith(cached.as_uri() + "/images/") for uri in table["uri"])
    qc = pd.read_parquet(stored(storage, "image_qc", "S3RAW") / "table.parquet")
    assert len(qc) == len(images)


# -- reference mode and the landing release -------------------------------------------------------------------

def test_reference_mode_keeps_the_images_in_the_landing_zone_and_the_catalog_says_so(tmp_path, capsys):
    policy = policy_file(tmp_path, raw_images={"mode": "reference"})
    deployment, storage, instance = demo_lab(tmp_path, "REF-1", policy=policy)
    landing = storage.landing_path / "REF-1"
    before = landing_state(landing)
    make_levels(storage, instance, "REF-1", ["raw_images", "image_qc"])
    folder = stored(storage, "raw_images", "REF-1")
    assert not (folder / "images").exists()
    assert not image_files(json.loads((folder / "_partition.json").read_text()))
    table = storage.store().read("raw_images", "REF-1").read_table()
    assert all(uri.startswith(landing.as_uri() + "/") for uri in table["uri"]), "levels read the landing zone"
    assert set(table["stored_relpath"]) == {""}
    assert main(["--config", str(deployment.path), "catalog", "--query", "raw-images"]) == 0
    out = capsys.readouterr().out
    assert "REF-1" in out and "reference" in out
    assert landing_state(landing) == before
    # The lifecycle never releases a landing zone it does not hold a copy of (the policy refuses to say so).
    with pytest.raises(MdpError, match="reference mode"):
        policy_file_path = policy_file(tmp_path, raw_images={"mode": "reference", "landing": {
            "release": "after_verified_copy", "after_days": 1}})
        MdpStorage(data_root=str(tmp_path / "other"), policy_file=policy_file_path).policy()


def test_the_landing_zone_is_released_only_under_the_policy_after_the_verified_copy_and_recorded(tmp_path, capsys):
    policy = policy_file(tmp_path, raw_images={"mode": "copy", "landing": {"release": "after_verified_copy",
                                                                           "after_days": 10}})
    deployment, storage, instance = demo_lab(tmp_path, "REL-1", policy=policy)
    landing = storage.landing_path / "REL-1"
    before = landing_state(landing)
    make_levels(storage, instance, "REL-1", ["raw_images"])
    images = image_files(storage.store().locate("raw_images", "REL-1").record)

    report = run_lifecycle(storage, datetime.now(timezone.utc) + timedelta(days=5))
    assert not report.landing_releases and landing_state(landing) == before, "not yet: 10 days after the copy"

    # A damaged stored copy is never a reason to delete the landing images: the release waits.
    tier_copy = stored(storage, "raw_images", "REL-1") / sorted(images)[0]
    good = tier_copy.read_bytes()
    tier_copy.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    report = run_lifecycle(storage, datetime.now(timezone.utc) + timedelta(days=11))
    assert not report.landing_releases and any("damaged" in f for f in report.failures)
    assert landing_state(landing) == before
    tier_copy.write_bytes(good)

    report = run_lifecycle(storage, datetime.now(timezone.utc) + timedelta(days=11))
    assert not report.failures, report.failures
    [release] = report.landing_releases
    assert release["plate"] == "REL-1" and release["files"] == 10 and release["tier"] == "internal-drive"
    left = {p.name for p in landing.rglob("*") if p.is_file()}
    assert not any(name.endswith(".tiff") for name in left) and "plate.yaml" in left, "only the images are released"
    # Recorded: the partition record and its provenance, and the catalog.
    record = storage.store().locate("raw_images", "REL-1").record
    assert record["landing_release"]["files"] == 10 and record["provenance"]["landing_release"] == record["landing_release"]
    assert catalog.landing_release(storage.catalog_path, "REL-1")["files"] == 10
    assert main(["--config", str(deployment.path), "catalog", "--query", "raw-images"]) == 0
    assert "copy" in capsys.readouterr().out
    assert main(["--config", str(deployment.path), "verify"]) == 0, "the catalog describes the updated record"
    # The levels read the stored copy; raw_images cannot be made again from a released landing zone, and the
    # emptied landing folder does not make it stale.
    make_levels(storage, instance, "REL-1", ["image_qc"])
    assert "raw_images" not in plan_plate(instance, defs_for(storage), storage, "REL-1").levels
    result = defs_for(storage).resolve_job_def("plate_job").execute_in_process(
        instance=instance, partition_key="REL-1", op_selection=["raw_images"], raise_on_error=False)
    assert not result.success
    assert "released" in str(next(e for e in result.all_events if e.is_step_failure).step_failure_data.error)


def test_the_shipped_policies_copy_the_images_and_never_release_the_landing_zone():
    for name in ("local", "s3", "service"):
        loaded = load_policy(shipped_policy(name))
        assert loaded.raw_images.mode == "copy" and loaded.raw_images.landing.release == "never", name
