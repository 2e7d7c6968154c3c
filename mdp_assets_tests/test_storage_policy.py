"""The storage policy: tiers, origin rules, size limits, the git and S3 tiers, the lifecycle and costs."""

import json
import stat
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest
import yaml

from mdp_assets.checksums import record_files
from mdp_assets.config import StepSettings
from mdp_assets.definitions import build_definitions
from mdp_assets.errors import MdpError
from mdp_assets.plates.demo import DemoPlateSpec, write_demo_plate
from mdp_assets.services.lifecycle import run_lifecycle
from mdp_assets.services.registration import register_plate
from mdp_assets.services.reprocess import materialize_in_process
from mdp_assets.storage import tiers
from mdp_assets.storage.io_manager import PlateLevelIOManager
from mdp_assets.storage.partitions import staged_output
from mdp_assets.storage.policy import load_policy, shipped_policy
from mdp_assets.storage.resource import MdpStorage
from mdp_assets_tests.conftest import s3_policy_storage, defs_for, make_deployment, register_toy_plate, stored

plates = dg.DynamicPartitionsDefinition(name="plates")
ORIGINS = {"internal": ["private", "public"], "collaborator-academic": ["private"],
           "collaborator-industry": ["private"], "public": ["private", "public"]}


def _policy(tmp_path, tiers_spec, levels):
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump({"name": "test", "tiers": tiers_spec, "levels": levels, "origins": ORIGINS}))
    return MdpStorage(data_root=str(tmp_path / "data"), policy_file=str(path))


def _fs(path, access="private", **extra):
    return {"backend": "filesystem", "path": path, "access": access, "longevity": "high", "usage_speed": "instant", **extra}


def _toy(name, origin="internal", patient=False, released=False, payload=b"", code_version="v1"):
    @dg.asset(name=name, partitions_def=plates, code_version=code_version)
    def toy(context: dg.AssetExecutionContext, storage: MdpStorage) -> dg.Output:
        # The toy plate is registered with this origin, as the intake would have registered it.
        register_toy_plate(storage, context.partition_key, origin, patient, released)
        table = pd.DataFrame({"Metadata_Well": ["A01", "A02"], "x": [1.0, 2.0]})
        output = storage.table_output(name, table)
        if payload:
            (output.value.root / "blob.bin").write_bytes(payload)
            return staged_output(output.value.root, dict(output.metadata), output.value.table_summary)
        return output

    return toy


def _materialize(storage, instance, asset, partition="P1"):
    instance.add_dynamic_partitions("plates", [partition])
    resources = {"storage": storage, "io_manager": PlateLevelIOManager(storage=storage, settings=StepSettings())}
    return dg.materialize([asset], partition_key=partition, instance=instance, resources=resources, raise_on_error=False)


def _error(result) -> str:
    failure = next(e for e in result.all_events if e.is_step_failure)
    error = failure.step_failure_data.error
    return (error.cause or error).message


def _nothing_anywhere(storage):
    registry = storage.registry().root  # the plate's registration is not data written to a tier
    files = [p for p in storage.root.rglob("*") if p.is_file() and not p.name.startswith("catalog.duckdb") and ".git" not in p.parts
             and registry not in p.parents]
    return files == []


def test_a_policy_that_breaks_its_rules_is_rejected_on_load(tmp_path):
    data = yaml.safe_load(shipped_policy("local").read_text())
    data["identifiable_patient_data_access"] = ["private", "public"]
    data["origins"]["collaborator-industry"] = ["private", "public"]
    data["levels"]["raw_images"] = [{"tier": "tape"}]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(MdpError) as error:
        load_policy(path)
    message = str(error.value)
    assert str(path) in message
    assert "rule 'identifiable patient data are never shared'" in message
    assert "rule 'collaborator data stay private unless released': origins.collaborator-industry" in message
    assert "levels.raw_images stage 1 names unknown tier 'tape'" in message
    with pytest.raises(MdpError, match="identifiable patient data are never shared"):
        build_definitions(make_deployment(tmp_path, storage={"policy": str(path)}))


