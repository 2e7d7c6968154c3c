"""Fault injection: a real SIGKILL of a real mdp process at every named point of a write, replace, lifecycle
move, delete, release and catalog update (mdp_assets/faults.py), and one flipped byte in every kind of stored
file. After each: nothing lost (every level of the plate whole in a tier, and whole somewhere at the instant of
the crash), nothing wrong served (a damaged file fails the step that reads it, naming tier, level, plate and
file; no step is made from it), the catalog equal to the tiers, the killed run marked failed with its staging
removed, and a re-run that recovers. The figures are written to FIGURES for the README's reliability section.

One small demo plate is made once; every scenario starts from it whole and leaves it whole again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pytest

from mdp_assets.checksums import FileRecord
from mdp_assets.definitions import build_definitions
from mdp_assets.faults import FAULT_ENV, POINTS
from mdp_assets.plates.demo import DemoPlateSpec, write_demo_plate
from mdp_assets.services import runs
from mdp_assets.services.recovery import recover
from mdp_assets.services.registration import register_plate
from mdp_assets.services.repair import repair
from mdp_assets.services.reprocess import materialize_in_process, plan_plate
from mdp_assets.storage import catalog
from mdp_assets.storage.partitions import partition_key
from mdp_assets.storage.resource import MdpStorage
from mdp_assets.storage.store import BOOKKEEPING
from mdp_assets.storage.tiers import PARTITION_RECORD, DamagedPartition, fetch_verified
from mdp_assets_tests.conftest import REPOSITORY, make_deployment

pytestmark = pytest.mark.slow

PLATE = "FAULT-1"
FIGURES: dict[str, object] = {"faults_injected": [], "kinds_corrupted": [], "bytes_lost": 0, "bytes_verified": 0,
                              "checks_of_the_whole_plate": 0}
FIGURES_FILE_ENV = "MDP_FAULT_FIGURES"


def _part(level: str) -> str | None:
    return None if level == "consensus_profiles" else PLATE


class Lab:
    def __init__(self, folder: Path):
        self.folder = folder
        self.deployment = make_deployment(folder)
        self.storage = MdpStorage.from_deployment(self.deployment)
        self.instance = runs.instance_for(self.deployment)  # persistent: the killed processes share it
        self.defs = build_definitions(self.deployment, storage=self.storage)
        self.levels = sorted(self.storage.policy().levels)

    def env(self, fault: str | None) -> dict[str, str]:
        env = {**os.environ, "MDP_CONFIG": str(self.deployment.path), "DAGSTER_HOME": str(self.deployment.dagster_home),
               "PYTHONPATH": str(REPOSITORY)}
        env.pop(FAULT_ENV, None)
        if fault:
            env[FAULT_ENV] = fault
        return env

    def killed_at(self, fault: str, *command: str) -> None:
        """Run the driver until it SIGKILLs itself at `fault` (and prove it got there)."""
        done = subprocess.run([sys.executable, "-m", "mdp_assets_tests.fault_driver", *command], env=self.env(fault),
                              capture_output=True, text=True, cwd=REPOSITORY, timeout=300)
        assert done.returncode == -9, f"not killed at {fault}: exit {done.returncode}\n{done.stderr[-3000:]}"
        FIGURES["faults_injected"].append(fault)

    def copies(self, level: str) -> dict[str, dict]:
        key = partition_key(level, _part(level))
        policy = self.storage.policy()
        return {name: record for name in policy.tiers
                if (record := self.storage.tier(name, policy).read_record(key)) is not None}

    def stored_versions(self) -> dict[str, str]:
        """Each level's data version as stored now (released transient levels included)."""
        found = {}
        for level in self.levels:
            located = self.storage.store().locate(level, _part(level))
            if located is not None:
                found[level] = located.record["data_version"]
        return found


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Lab:
    lab = Lab(tmp_path_factory.mktemp("faults"))
    write_demo_plate(lab.storage.landing_path, DemoPlateSpec(barcode=PLATE, rows="BC", columns=(2, 3, 4, 5),
                                                             sites_per_well=1, image_size=128, cells_per_site=9))
    register_plate(lab.storage, PLATE)
    lab.instance.add_dynamic_partitions("plates", [PLATE])
    assert all(o.success for o in materialize_in_process(lab.instance, lab.defs, lab.storage, [PLATE], lambda _: None))
    lab.baseline = lab.stored_versions()
    lab.baseline_bytes = {level: sum(f["bytes"] for f in record["files"])
                          for level in lab.baseline for record in lab.copies(level).values()}
    yield lab
    figures = os.environ.get(FIGURES_FILE_ENV)
    if figures:
        Path(figures).write_text(json.dumps(FIGURES, indent=1))


