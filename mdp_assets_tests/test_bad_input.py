"""Bad input: a clear error naming the file and the problem, and nothing written in any tier."""

import shutil

import dagster as dg
import pytest

from mdp_assets_tests.conftest import defs_for
from mdp_assets.plates.demo import DemoPlateSpec, write_demo_plate

SPEC = DemoPlateSpec(barcode="DEMO-BAD", rows="B", columns=(2, 3), sites_per_well=1, image_size=128, cells_per_site=9)


def _materialize_raw(storage, instance, plate):
    defs = defs_for(storage)
    instance.add_dynamic_partitions("plates", [plate])
    return defs.resolve_job_def("plate_job").execute_in_process(
        instance=instance, partition_key=plate, op_selection=["raw_images"], raise_on_error=False
    )


def _failure_message(result) -> str:
    failures = [e for e in result.all_events if e.is_step_failure]
    assert failures, "the step should have failed"
    error = failures[0].step_failure_data.error
    return (error.cause or error).message


def _nothing_stored(storage):
    tiers = storage.root / "internal-drive"
    staging = storage.root / ".staging"
    return not (tiers.exists() and any(tiers.rglob("*"))) and not (staging.exists() and any(staging.iterdir()))


def test_unreadable_tiff_fails_naming_the_file(storage, instance):
    folder = write_demo_plate(storage.landing_path, SPEC)
    victim = sorted(folder.glob("*.tiff"))[3]
    victim.write_bytes(b"II*\x00garbage")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    result = _materialize_raw(storage, instance, SPEC.barcode)
    assert not result.success
    message = _failure_message(result)
    assert str(victim) in message and "TIFF" in message
    assert _nothing_stored(storage)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before, "the landing zone is never modified"


def test_bad_manifest_fails_naming_the_file(storage, instance):
    folder = write_demo_plate(storage.landing_path, SPEC)
    manifest = folder / "plate.yaml"
    manifest.write_text(manifest.read_text().replace("origin: internal", "origin: the-moon"))
    result = _materialize_raw(storage, instance, SPEC.barcode)
    assert not result.success
    message = _failure_message(result)
    assert str(manifest) in message and "field 'origin'" in message
    assert _nothing_stored(storage)


def test_missing_channel_and_wrong_count(storage, instance):
    folder = write_demo_plate(storage.landing_path, SPEC)
    missing = sorted(folder.glob("*-ch3*.tiff"))[0]
    missing.unlink()
    result = _materialize_raw(storage, instance, SPEC.barcode)
    assert "9 images but the manifest's expected_image_count is 10; missing: B02 site 1 RNA" in _failure_message(result)
    manifest = folder / "plate.yaml"
    manifest.write_text(manifest.read_text().replace("expected_image_count: 10", "expected_image_count: 9"))
    result = _materialize_raw(storage, instance, SPEC.barcode)
    assert "incomplete sites: B02 site 1 lacks ['RNA']" in _failure_message(result)


def test_folder_name_must_match_barcode(storage, instance):
    folder = write_demo_plate(storage.landing_path, SPEC)
    shutil.move(folder, storage.landing_path / "OTHER")
    result = _materialize_raw(storage, instance, "OTHER")
    assert "does not match its folder name 'OTHER'" in _failure_message(result)