@pytest.mark.parametrize(
    "origin, patient, released, why",
    [
        ("collaborator-academic", False, False, "its origin is 'collaborator-academic' and it is not released"),
        ("internal", True, False, "it holds identifiable patient data"),
    ],
)
def test_origin_rules_refuse_a_public_tier_and_write_nothing(tmp_path, instance, origin, patient, released, why):
    storage = _policy(tmp_path, {"archive": _fs("archive", access="public")}, {"shared": [{"tier": "archive"}]})
    result = _materialize(storage, instance, _toy("shared", origin, patient, released))
    assert not result.success
    message = _error(result)
    assert "shared of P1 may not be written to tier 'archive' (public)" in message and why in message
    assert _nothing_anywhere(storage)


def test_released_collaborator_plate_may_go_public(tmp_path, instance):
    storage = _policy(tmp_path, {"archive": _fs("archive", access="public")}, {"shared": [{"tier": "archive"}]})
    result = _materialize(storage, instance, _toy("shared", "collaborator-academic", released=True))
    assert result.success and (stored(storage, "shared", "P1") / "table.parquet").exists()


@pytest.mark.parametrize("origin, patient, mode", [("collaborator-industry", False, "0640"),
                                                  ("internal", True, "0600"), ("internal", False, None)])
def test_restricted_plates_files_have_no_world_access(tmp_path, instance, origin, patient, mode):
    tier = _fs("drive", **({"restricted_file_mode": mode} if mode else {}))
    storage = _policy(tmp_path, {"drive": tier}, {"level": [{"tier": "drive"}]})
    assert _materialize(storage, instance, _toy("level", origin, patient)).success
    folder = stored(storage, "level", "P1")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.rglob("*")]}
    if mode is None:  # an internal plate keeps the process's usual permissions
        assert modes["table.parquet"] & 0o004
    else:
        assert all(m & 0o007 == 0 for m in modes.values()), modes
        assert modes["table.parquet"] == int(mode, 8) and modes[folder.name] & 0o700 == 0o700


def test_git_tier_commits_and_enforces_the_per_file_limit(tmp_path, instance):
    git_tier = {"backend": "git", "path": "repo", "access": "private", "longevity": "high", "usage_speed": "instant",
                "version_control": True, "limits": {"per_file_bytes": 4000}}
    storage = _policy(tmp_path, {"repo": git_tier}, {"profiles": [{"tier": "repo"}], "big": [{"tier": "repo"}]})
    assert _materialize(storage, instance, _toy("profiles", code_version="v7")).success
    repo = storage.tier("repo")
    assert repo.log("profiles/P1") == ["mdp: profiles of P1, code version v7"]
    status = subprocess.run(["git", "-C", str(repo.root), "status", "--porcelain"], capture_output=True, text=True)
    assert status.stdout == "", "everything stored is committed"

    result = _materialize(storage, instance, _toy("big", payload=b"x" * 5000))
    assert not result.success
    assert "a file of 5000 bytes exceeds tier 'repo''s per-file limit of 4000 bytes" in _error(result)
    assert not (repo.root / "big").exists() and repo.log("big/P1") == []


def _aging_storage(tmp_path):
    return _policy(tmp_path, {"fast": _fs("fast"), "slow": _fs("slow")},
                   {"aging": [{"tier": "fast", "days": 1}, {"tier": "slow"}]})


def test_lifecycle_move_interrupted_between_copy_and_delete_is_finished_on_rerun(tmp_path, instance, monkeypatch):
    storage = _aging_storage(tmp_path)
    assert _materialize(storage, instance, _toy("aging")).success
    record = json.loads((storage.tier("fast").folder("aging/P1") / "_partition.json").read_text())
    later = datetime.now(timezone.utc) + timedelta(days=40)

    original_delete = tiers.FilesystemTier.delete

    def killed(self, key, message=""):
        raise KeyboardInterrupt("killed between copy and delete")

    monkeypatch.setattr(tiers.FilesystemTier, "delete", killed)
    with pytest.raises(KeyboardInterrupt):
        run_lifecycle(storage, later)
    assert storage.tier("fast").read_record("aging/P1") and storage.tier("slow").read_record("aging/P1")

    monkeypatch.setattr(tiers.FilesystemTier, "delete", original_delete)
    report = run_lifecycle(storage, later)
    assert any("finished the interrupted move fast -> slow" in note for note in report.notes), report
    assert storage.tier("fast").read_record("aging/P1") is None and not storage.tier("fast").folder("aging/P1").exists()
    moved = storage.tier("slow").read_record("aging/P1")
    assert moved["tier"] == "slow" and moved["moves"][-1]["from"] == "fast" and moved["data_version"] == record["data_version"]
    copied = {r.relpath: r.sha256 for r in record_files(storage.tier("slow").folder("aging/P1"))}
    assert all(copied[f["relpath"]] == f["sha256"] for f in record["files"])
    assert run_lifecycle(storage, later).moves == [], "idempotent"