def assert_whole(lab: Lab) -> None:
    """Nothing lost, nothing wrong served, the catalog equal to the tiers."""
    store = lab.storage.store()
    now = lab.stored_versions()
    lost = sorted(set(lab.baseline) - set(now))
    FIGURES["checks_of_the_whole_plate"] += 1
    FIGURES["bytes_lost"] += sum(lab.baseline_bytes.get(level, 0) for level in lost)
    assert not lost, f"levels lost: {lost}"
    for level, version in lab.baseline.items():
        assert now[level] == version, f"{level}: stored data version changed"
        located = store.locate(level, _part(level))
        copies = lab.copies(level)
        assert list(copies) == [located.tier], f"{level} is stored in {list(copies)}"
        if located.released:
            continue
        files = [FileRecord(**f) for f in located.record["files"]]
        try:
            fetch_verified(lab.storage.tier(located.tier), partition_key(level, _part(level)), files,
                           lab.storage.cache_root)
        except DamagedPartition:
            FIGURES["bytes_lost"] += sum(f.bytes for f in files)
            raise
        FIGURES["bytes_verified"] += sum(f.bytes for f in files)
    assert catalog_listing(lab) == tier_listing(lab), "the catalog lists what the tiers hold"
    staging = lab.storage.root / ".staging"
    assert not staging.exists() or not any(any(p.iterdir()) for p in staging.iterdir()), "no staging files left"
    hidden = [p for p in lab.storage.root.rglob(".*") if ".old-" in p.name or ".partial-" in p.name
              or ".deleting-" in p.name]
    assert not hidden, f"leftovers: {hidden}"


def tier_listing(lab: Lab) -> dict[str, set]:
    """(tier, relpath, sha256) of every data file and the partition record (its write time) in every tier."""
    found: dict[str, set] = {}
    policy = lab.storage.policy()
    for name in policy.tiers:
        tier = lab.storage.tier(name, policy)
        for key in tier.partition_keys():
            record = tier.read_record(key)
            data = set() if record.get("released_at") else {(name, f["relpath"], f["sha256"]) for f in record["files"]}
            found[key] = found.get(key, set()) | data | {(name, PARTITION_RECORD, record["written_at"])}
    return found


def catalog_listing(lab: Lab) -> dict[str, set]:
    listed: dict[str, set] = {}
    for key, rows in catalog.partition_files(lab.storage.catalog_path).items():
        listed[key] = {(t, r, created.astimezone(timezone.utc).isoformat() if r == PARTITION_RECORD else s)
                       for t, r, s, created in rows if r not in BOOKKEEPING or r == PARTITION_RECORD}
    return listed


def recover_and_rerun(lab: Lab, killed_runs_before: set[str]) -> None:
    notes = recover(lab.instance, lab.storage)
    started = lab.instance.get_run_records(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    assert not started, f"runs left STARTED after recovery: {[r.dagster_run.run_id for r in started]} ({notes})"
    for record in lab.instance.get_run_records():
        run = record.dagster_run
        if run.run_id not in killed_runs_before and run.status == dg.DagsterRunStatus.FAILURE:
            failure = [e for e in lab.instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)]
            assert failure and "process died" in failure[-1].message, failure
    outcomes = materialize_in_process(lab.instance, lab.defs, lab.storage, [PLATE], lambda _: None)
    assert all(o.success for o in outcomes), outcomes
    assert not plan_plate(lab.instance, lab.defs, lab.storage, PLATE).levels
    if outcomes:  # levels below a re-made one were made again (some carry their writing time)
        lab.baseline = lab.stored_versions()
    assert_whole(lab)


