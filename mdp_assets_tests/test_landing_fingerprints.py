"""Landing images are fingerprinted by content at registration; an image rewritten with the same size and
modification time is found before any level reads it, naming the file (real NF1 images, copied). With the
images copied into the tiers (the policy's copy mode) the levels read the verified copy, and the change is
found by the next raw_images and registration; in reference mode every level reading the landing zone finds it."""

import os

import pytest
import yaml

from mdp_assets.errors import MdpError
from mdp_assets.services.registration import register_plate
from mdp_assets.storage.policy import shipped_policy
from mdp_assets.storage.resource import MdpStorage
from mdp_assets_tests.conftest import defs_for


@pytest.fixture(params=["reference", "copy"])
def mode_storage(request, storage, tmp_path):
    """The test deployment's storage under the local policy in reference or copy mode."""
    policy = yaml.safe_load(shipped_policy("local").read_text())
    policy["raw_images"]["mode"] = request.param
    path = tmp_path / f"{request.param}.yaml"
    path.write_text(yaml.safe_dump(policy))
    return MdpStorage(data_root=storage.data_root, policy_file=str(path))


def _rewrite_keeping_size_and_mtime(path):
    """Flip one byte in the middle of the file, then put its modification time back (os.utime)."""
    status = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert path.stat().st_size == status.st_size and path.stat().st_mtime_ns == status.st_mtime_ns


def _run(storage, instance, plate, steps):
    job = defs_for(storage).resolve_job_def("plate_job")
    return job.execute_in_process(instance=instance, partition_key=plate, op_selection=steps, raise_on_error=False)


def _failure(result) -> str:
    failure = next(e for e in result.all_events if e.is_step_failure)
    error = failure.step_failure_data.error
    return (error.cause or error).message


def test_an_image_rewritten_with_its_size_and_mtime_stops_the_next_level_naming_it(mode_storage, instance, nf1_plate):
    storage = mode_storage
    plate = register_plate(storage, nf1_plate)
    assert len(plate.image_fingerprints) == 15  # `mdp register` fingerprints every image's content
    instance.add_dynamic_partitions("plates", [nf1_plate])
    assert _run(storage, instance, nf1_plate, ["raw_images"]).success
    victim = sorted((storage.landing_path / nf1_plate).glob("*.tif"))[4]
    _rewrite_keeping_size_and_mtime(victim)
    result = _run(storage, instance, nf1_plate, ["image_qc"])
    if storage.policy().raw_images.mode == "copy":
        assert result.success, "image_qc read the verified copy in the tier, not the rewritten landing file"
    else:
        assert not result.success
        message = _failure(result)
        assert f"plate {nf1_plate}, level image_qc: 1 landing image(s) differ from the content (sha256)" in message
        assert victim.name in message and "nothing was read from them" in message
        assert not result.get_asset_materialization_events()
    # Ingest again finds it too, before the inventory, and registering again refuses it.
    message = _failure(_run(storage, instance, nf1_plate, ["raw_images"]))
    assert f"plate {nf1_plate}, level raw_images" in message and victim.name in message
    with pytest.raises(MdpError, match=victim.name):
        register_plate(storage, nf1_plate)


def test_a_plate_the_sensor_registered_is_fingerprinted_by_its_first_raw_images_step(mode_storage, instance, nf1_plate):
    storage = mode_storage
    assert register_plate(storage, nf1_plate, fingerprint=False).image_fingerprints == {}
    instance.add_dynamic_partitions("plates", [nf1_plate])
    images = sorted((storage.landing_path / nf1_plate).glob("*.tif"))
    assert _run(storage, instance, nf1_plate, ["raw_images"]).success
    recorded = storage.plate(nf1_plate).image_fingerprints
    assert sorted(recorded) == [p.name for p in images]
    _rewrite_keeping_size_and_mtime(images[0])
    level = "raw_images" if storage.policy().raw_images.mode == "copy" else "image_qc"
    assert images[0].name in _failure(_run(storage, instance, nf1_plate, [level]))
