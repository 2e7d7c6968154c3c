"""Containment and limits: CLI paths stay in the landing zone; alias bombs and huge manifests are refused at
once by the sensor and the run alike; error messages are bounded in size."""

import time

import dagster as dg
import pytest

from mdp_assets.cli import main
from mdp_assets.errors import MAX_MESSAGE_CHARS, MdpError
from mdp_assets.plates.demo import DemoPlateSpec, write_demo_plate
from mdp_assets.plates.intake import assess_plate, snapshot_landing_zone
from mdp_assets.storage.policy import load_policy
from mdp_assets_tests.conftest import defs_for

SPEC = DemoPlateSpec(barcode="DEMO-LIMITS", rows="B", columns=(2, 3), sites_per_well=1, image_size=128, cells_per_site=9)
BILLION_LAUGHS = "\n".join(["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"] +
                           [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)])


def _sensor_and_run(storage, instance, plate):
    """The sensor's judgement and the run's failure of a plate folder, with how long the run took."""
    (snapshot,) = [s for s in snapshot_landing_zone(storage.landing_path) if s.name == plate]
    sensor = assess_plate(snapshot, now_s=time.time() + 3600, quiet_period_s=0)
    instance.add_dynamic_partitions("plates", [plate])
    started = time.monotonic()
    result = defs_for(storage).resolve_job_def("plate_job").execute_in_process(
        instance=instance, partition_key=plate, op_selection=["raw_images"], raise_on_error=False)
    took = time.monotonic() - started
    failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error
    return sensor, (failure.cause or failure).message, took, result


def test_an_alias_bomb_manifest_is_refused_at_once_by_sensor_and_run(storage, instance):
    folder = write_demo_plate(storage.landing_path, SPEC)
    (folder / "plate.yaml").write_text(BILLION_LAUGHS + "\n" + (folder / "plate.yaml").read_text())
    sensor, message, took, _ = _sensor_and_run(storage, instance, SPEC.barcode)
    assert sensor.status == "rejected" and "YAML anchors and aliases are not allowed" in sensor.reason
    assert "YAML anchors and aliases are not allowed (line 1)" in message and str(folder / "plate.yaml") in message
    assert took < 10 and len(message) < 1000


def test_a_50_mb_manifest_is_refused_unread_and_its_text_stays_out_of_the_event_log(storage, instance):
    folder = write_demo_plate(storage.landing_path, SPEC)
    manifest = folder / "plate.yaml"
    manifest.write_text(manifest.read_text() + "# " + "x" * (50 * 1024 * 1024) + "\n")
    sensor, message, took, result = _sensor_and_run(storage, instance, SPEC.barcode)
    assert sensor.status == "rejected" and "plate manifest is over 262144 bytes" in sensor.reason
    assert "plate manifest is over 262144 bytes; refusing to read it" in message and took < 10
    logged = sum(len(str(e.message or "")) + len(str(e.event_specific_data or "")) for e in result.all_events)
    assert logged < 200_000, "the event log holds no manifest text"


def test_error_messages_are_bounded():
    message = str(MdpError("y" * 10_000_000, path="/z" * 10_000))
    assert len(message) < MAX_MESSAGE_CHARS + 1200 and "more characters left out" in message


def test_a_policy_with_aliases_is_refused(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(BILLION_LAUGHS)
    with pytest.raises(MdpError, match="storage policy: YAML anchors and aliases are not allowed"):
        load_policy(path)


@pytest.mark.parametrize("argv", [["demo-plate", "../../escaped"], ["register", ".."], ["provenance", "../x", "raw_images"],
                                  ["pin", "../x"]])
def test_cli_plate_paths_stay_inside_the_landing_zone(deployment, tmp_path, capsys, argv):
    before = sorted(p for p in tmp_path.parent.rglob("*") if "escaped" in p.name)
    assert main(["--config", str(deployment.path), *argv]) == 2
    assert "is not a safe plate id" in capsys.readouterr().err
    assert sorted(p for p in tmp_path.parent.rglob("*") if "escaped" in p.name) == before
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()