def _run_ids(lab: Lab) -> set[str]:
    return {r.dagster_run.run_id for r in lab.instance.get_run_records()}


def _whole_somewhere(lab: Lab, level: str) -> bool:
    """At the instant of the crash: a whole copy of the partition exists in some folder of some tier."""
    from mdp_assets.storage.tiers import _whole

    for name in lab.storage.policy().tiers:
        tier = lab.storage.tier(name)
        final = tier.folder(partition_key(level, _part(level)))
        candidates = [final, *final.parent.glob(f".{final.name}.*")] if final.parent.is_dir() else []
        if any(c.is_dir() and _whole(c) for c in candidates):
            return True
        record = tier.read_record(partition_key(level, _part(level)))
        if record is not None and record.get("released_at"):
            return True  # a released transient level: its record and provenance are what is kept
    return False


WRITE_FAULTS = [
    ("write.staged", "image_qc"),
    ("write.partial", "image_qc"),
    ("replace.parked", "image_qc"),  # the reported bug: the partition vanished from every tier
    ("replace.renamed", "image_qc"),
    ("write.before_catalog", "image_qc"),
    ("catalog.uncommitted", "image_qc"),
    ("write.uncommitted", "well_profiles"),  # the git tier, before its commit
]


@pytest.mark.parametrize("fault,level", WRITE_FAULTS, ids=[f for f, _ in WRITE_FAULTS])
def test_a_write_killed_at_each_point_loses_nothing_and_a_rerun_recovers(lab, fault, level):
    assert_whole(lab)
    before = _run_ids(lab)
    lab.killed_at(fault, "write", PLATE, level)
    assert _whole_somewhere(lab, level), f"{level}: no whole copy anywhere at the instant of the crash"
    # Reading it straight after the crash (before any recovery) serves the whole partition.
    stored = lab.storage.store().read(level, PLATE)
    assert stored.record["data_version"] == lab.baseline[level]
    recover_and_rerun(lab, before)


def _age_everything(lab: Lab) -> str:
    return (datetime.now(timezone.utc) + timedelta(days=800)).isoformat()


MOVE_FAULTS = ["move.copied", "move.cataloged", "delete.hidden"]


@pytest.mark.parametrize("fault", MOVE_FAULTS)
def test_a_lifecycle_move_killed_at_each_point_loses_nothing_and_the_next_run_finishes_it(lab, fault):
    assert_whole(lab)
    # image_qc lives on the internal drive for a year, then the external drive: made again, it is back on the
    # internal drive, and 800 days on it (and everything else still there) is due to move.
    materialize = lab.defs.resolve_job_def("plate_job").execute_in_process(
        instance=lab.instance, partition_key=PLATE, op_selection=["image_qc"], raise_on_error=False)
    assert materialize.success and list(lab.copies("image_qc")) == ["internal-drive"]
    before = _run_ids(lab)
    lab.killed_at(fault, "lifecycle", _age_everything(lab))
    for level in lab.baseline:
        assert _whole_somewhere(lab, level), f"{level}: no whole copy anywhere at the instant of the crash"
    assert lab.storage.store().read("image_qc", PLATE).record["data_version"] == lab.baseline["image_qc"]
    recover_and_rerun(lab, before)
    lifecycle_again(lab)
    assert list(lab.copies("image_qc")) == ["external-drive"], "the next lifecycle run moved it"


