"""new_plate_sensor against a real landing zone (the NF1 plate) and a real ephemeral instance."""

import hashlib
import os
import shutil
import time

import dagster as dg
import pytest

from mdp_assets.config import IntakeSettings, StepSettings
from mdp_assets.defs.plates.sensors import new_plate_sensor
from mdp_assets_tests.conftest import NF1_IMAGES, NF1_PLATEMAP, write_manifest


def _tick(storage, instance, cursor=None, quiet=0.0):
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor,
        resources={"storage": storage, "intake": IntakeSettings(quiet_period_seconds=quiet), "settings": StepSettings()}
    )
    return new_plate_sensor(context)


def _skip(result) -> str:
    """The skip reason as the UI shows it."""
    return result.skip_reason.skip_message if result.skip_reason else ""


def _landing_digest(root):
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
            digest.update(str(path.stat().st_mtime_ns).encode())
    return digest.hexdigest()


def test_nf1_plate_is_registered_once(storage, instance, nf1_plate):
    first = _tick(storage, instance)
    assert [r.partition_key for r in first.run_requests] == ["Plate_2"]
    assert first.run_requests[0].run_key.startswith("Plate_2:")
    (request,) = first.dynamic_partitions_requests
    assert request.partitions_def_name == "plates" and list(request.partition_keys) == ["Plate_2"]
    second = _tick(storage, instance, cursor=first.cursor)
    assert not second.run_requests and not second.dynamic_partitions_requests
    assert "no new plates" in _skip(second)


def test_plate_registered_elsewhere_is_not_run_again(storage, instance, nf1_plate):
    instance.add_dynamic_partitions("plates", [nf1_plate])
    result = _tick(storage, instance)
    assert not result.run_requests and "no new plates" in _skip(result)


def test_plate_still_arriving_waits(storage, instance, nf1_plate):
    folder = storage.landing_path / nf1_plate
    held_back = sorted(folder.glob("*.tif"))[:3]
    parked = storage.root / "parked"
    parked.mkdir()
    for path in held_back:
        shutil.move(path, parked / path.name)
    result = _tick(storage, instance)
    assert not result.run_requests and "12 of 15 images so far" in _skip(result)
    for path in held_back:
        shutil.move(parked / path.name, path)
        os.utime(path)  # just written
    result = _tick(storage, instance, cursor=result.cursor, quiet=60)
    assert not result.run_requests and "quiet period 60 s" in _skip(result)
    old = time.time() - 120
    for path in folder.iterdir():
        os.utime(path, (old, old))
    result = _tick(storage, instance, cursor=result.cursor, quiet=60)
    assert [r.partition_key for r in result.run_requests] == ["Plate_2"]


def test_truncated_tiff_and_unsafe_id_are_rejected_untouched(storage, instance, nf1_plate):
    folder = storage.landing_path / nf1_plate
    victim = folder / "D6_01_2_2_GFP_001.tif"
    with open(victim, "r+b") as handle:
        handle.truncate(victim.stat().st_size // 3)
    unsafe = storage.landing_path / "bad plate;rm"
    unsafe.mkdir()
    (unsafe / "x.tif").write_bytes(b"II*\x00")
    before = _landing_digest(storage.landing_path)
    result = _tick(storage, instance)
    assert not result.run_requests
    assert "Plate_2: rejected" in _skip(result) and "D6_01_2_2_GFP_001.tif: truncated TIFF" in _skip(result)
    assert "unsafe plate id 'bad plate;rm'" in _skip(result)
    again = _tick(storage, instance, cursor=result.cursor)
    assert "D6_01_2_2_GFP_001.tif: truncated TIFF" in _skip(again), "the reason stays visible"
    assert _landing_digest(storage.landing_path) == before, "the landing zone is byte-for-byte unchanged"


def test_registered_plate_that_changes_is_reported_not_reprocessed(storage, instance, nf1_plate):
    first = _tick(storage, instance)
    assert first.run_requests
    extra = storage.landing_path / nf1_plate / "B7_01_1_3_DAPI_001.tif"
    os.utime(extra, (time.time() + 5, time.time() + 5))
    second = _tick(storage, instance, cursor=first.cursor)
    assert not second.run_requests
    assert "Plate_2: changed, files changed after registration; not reprocessed" in _skip(second)


def test_bad_manifest_is_rejected_with_the_field(storage, instance, nf1_plate):
    folder = storage.landing_path / nf1_plate
    write_manifest(folder, barcode="Plate_2", origin="martian", platemap="platemap.csv", naming_scheme="nf1",
                   expected_image_count=15)
    result = _tick(storage, instance)
    assert not result.run_requests and "field 'origin'" in _skip(result)


def test_a_flood_of_plates_is_validated_over_several_ticks(storage, instance, nf1_plate):
    folder = storage.landing_path / nf1_plate
    for copy in ("Plate_2b", "Plate_2c"):
        shutil.copytree(folder, storage.landing_path / copy)
        manifest = storage.landing_path / copy / "plate.yaml"
        manifest.write_text(manifest.read_text().replace("barcode: Plate_2", f"barcode: {copy}"))

    def tick(cursor):
        context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={
            "storage": storage, "intake": IntakeSettings(quiet_period_seconds=0, max_plates_validated_per_tick=2),
            "settings": StepSettings()})
        return new_plate_sensor(context)

    first = tick(None)
    assert [r.partition_key for r in first.run_requests] == ["Plate_2", "Plate_2b"]
    second = tick(first.cursor)
    assert [r.partition_key for r in second.run_requests] == ["Plate_2c"]
