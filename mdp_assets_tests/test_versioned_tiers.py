"""The versioned long-term tiers against real servers on 127.0.0.1: the dvc tier (the `dvc` CLI, its remote on
moto's S3 server) and the git-lfs tier (Debian's `git-lfs` client against a giftless LFS server, started here in
its own process group and stopped by its PID). Both tiers' git repositories push to bare repositories.

One small demo plate is made through every level under policies/versioned.yaml, pointed at these servers, with
one change: its well profiles live a year in the git tier, a year in the git-lfs tier, then for good in the dvc
tier, so the same profiles partition travels into each versioned tier and back. Its consensus goes straight
into the git-lfs tier, as shipped. Each test leaves the plate whole for the next."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import pytest
import yaml

from mdp_assets.definitions import build_definitions
from mdp_assets.errors import MdpError
from mdp_assets.faults import FAULT_ENV
from mdp_assets.plates.demo import DemoPlateSpec, write_demo_plate
from mdp_assets.services import runs
from mdp_assets.services.catalog import verify_stored_files
from mdp_assets.services.lifecycle import run_lifecycle
from mdp_assets.services.registration import register_plate
from mdp_assets.services.reprocess import materialize_in_process
from mdp_assets.storage import catalog
from mdp_assets.storage.partitions import partition_key
from mdp_assets.storage.policy import load_policy, shipped_policy
from mdp_assets.storage.resource import MdpStorage
from mdp_assets.storage.tiers import DamagedPartition
from mdp_assets_tests.conftest import REPOSITORY, make_deployment

TOOLS = REPOSITORY / ".mdp" / "versioned"  # make versioned-tools
PLATE = "VERS-1"
PROFILES = partition_key("well_profiles", PLATE)
CONSENSUS = partition_key("consensus_profiles", None)
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _need(found: bool, what: str) -> None:
    if not found:
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide {what}")
        pytest.skip(f"{what} is not installed here")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def lfs_server(tmp_path_factory):
    """A giftless Git LFS server on 127.0.0.1 (local storage, anonymous read-write), in its own process group."""
    _need(shutil.which("git-lfs") is not None, "Debian's git-lfs (deploy/system-packages.sh)")
    _need((TOOLS / "bin" / "dvc").exists(), f"the versioned-tier tools in {TOOLS} (make versioned-tools)")
    folder = tmp_path_factory.mktemp("lfs-server")
    config = {"AUTH_PROVIDERS": ["giftless.auth.allow_anon:read_write"],
              "TRANSFER_ADAPTERS": {"basic": {"factory": "giftless.transfer.basic_streaming:factory", "options": {
                  "storage_class": "giftless.storage.local_storage:LocalStorage",
                  "storage_options": {"path": str(folder / "objects")}}}}}
    port = _free_port()
    log = open(folder / "server.log", "wb")
    server = subprocess.Popen(
        [str(TOOLS / "bin" / "python"), "-m", "flask", "--app", "giftless.wsgi_entrypoint", "run",
         "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "GIFTLESS_CONFIG_STR": json.dumps(config)}, cwd=folder, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, (folder / "server.log").read_text()[-2000:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "giftless did not start"
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}", folder / "objects"
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # its own group: the server and nothing else
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


class Lab:
    def __init__(self, folder: Path, s3_endpoint: str, lfs_url: str, lfs_objects: Path):
        self.folder, self.lfs_objects = folder, lfs_objects
        self.bucket = f"mdp-{uuid.uuid4().hex[:8]}"
        self.s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                               aws_secret_access_key="testing")
        self.s3.create_bucket(Bucket=self.bucket)
        policy = yaml.safe_load(shipped_policy("versioned").read_text())
        for name in ("profiles-dvc", "profiles-lfs"):
            subprocess.run(["git", "init", "-q", "--bare", str(folder / f"{name}.git")], check=True)
        policy["tiers"]["profiles-dvc"].update(remote_url=f"s3://{self.bucket}/dvc", endpoint_url=s3_endpoint,
                                               region="us-east-1", git_remote=str(folder / "profiles-dvc.git"))
        policy["tiers"]["profiles-lfs"].update(lfs_url=f"{lfs_url}/mdp/profiles", git_remote=str(folder / "profiles-lfs.git"))
        policy["levels"]["well_profiles"] = [{"tier": "profiles-git", "days": 365}, {"tier": "profiles-lfs", "days": 365},
                                             {"tier": "profiles-dvc"}]
        (folder / "versioned.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
        self.deployment = make_deployment(folder, storage={"policy": str(folder / "versioned.yaml"),
                                                           "versioned_tools": str(TOOLS)})
        self.storage = MdpStorage.from_deployment(self.deployment)
        self.instance = runs.instance_for(self.deployment)  # persistent: the killed processes share it
        self.defs = build_definitions(self.deployment, storage=self.storage)

    def env(self, fault: str | None = None) -> dict[str, str]:
        env = {**os.environ, **CREDENTIALS, "MDP_CONFIG": str(self.deployment.path),
               "DAGSTER_HOME": str(self.deployment.dagster_home), "PYTHONPATH": str(REPOSITORY)}
        env.pop(FAULT_ENV, None)
        return {**env, FAULT_ENV: fault} if fault else env

    def run(self, *command: str, fault: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *command], env=self.env(fault), capture_output=True, text=True,
                              cwd=REPOSITORY, timeout=600)

    def lifecycle(self, days: int, fault: str | None = None) -> None:
        when = (datetime.now(timezone.utc) + timedelta(days=days)).isoformat()
        done = self.run("-m", "mdp_assets_tests.fault_driver", "lifecycle", when, fault=fault)
        expected = -signal.SIGKILL if fault else 0
        assert done.returncode == expected, f"lifecycle ({fault}): exit {done.returncode}\n{done.stderr[-3000:]}"

    def copies(self, key: str) -> list[str]:
        policy = self.storage.policy()
        return [name for name in policy.tiers if self.storage.tier(name, policy).read_record(key) is not None]

    def rows(self, key: str) -> dict[str, tuple]:
        """relpath -> (tier, sha256, content_hash, tier_commit, status) as the catalog lists them."""
        asset, _, partition = key.partition("/")
        _, rows = catalog.query(self.storage.catalog_path, "SELECT relpath, tier, sha256, content_hash, tier_commit, "
                                f"status FROM stored_files WHERE asset_key = '{asset}' AND partition = '{partition}'")
        return {relpath: tuple(rest) for relpath, *rest in rows}

    def repository_commit(self, tier: str, key: str) -> str:
        root = self.storage.tier(tier).root
        return subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%H", "--", f"{key}/_partition.json"],
                              capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def lab(tmp_path_factory, s3_endpoint, lfs_server):
    with pytest.MonkeyPatch.context() as patch:
        for name, value in CREDENTIALS.items():
            patch.setenv(name, value)  # what the dvc tier reads when it is opened (access_key_id_env, ...)
        lab = Lab(tmp_path_factory.mktemp("versioned"), s3_endpoint, *lfs_server)
        write_demo_plate(lab.storage.landing_path, DemoPlateSpec(barcode=PLATE, rows="BC", columns=(2, 3, 4, 5),
                                                                 sites_per_well=1, image_size=128, cells_per_site=9))
        register_plate(lab.storage, PLATE)
        lab.instance.add_dynamic_partitions("plates", [PLATE])
        assert all(o.success for o in materialize_in_process(lab.instance, lab.defs, lab.storage, [PLATE], lambda _: None))
        record = lab.storage.tier("profiles-git").read_record(PROFILES)
        lab.profile_bytes = {f["relpath"]: (lab.storage.tier("profiles-git").folder(PROFILES) / f["relpath"]).read_bytes()
                             for f in record["files"]}
        yield lab


def test_the_versioned_policy_loads_and_each_tier_needs_its_store(tmp_path, monkeypatch):
    policy = load_policy(shipped_policy("versioned"))
    assert (policy.tiers["profiles-dvc"].backend, policy.tiers["profiles-lfs"].backend) == ("dvc", "git-lfs")
    assert [s.tier for s in policy.stages("well_profiles")] == ["profiles-git", "profiles-dvc"]
    assert [s.tier for s in policy.stages("consensus_profiles")] == ["profiles-lfs"]
    assert not policy.tiers["profiles-dvc"].holds_identifiable_patient_data, "a store outside the lab, by default"
    local = load_policy(shipped_policy("local"))
    assert not {t.backend for t in local.tiers.values()} & {"dvc", "git-lfs"}, "make demo needs neither"

    data = yaml.safe_load(shipped_policy("versioned").read_text())
    del data["tiers"]["profiles-dvc"]["remote_url"], data["tiers"]["profiles-lfs"]["lfs_url"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(MdpError) as refused:
        load_policy(tmp_path / "bad.yaml")
    assert "a dvc tier needs a remote_url" in str(refused.value) and "a git-lfs tier needs an lfs_url" in str(refused.value)

    # The DVC remote's credentials come from the variables the policy names, read when the tier is opened.
    data = yaml.safe_load(shipped_policy("versioned").read_text())
    data["tiers"]["profiles-dvc"].update(access_key_id_env="LAB_DVC_KEY", secret_access_key_env="LAB_DVC_SECRET")
    (tmp_path / "versioned.yaml").write_text(yaml.safe_dump(data))
    storage = MdpStorage(data_root=str(tmp_path / "data"), policy_file=str(tmp_path / "versioned.yaml"),
                         versioned_tools=str(tmp_path / "no-such-env"))
    monkeypatch.setenv("LAB_DVC_KEY", "key-1")
    monkeypatch.setenv("LAB_DVC_SECRET", "secret-1")
    tier = storage.tier("profiles-dvc")
    assert (tier.env["AWS_ACCESS_KEY_ID"], tier.env["AWS_SECRET_ACCESS_KEY"]) == ("key-1", "secret-1")
    assert tier.dvc == "dvc", "no built environment: dvc from PATH"
    monkeypatch.setenv("LAB_DVC_KEY", "key-2")
    assert storage.tier("profiles-dvc").env["AWS_ACCESS_KEY_ID"] == "key-2"
    assert not (tmp_path / "data" / "profiles-dvc").exists(), "opening a tier writes nothing"


def _read_back(lab: Lab, key: str, expected: dict[str, bytes]) -> dict:
    """The partition read from wherever it is now (downloaded, each file's sha256 checked): its bytes equal."""
    asset, _, partition = key.partition("/")
    stored = lab.storage.store().read(asset, None if partition == "__all__" else partition)
    assert {f.relpath: stored.path(f.relpath).read_bytes() for f in stored.files} == expected
    return stored.record


@pytest.mark.slow
def test_profiles_round_trip_through_the_git_lfs_and_dvc_tiers(lab):
    assert lab.copies(PROFILES) == ["profiles-git"]
    assert lab.copies(CONSENSUS) == ["profiles-lfs"], "the consensus is written straight to the git-lfs tier"

    # A year on: git -> git-lfs. The data files are LFS objects on the server, named by their sha256.
    lab.lifecycle(400)
    assert lab.copies(PROFILES) == ["profiles-lfs"]
    record = _read_back(lab, PROFILES, lab.profile_bytes)
    lfs = lab.storage.tier("profiles-lfs")
    for relpath, body in lab.profile_bytes.items():
        oid = hashlib.sha256(body).hexdigest()
        assert record["versioned"]["objects"][relpath] == f"sha256:{oid}"
        assert (lab.lfs_objects / "mdp" / "profiles" / oid).read_bytes() == body, "the server holds the object"
        assert (lfs.folder(PROFILES) / relpath).read_bytes().startswith(b"version https://git-lfs"), "a pointer only"
    commit = lab.repository_commit("profiles-lfs", PROFILES)
    assert record["versioned"]["commit"] == commit
    pushed = subprocess.run(["git", "-C", str(lab.folder / "profiles-lfs.git"), "rev-parse", "HEAD"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert pushed == lfs._git("rev-parse", "HEAD").strip(), "the tier's commits are pushed to its git remote"
    rows = lab.rows(PROFILES)
    for relpath, body in lab.profile_bytes.items():
        assert rows[relpath][:4] == ("profiles-lfs", hashlib.sha256(body).hexdigest(),
                                     f"sha256:{hashlib.sha256(body).hexdigest()}", commit)
    assert rows["_partition.json"][3] == commit

    # Another year: git-lfs -> dvc. The data files are in the DVC remote on S3, addressed by their md5.
    lab.lifecycle(800)
    assert lab.copies(PROFILES) == ["profiles-dvc"]
    record = _read_back(lab, PROFILES, lab.profile_bytes)
    dvc = lab.storage.tier("profiles-dvc")
    assert not (dvc.folder(PROFILES) / "data").exists(), "the repository keeps the .dvc pointer, not the data"
    assert record["versioned"]["dvc_md5"].endswith(".dir")
    commit = lab.repository_commit("profiles-dvc", PROFILES)
    rows = lab.rows(PROFILES)
    for relpath, body in lab.profile_bytes.items():
        md5 = hashlib.md5(body).hexdigest()
        assert record["versioned"]["objects"][relpath] == f"md5:{md5}"
        held = lab.s3.get_object(Bucket=lab.bucket, Key=f"dvc/files/md5/{md5[:2]}/{md5[2:]}")["Body"].read()
        assert held == body, "the DVC remote holds the file under its md5"
        assert rows[relpath][:4] == ("profiles-dvc", hashlib.sha256(body).hexdigest(), f"md5:{md5}", commit)
    assert record["versioned"]["commit"] == commit
    moves = [(m["from"], m["to"]) for m in record["moves"]]
    assert moves == [("profiles-git", "profiles-lfs"), ("profiles-lfs", "profiles-dvc")]
    assert lab.copies(CONSENSUS) == ["profiles-lfs"]


def _flip(body: bytes) -> bytes:
    changed = bytearray(body)
    changed[len(changed) // 2] ^= 0x01
    return bytes(changed)


def _mdp_verify(lab: Lab) -> subprocess.CompletedProcess:
    return lab.run("-m", "mdp_assets.cli", "verify")


@pytest.mark.slow
def test_mdp_verify_flags_a_corrupted_object_in_the_dvc_remote_and_in_the_lfs_store(lab):
    checked, problems = verify_stored_files(lab.storage)
    assert checked and not problems, problems
    # Bit rot in the DVC remote: the profiles' table as S3 holds it.
    profiles = lab.storage.tier("profiles-dvc").read_record(PROFILES)
    md5 = profiles["versioned"]["objects"]["table.parquet"].removeprefix("md5:")
    dvc_key = f"dvc/files/md5/{md5[:2]}/{md5[2:]}"
    good_dvc = lab.s3.get_object(Bucket=lab.bucket, Key=dvc_key)["Body"].read()
    lab.s3.put_object(Bucket=lab.bucket, Key=dvc_key, Body=_flip(good_dvc))
    # ... and in the LFS server's store: the consensus table.
    consensus = lab.storage.tier("profiles-lfs").read_record(CONSENSUS)
    oid = next(f["sha256"] for f in consensus["files"] if f["relpath"] == "table.parquet")
    lfs_object = lab.lfs_objects / "mdp" / "profiles" / oid
    good_lfs = lfs_object.read_bytes()
    lfs_object.write_bytes(_flip(good_lfs))

    done = _mdp_verify(lab)
    assert done.returncode == 1, done.stdout + done.stderr
    flagged = [line for line in done.stderr.splitlines() if line.startswith("mdp verify: corrupt:")]
    assert len(flagged) == 2, done.stderr
    assert any("well_profiles/VERS-1/table.parquet (well_profiles of VERS-1)" in line for line in flagged), flagged
    assert any("consensus_profiles/__all__/table.parquet (consensus_profiles of __all__)" in line for line in flagged)
    assert lab.rows(PROFILES)["table.parquet"][4] == "corrupt"
    assert lab.rows(CONSENSUS)["table.parquet"][4] == "corrupt"
    shutil.rmtree(lab.storage.cache_root)  # a fresh read downloads again (a cached copy is served while it matches)
    with pytest.raises(DamagedPartition, match="table.parquet \\(corrupt\\)"):
        lab.storage.store().read("well_profiles", PLATE)  # nothing damaged is served
    with pytest.raises(DamagedPartition, match="in tier 'profiles-lfs': table.parquet \\(corrupt\\)"):
        lab.storage.store().read("consensus_profiles", None)

    lab.s3.put_object(Bucket=lab.bucket, Key=dvc_key, Body=good_dvc)
    lfs_object.write_bytes(good_lfs)
    checked, problems = verify_stored_files(lab.storage)
    assert not problems, problems
    assert lab.rows(PROFILES)["table.parquet"][4] == "ok"


@pytest.mark.slow
def test_a_move_into_each_versioned_tier_killed_between_copy_and_delete_loses_nothing(lab):
    # Made again, the profiles are back in the git tier (the write removed the copy in the dvc tier).
    made = lab.defs.resolve_job_def("plate_job").execute_in_process(
        instance=lab.instance, partition_key=PLATE, op_selection=["well_profiles"], raise_on_error=False)
    assert made.success and lab.copies(PROFILES) == ["profiles-git"]
    version = lab.storage.tier("profiles-git").read_record(PROFILES)["data_version"]
    source = {f["relpath"]: (lab.storage.tier("profiles-git").folder(PROFILES) / f["relpath"]).read_bytes()
              for f in lab.storage.tier("profiles-git").read_record(PROFILES)["files"]}

    # Killed once the copy in the git-lfs tier is whole and verified, before the catalog or the delete.
    lab.lifecycle(400, fault="move.copied")
    assert lab.copies(PROFILES) == ["profiles-git", "profiles-lfs"], "both copies whole at the crash"
    assert _read_back(lab, PROFILES, source)["data_version"] == version
    lab.lifecycle(400)
    assert lab.copies(PROFILES) == ["profiles-lfs"], "the next run finished the move"
    assert _read_back(lab, PROFILES, source)["tier"] == "profiles-lfs"

    # Killed inside the dvc tier: the data are in the remote, the record written but not committed.
    lab.lifecycle(800, fault="write.uncommitted")
    assert _read_back(lab, PROFILES, source)["data_version"] == version
    lab.lifecycle(800)
    assert lab.copies(PROFILES) == ["profiles-dvc"]
    dvc = lab.storage.tier("profiles-dvc")
    assert not dvc._git("status", "--porcelain", "--", PROFILES).strip(), "committed"
    assert _read_back(lab, PROFILES, source)["versioned"]["commit"] == lab.repository_commit("profiles-dvc", PROFILES)
    rows = lab.rows(PROFILES)
    assert {r[0] for r in rows.values()} == {"profiles-dvc"}, "the catalog lists the one copy"
    assert all(r[3] for r in rows.values()), "with the commit that holds it"
    checked, problems = verify_stored_files(lab.storage)
    assert not problems, problems

    # Killed after the catalog records the move, before the source is deleted.
    made = lab.defs.resolve_job_def("plate_job").execute_in_process(
        instance=lab.instance, partition_key=PLATE, op_selection=["well_profiles"], raise_on_error=False)
    assert made.success and lab.copies(PROFILES) == ["profiles-git"]
    lab.lifecycle(400, fault="move.cataloged")
    assert lab.copies(PROFILES) == ["profiles-git", "profiles-lfs"]
    report = run_lifecycle(lab.storage, datetime.now(timezone.utc) + timedelta(days=400))
    assert any("finished the interrupted move profiles-git -> profiles-lfs" in n for n in report.notes), report
    assert lab.copies(PROFILES) == ["profiles-lfs"]
    assert _read_back(lab, PROFILES, source)["moves"][-1]["to"] == "profiles-lfs"