def lifecycle_again(lab: Lab) -> None:
    done = subprocess.run([sys.executable, "-m", "mdp_assets_tests.fault_driver", "lifecycle", _age_everything(lab)],
                          env=lab.env(None), capture_output=True, text=True, cwd=REPOSITORY, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_whole(lab)


def test_a_write_killed_before_removing_the_older_copy_in_a_later_tier_keeps_the_new_one(lab):
    assert_whole(lab)
    lifecycle_again(lab)
    assert list(lab.copies("image_qc")) == ["external-drive"]
    before = _run_ids(lab)
    lab.killed_at("write.tiered", "write", PLATE, "image_qc")
    assert sorted(lab.copies("image_qc")) == ["external-drive", "internal-drive"]
    recover_and_rerun(lab, before)
    assert list(lab.copies("image_qc")) == ["internal-drive"], "the new copy kept, the older one removed"


def test_a_release_killed_between_marking_and_deleting_serves_nothing_half_deleted(lab):
    assert_whole(lab)
    work = ["corrected_images", "segmentation_masks", "single_cell_features", "single_cell_crops"]
    result = lab.defs.resolve_job_def("plate_job").execute_in_process(
        instance=lab.instance, partition_key=PLATE, op_selection=work, raise_on_error=False)
    assert result.success and not lab.copies("corrected_images")["deletion"].get("released_at")
    lab.baseline = lab.stored_versions()  # made again on purpose (corrected images carry their writing time)
    lab.killed_at("release.marked", "release", PLATE)
    with pytest.raises(Exception, match="released"):
        lab.storage.store().read("corrected_images", PLATE)
    folder = _folder(lab, "corrected_images")
    assert any(p.suffix == ".tiff" for p in folder.rglob("*")), "killed before its files were deleted"
    recover_and_rerun(lab, _run_ids(lab))
    assert not any(p.suffix == ".tiff" for p in folder.rglob("*")), "the release was finished"


def test_every_named_fault_point_has_its_scenario():
    """Each point of mdp_assets/faults.py is killed at by a scenario above (each asserts the kill happened)."""
    covered = {f for f, _ in WRITE_FAULTS} | set(MOVE_FAULTS) | {"write.tiered", "release.marked"}
    assert covered == set(POINTS), sorted(set(POINTS) ^ covered)


# -- corruption --------------------------------------------------------------------------------------------

def _flip(path: Path) -> bytes:
    original = path.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0x01  # one bit, same size, mtime restored: only the content differs
    stat = path.stat()
    path.write_bytes(bytes(damaged))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return original


def _folder(lab: Lab, level: str) -> Path:
    located = lab.storage.store().locate(level, PLATE)
    return lab.storage.tier(located.tier).folder(partition_key(level, PLATE))


def _count(lab: Lab, level: str) -> int:
    return len(lab.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(level), asset_partitions=[PLATE]), limit=1000).records)


CORRUPTIONS = [
    # (stored kind, level, file, the downstream level that reads it)
    ("raw tiff", "raw_images", None, "image_qc"),  # an image the raw_images level copied into its tier
    ("npy", "illumination_functions", "DNA.npy", "corrected_images"),
    ("parquet", "single_cell_features", "table.parquet", "single_cell_qc"),
    ("ome-tiff", "segmentation_masks", None, "single_cell_features"),
    ("zarr chunk", "single_cell_crops", None, None),
    ("parquet in git", "well_profiles", "table.parquet", "profile_quality"),
]