def test_corrupted_copy_keeps_the_source_and_raises(tmp_path, instance, monkeypatch):
    storage = _aging_storage(tmp_path)
    assert _materialize(storage, instance, _toy("aging")).success
    source = storage.tier("fast").folder("aging/P1")
    before = {r.relpath: r.sha256 for r in record_files(source)}
    real_copytree = tiers.shutil.copytree

    def corrupting_copytree(src, dst, **kwargs):
        real_copytree(src, dst, **kwargs)
        target = dst / "table.parquet"
        target.write_bytes(target.read_bytes()[:-1] + b"\x00")

    monkeypatch.setattr(tiers.shutil, "copytree", corrupting_copytree)
    report = run_lifecycle(storage, datetime.now(timezone.utc) + timedelta(days=40))
    assert report.moves == [] and any("checksum mismatch" in f for f in report.failures), report
    assert {r.relpath: r.sha256 for r in record_files(source)} == before, "the source is kept as it was"
    slow = storage.tier("slow").root
    assert not slow.exists() or not [p for p in slow.rglob("*") if p.is_file()], "no copy, no partial copy"


def test_active_and_pinned_plates_stay_in_the_fast_tier(tmp_path, instance):
    from mdp_assets.storage import catalog

    storage = _aging_storage(tmp_path)
    assert _materialize(storage, instance, _toy("aging"), "P1").success
    assert _materialize(storage, instance, _toy("aging"), "P2").success
    soon = datetime.now(timezone.utc) + timedelta(days=2)
    report = run_lifecycle(storage, soon)  # due (1 day), but both plates were materialized < 30 days ago
    assert report.moves == [] and sum("under active analysis" in n for n in report.notes) == 2
    catalog.pin(storage.catalog_path, "P1", "figure 3 in review")
    report = run_lifecycle(storage, soon + timedelta(days=40))
    assert [m["partition"] for m in report.moves] == ["P2"]
    assert any("P1" in n and "pinned" in n for n in report.notes)


@pytest.mark.slow
def test_s3_tier_written_read_back_and_moved_to_a_drive(tmp_path, instance, s3_endpoint, s3_credentials):
    storage, client, bucket = s3_policy_storage(tmp_path, s3_endpoint)
    write_demo_plate(storage.landing_path, DemoPlateSpec(barcode="S3P", rows="B", columns=(2, 3, 4, 5),
                                                         sites_per_well=1, image_size=128, cells_per_site=9))
    register_plate(storage, "S3P")
    instance.add_dynamic_partitions("plates", ["S3P"])
    defs = defs_for(storage)
    result = defs.resolve_job_def("plate_job").execute_in_process(
        instance=instance, partition_key="S3P", op_selection=["raw_images", "image_qc"])
    assert result.success  # image_qc read raw_images back from S3
    events = {e.materialization.asset_key.to_user_string(): e.materialization for e in result.get_asset_materialization_events()}
    raw = events["raw_images"].metadata
    assert raw["tier"].value == "cloud" and raw["uri"].value == f"s3://{bucket}/cloud/raw_images/S3P"
    listed = client.list_objects_v2(Bucket=bucket, Prefix="cloud/raw_images/S3P/")["Contents"]
    names = {o["Key"].removeprefix("cloud/raw_images/S3P/") for o in listed}
    assert {n for n in names if not n.startswith("images/")} == {"table.parquet", "_partition.json", "ro-crate-metadata.json"}
    assert len([n for n in names if n.startswith("images/")]) == 4 * 5, "the plate's images are in the bucket too"
    sha_in_s3 = json.loads(client.get_object(Bucket=bucket, Key="cloud/raw_images/S3P/_partition.json")["Body"].read())

    report = run_lifecycle(storage, datetime.now(timezone.utc) + timedelta(days=31))
    assert [(m["asset"], m["from"], m["to"]) for m in report.moves] == [("raw_images", "cloud", "internal-drive")]
    assert "Contents" not in client.list_objects_v2(Bucket=bucket, Prefix="cloud/raw_images/S3P/"), "source deleted"
    local = stored(storage, "raw_images", "S3P")
    assert {r.relpath: r.sha256 for r in record_files(local) if r.relpath not in ("_partition.json", "ro-crate-metadata.json")} == {
        f["relpath"]: f["sha256"] for f in sha_in_s3["files"]}
    with duckdb.connect(str(storage.catalog_path), read_only=True) as con:
        assert con.execute("SELECT DISTINCT tier FROM stored_files WHERE asset_key = 'raw_images'").fetchall() == [("internal-drive",)]
        assert con.execute("SELECT from_tier, to_tier FROM moves").fetchall() == [("cloud", "internal-drive")]