@pytest.mark.parametrize("kind,level,relpath,reader", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_one_flipped_byte_fails_the_next_read_naming_it_and_repair_restores_it(lab, kind, level, relpath, reader):
    assert_whole(lab)
    folder = _folder(lab, level)
    if relpath is None:
        pattern = {"ome-tiff": "*.tiff", "raw tiff": "images/*.tiff"}.get(kind, "crops.zarr/c/**/*")
        relpath = next(p for p in sorted(folder.glob(pattern)) if p.is_file()).relative_to(folder).as_posix()
    original = _flip(folder / relpath)
    damaged = (folder / relpath).read_bytes()
    FIGURES["kinds_corrupted"].append(kind)
    tier = lab.storage.store().locate(level, PLATE).tier
    if reader is not None:
        # The transient level it may need is made again first, as reprocessing does.
        made_before = _count(lab, reader)
        result = lab.defs.resolve_job_def("plate_job").execute_in_process(
            instance=lab.instance, partition_key=PLATE, op_selection=_with_transient(lab, reader), raise_on_error=False)
        assert not result.success
        message = "\n".join(runs.failures(lab.instance, result.run_id))
        assert f"{level} of {PLATE} in tier {tier!r}: {relpath} (corrupt)" in message, message
        assert _count(lab, reader) == made_before, f"{reader} was made from a damaged {level}"
    with pytest.raises(DamagedPartition, match=f"{level} of {PLATE} in tier {tier!r}: {relpath}"):
        lab.storage.store().read(level, PLATE)
    assert catalog.damaged_levels(lab.storage.catalog_path, PLATE).get(level) == "corrupt"

    report = repair(lab.instance, lab.defs, lab.storage, [PLATE], [level])
    if kind == "parquet in git":  # the committed version is another verified copy
        assert report.restored and "committed history" in report.restored[0] and not report.remake, report
        assert (folder / relpath).read_bytes() == original
    else:  # no other copy: made again from upstream
        assert not report.restored and [w.levels for w in report.remake] and level in report.remake[0].levels, report
        for work in report.remake:
            result = lab.defs.resolve_job_def("plate_job").execute_in_process(
                instance=lab.instance, partition_key=PLATE, op_selection=work.levels, raise_on_error=False)
            assert result.success
        lab.baseline = lab.stored_versions()
    recover_and_rerun(lab, _run_ids(lab))  # checks every level is whole and verified, this one included
    assert (_folder(lab, level) / relpath).read_bytes() != damaged


def _with_transient(lab: Lab, level: str) -> list[str]:
    needed = [level]
    for name in ("corrected_images",):
        if level in ("segmentation_masks", "single_cell_features", "single_cell_crops") and \
                lab.storage.store().locate(name, PLATE).released:
            needed.insert(0, name)
    return needed


def test_repair_restores_from_the_copy_a_lifecycle_move_left_in_another_tier(lab):
    assert_whole(lab)
    lifecycle_again(lab)  # everything that is due has moved: next, image_qc alone is
    materialize = lab.defs.resolve_job_def("plate_job").execute_in_process(
        instance=lab.instance, partition_key=PLATE, op_selection=["image_qc"], raise_on_error=False)
    assert materialize.success
    lab.killed_at("move.cataloged", "lifecycle", _age_everything(lab))
    assert sorted(lab.copies("image_qc")) == ["external-drive", "internal-drive"]
    moved = lab.storage.tier("external-drive").folder(partition_key("image_qc", PLATE)) / "table.parquet"
    original = _flip(moved)
    report = repair(lab.instance, lab.defs, lab.storage, [PLATE], ["image_qc"])
    assert report.restored == [f"image_qc of {PLATE} in 'external-drive': table.parquet restored from tier "
                               f"'internal-drive' (sha256 {report.restored[0].rsplit('sha256 ', 1)[1]}"], report
    assert not report.remake and moved.read_bytes() == original
    recover_and_rerun(lab, _run_ids(lab))
    assert list(lab.copies("image_qc")) == ["external-drive"]


def test_mdp_repair_submits_the_remake_through_the_run_queue(lab, monkeypatch, capsys):
    """The command: a damaged level no copy can restore is made again by a run submitted to the deployment's
    queue (tags mdp/command=repair and the plate), exactly that level."""
    import yaml

    from mdp_assets.cli import main
    from mdp_assets.services.instance import instance_config

    assert_whole(lab)
    home = lab.deployment.dagster_home
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance_config(lab.deployment)))  # the shipped queue
    _flip(_folder(lab, "illumination_functions") / "DNA.npy")
    monkeypatch.setenv("MDP_CONFIG", str(lab.deployment.path))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    try:
        assert main(["repair", PLATE, "--level", "illumination_functions", "--no-wait"]) == 0
        printed = capsys.readouterr().out
        assert "illumination_functions (stored files corrupt" in printed, printed
        queued = dg.DagsterInstance.from_config(str(home)).get_run_records(
            filters=dg.RunsFilter(tags={"mdp/command": "repair", "mdp/plate": PLATE}))
        assert len(queued) == 1 and queued[0].dagster_run.status == dg.DagsterRunStatus.QUEUED
        assert queued[0].dagster_run.job_name == "plate_job"
        selected = {key.path[-1] for key in queued[0].dagster_run.asset_selection or ()} or \
            set(queued[0].dagster_run.step_keys_to_execute or ())
        assert "illumination_functions" in selected and "single_cell_features" not in selected, selected
        lab.instance.delete_run(queued[0].dagster_run.run_id)  # a daemon would run it; the suite runs it below
    finally:
        (home / "dagster.yaml").unlink()
    recover_and_rerun(lab, _run_ids(lab))  # what the queued run does: made again, verified whole


def test_the_readme_states_the_figures_this_suite_checks():
    import re

    text = (REPOSITORY / "README.md").read_text()
    stated = {name: int(value) for name, value in re.findall(r"(faults injected|kinds corrupted|bytes lost): \*\*(\d+)\*\*", text)}
    assert stated == {"faults injected": len(POINTS), "kinds corrupted": len(CORRUPTIONS) + 1,  # + Parquet in S3
                      "bytes lost": FIGURES["bytes_lost"]}, stated
    assert FIGURES["bytes_lost"] == 0


def test_an_s3_object_changed_in_the_bucket_is_refused_as_it_downloads(tmp_path, instance, s3_endpoint, s3_credentials):
    """The S3 tier hashes each object while it streams into the local cache: a changed object is never cached
    or read, and the step that needed it fails naming it."""
    import uuid

    import boto3
    import yaml

    from mdp_assets.storage.policy import shipped_policy
    from mdp_assets_tests.conftest import defs_for

    bucket = f"mdp-{uuid.uuid4().hex[:8]}"
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    policy = yaml.safe_load(shipped_policy("s3").read_text())
    policy["tiers"]["cloud"].update(bucket=bucket, endpoint_url=s3_endpoint, region="us-east-1")
    (tmp_path / "s3.yaml").write_text(yaml.safe_dump(policy))
    storage = MdpStorage(data_root=str(tmp_path / "data"), policy_file=str(tmp_path / "s3.yaml"))
    write_demo_plate(storage.landing_path, DemoPlateSpec(barcode="S3P", rows="B", columns=(2, 3), sites_per_well=1,
                                                         image_size=96, cells_per_site=6))
    register_plate(storage, "S3P")
    instance.add_dynamic_partitions("plates", ["S3P"])
    job = defs_for(storage).resolve_job_def("plate_job")
    assert job.execute_in_process(instance=instance, partition_key="S3P", op_selection=["raw_images"]).success
    key = "cloud/raw_images/S3P/table.parquet"
    body = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0x01
    client.put_object(Bucket=bucket, Key=key, Body=bytes(body))  # bit rot, or a person's overwrite
    FIGURES["kinds_corrupted"].append("parquet in s3")

    result = job.execute_in_process(instance=instance, partition_key="S3P", op_selection=["image_qc"],
                                    raise_on_error=False)
    assert not result.success
    message = "\n".join(runs.failures(instance, result.run_id))
    assert "raw_images of S3P in tier 'cloud': table.parquet (corrupt)" in message, message
    assert not result.get_asset_materialization_events()
    assert not (storage.cache_root / "cloud" / "raw_images" / "S3P").exists(), "nothing damaged was cached"