@pytest.mark.slow
def test_storage_costs_price_exactly_what_is_stored(tmp_path, instance):
    storage = MdpStorage(data_root=str(tmp_path / "data"))
    write_demo_plate(storage.landing_path, DemoPlateSpec(barcode="COST", rows="BC", columns=(2, 3, 4, 5),
                                                         sites_per_well=1, image_size=128, cells_per_site=9))
    register_plate(storage, "COST")
    instance.add_dynamic_partitions("plates", ["COST"])
    defs = defs_for(storage)
    assert all(o.success for o in materialize_in_process(instance, defs, storage, ["COST"], report=lambda _: None))
    assert sorted(p.name for p in stored(storage, "corrected_images", "COST").iterdir()) == [
        "_partition.json", "ro-crate-metadata.json"], "the transient level is gone once its readers are made"
    result = defs.resolve_job_def("storage_costs_job").execute_in_process(instance=instance)
    assert result.success
    costs = pd.read_parquet(stored(storage, "storage_costs", None) / "table.parquet")
    policy = storage.policy()
    on_disk = {}
    for name in policy.tiers:
        root = storage.tier(name, policy).root
        if root.is_dir():
            on_disk[name] = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and ".git" not in p.parts
                                and "storage_costs" not in p.parts)
    by_tier = costs.groupby("tier")["bytes"].sum().to_dict()
    assert by_tier == {k: v for k, v in on_disk.items() if v}
    expected_one_time = sum(b / 1e12 * policy.tiers[t].cost.one_time_per_tb for t, b in by_tier.items())
    assert costs["one_time_cost_usd"].sum() == pytest.approx(expected_one_time)
    projection = pd.read_parquet(stored(storage, "storage_costs", None) / "projection.parquet")
    month4 = projection[projection["month"] == 4].set_index("tier")["bytes"]
    masks = costs[(costs["level"] == "segmentation_masks")]["bytes"].sum()
    assert month4.get("external-drive", 0) >= masks, "masks move to the external drive after 90 days"
    assert (stored(storage, "storage_costs", None) / "storage_costs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _write_partitions(root: str, writer: int, count: int) -> None:
    """One writer process: `count` partitions into the git tier at `root`, as the IO manager writes them."""
    from mdp_assets.storage.tiers import PARTITION_RECORD, GitTier

    tier = GitTier("profiles-git", Path(root))
    for n in range(count):
        staged = Path(root).parent / "staging" / f"w{writer}-{n}"
        staged.mkdir(parents=True)
        (staged / "table.parquet").write_bytes(f"writer {writer} partition {n}".encode())
        records = record_files(staged)
        (staged / PARTITION_RECORD).write_text(json.dumps({"files": [r.__dict__ for r in records]}))
        tier.write(staged, f"level/W{writer}-{n}", records, move=True, message=f"w{writer} n{n}")


def test_concurrent_writers_to_the_git_tier_all_commit(tmp_path):
    """Four processes write ten partitions each at once: every one is committed (git's index.lock is taken in
    turns), none is left uncommitted."""
    import multiprocessing

    root = tmp_path / "repo"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_partitions, args=(str(root), w, 10)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
    assert [p.exitcode for p in workers] == [0, 0, 0, 0]
    log = subprocess.run(["git", "-C", str(root), "log", "--format=%s"], capture_output=True, text=True).stdout
    assert len(log.splitlines()) == 40
    assert subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True,
                          text=True).stdout.strip() == ""
