"""`MdpStorage`: where a deployment keeps things, as one Dagster resource built from its `mdp.yaml`.

It knows the data root (local tiers, staging, the read cache, the catalog and the plate registry), the
storage policy and the store behind each of its tiers, and the landing zone where plates arrive.
S3 credentials are read, when a store is opened, from the environment variables the configuration names.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from dagster_aws.s3 import S3Resource
from pydantic import Field

from mdp_assets.checksums import remove_path

from mdp_assets.config import SHIPPED_POLICIES, Deployment
from mdp_assets.errors import MdpError
from mdp_assets.plates.inventory import PlateFolder
from mdp_assets.plates.landing import FolderLanding, LandingZone, S3Landing
from mdp_assets.plates.registry import Plate, PlateRegistry
from mdp_assets.storage.partitions import table_output
from mdp_assets.storage.policy import StoragePolicy, load_policy
from mdp_assets.storage.policy_check import check_once
from mdp_assets.storage.store import PartitionStore
from mdp_assets.storage.tiers import EphemeralTier, FilesystemTier, GitTier, S3Tier, TierStore
from mdp_assets.storage.versioned_tiers import DvcTier, GitLfsTier


class MdpStorage(dg.ConfigurableResource):
    """The deployment's storage: tiers live under the data root or in buckets, plates arrive in the landing zone."""

    data_root: str = Field(description="folder holding every local tier, staging, the catalog and the plate registry")
    policy_file: str = Field(str(SHIPPED_POLICIES / "local.yaml"), description="the storage policy (YAML)")
    landing_folder: str | None = Field(None, description="folder of incoming plate folders; default <data_root>/landing")
    landing_s3_bucket: str | None = Field(None, description="plates arrive under s3://<bucket>/<prefix><plate>/")
    landing_s3_prefix: str = ""
    s3_endpoint_url: str | None = Field(None, description="any S3-compatible store; None for AWS")
    s3_region: str | None = None
    s3_access_key_id_env: str = "AWS_ACCESS_KEY_ID"
    s3_secret_access_key_env: str = "AWS_SECRET_ACCESS_KEY"
    versioned_tools: str | None = Field(None, description="the environment deploy/versioned/build-env.sh builds "
                                        "(dvc); None: dvc from PATH")

    @classmethod
    def from_deployment(cls, deployment: Deployment) -> MdpStorage:
        settings = deployment.config.storage
        return cls(
            data_root=str(deployment.data_root),
            policy_file=str(deployment.policy_path()),
            landing_folder=settings.landing.folder,
            landing_s3_bucket=settings.landing.s3_bucket,
            landing_s3_prefix=settings.landing.s3_prefix,
            s3_endpoint_url=settings.s3.endpoint_url,
            s3_region=settings.s3.region,
            s3_access_key_id_env=settings.s3.access_key_id_env,
            s3_secret_access_key_env=settings.s3.secret_access_key_env,
            versioned_tools=settings.versioned_tools,
        )

    # -- places -------------------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return Path(self.data_root).expanduser().resolve()

    @property
    def cache_root(self) -> Path:
        return self.root / ".cache"

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.duckdb"

    @property
    def landing_path(self) -> Path:
        return Path(self.landing_folder).expanduser().resolve() if self.landing_folder else self.root / "landing"

    # -- the policy and its tiers -------------------------------------------------------------------
    def policy(self) -> StoragePolicy:
        """The validated policy, refused if it would expose data already stored (storage/policy_check.py)."""
        policy = load_policy(Path(self.policy_file))
        check_once(policy, Path(self.policy_file), self.catalog_path, self.registry(),
                   lambda tier, key: self.tier(tier, policy).read_record(key) if tier in policy.tiers else None)
        return policy

    def s3_client(self, endpoint_url: str | None = None, region: str | None = None) -> Any:
        """One client per endpoint, region and credentials in this process (clients are thread-safe)."""
        return _s3_client(endpoint_url or self.s3_endpoint_url or None, region or self.s3_region or None,
                          os.environ.get(self.s3_access_key_id_env), os.environ.get(self.s3_secret_access_key_env))

    def tier(self, name: str, policy: StoragePolicy | None = None) -> TierStore:
        """The store behind a tier of the policy."""
        policy = policy or self.policy()
        if name not in policy.tiers:
            raise MdpError(f"storage policy {policy.name!r} has no tier {name!r}")
        spec = policy.tiers[name]
        if spec.backend == "s3":
            return S3Tier(name, self.s3_client(spec.endpoint_url, spec.region), spec.bucket or "", spec.prefix)
        root = Path(spec.path or name)
        root = root if root.is_absolute() else self.root / root
        if spec.backend == "dvc":
            # Credentials from the variables the policy names, read now (never at import, never stored).
            env = {target: os.environ[source] for target, source in (
                ("AWS_ACCESS_KEY_ID", spec.access_key_id_env), ("AWS_SECRET_ACCESS_KEY", spec.secret_access_key_env))
                if source in os.environ}
            return DvcTier(name, root, spec.remote_url or "", dvc=self.tool("dvc"), endpoint_url=spec.endpoint_url,
                           region=spec.region, git_remote=spec.git_remote, env=env)
        if spec.backend == "git-lfs":
            return GitLfsTier(name, root, spec.lfs_url or "", git_remote=spec.git_remote)
        return {"filesystem": FilesystemTier, "git": GitTier, "ephemeral": EphemeralTier}[spec.backend](name, root)

    def tool(self, name: str) -> str:
        """A versioned tier's command line tool: from `versioned_tools` when it has it, else from PATH."""
        built = Path(self.versioned_tools).expanduser() / "bin" / name if self.versioned_tools else None
        return str(built) if built is not None and built.exists() else name

    def store(self) -> PartitionStore:
        policy = self.policy()
        return PartitionStore(policy, lambda name: self.tier(name, policy), self.catalog_path, self.cache_root)

    # -- plates -------------------------------------------------------------------------------------
    def registry(self) -> PlateRegistry:
        return PlateRegistry(self.root / "plates")

    def plate(self, barcode: str) -> Plate:
        return self.registry().load(barcode)

    def landing(self) -> LandingZone:
        """The landing zone: the local folder, or the S3 prefix."""
        if not self.landing_s3_bucket:
            return FolderLanding(self.landing_path)
        return S3Landing(self.s3_client(), self.landing_s3_bucket, self.landing_s3_prefix, self.root / "landing-mirror")

    def plate_folder(self, barcode: str) -> PlateFolder:
        folder = PlateFolder.open(self.landing().open_plate(barcode))
        if folder.barcode != barcode:
            raise MdpError(f"manifest barcode {folder.barcode!r} does not match its folder name {barcode!r}",
                           path=folder.root / "plate.yaml")
        return folder

    # -- runs and their staging ---------------------------------------------------------------------
    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """A run's process leaves its host and pid under `.runs/<run id>/`, so a run whose process died can be
        told from one still working (`services/recovery.py`)."""
        run = context.run
        if run is not None:
            # An empty folder named <host>-<pid>: bookkeeping, not a file of data.
            (self.root / ".runs" / run.run_id / process_name()).mkdir(parents=True, exist_ok=True)

    def run_processes(self, run_id: str) -> list[tuple[str, int]]:
        """(host, pid) of every process that worked for a run."""
        folder = self.root / ".runs" / run_id
        found = []
        for lease in folder.iterdir() if folder.is_dir() else []:
            host, _, pid = lease.name.rpartition("-")
            if pid.isdigit():
                found.append((host, int(pid)))
        return found

    def forget_run(self, run_id: str) -> None:
        remove_path(self.root / ".runs" / run_id)

    def clean_dead_staging(self) -> list[str]:
        """Remove the staging folders of processes of this host that are gone (killed mid-step)."""
        removed = []
        staging = self.root / ".staging"
        for folder in sorted(staging.iterdir()) if staging.is_dir() else []:
            host, _, pid = folder.name.rpartition("-")
            if folder.is_dir() and host == socket.gethostname() and pid.isdigit() and not process_alive(int(pid)):
                remove_path(folder)
                removed.append(f"removed the staging files of a process that died: {folder}")
        return removed

    # -- staging --------------------------------------------------------------------------------------
    @contextmanager
    def staging_dir(self, label: str) -> Iterator[Path]:
        """A fresh folder on the data root's filesystem for an asset to fill, in this process's own staging
        folder (so a killed process's files are found and removed: `clean_dead_staging`).

        On success the IO manager takes it over (moved into its tier in one rename); on error it is removed,
        so a failed step leaves nothing half-written behind."""
        path = self.root / ".staging" / process_name() / f"{label}-{uuid.uuid4().hex[:12]}"
        for attempt in range(3):
            try:
                path.mkdir(parents=True)
                break
            except FileNotFoundError:  # the empty process folder was just removed by another thread
                if attempt == 2:
                    raise
        try:
            yield path
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            drop_if_empty(path.parent)
            raise

    def table_output(self, label: str, table: pd.DataFrame, metadata: dict[str, Any] | None = None) -> dg.Output:
        """A DataFrame as `table.parquet` in a new staging folder, as the Output of `label`."""
        with self.staging_dir(label) as staged:
            return table_output(staged, table, metadata)


def drop_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty (another step of this process is staging), or already gone


def process_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@functools.lru_cache(maxsize=8)
def _s3_client(endpoint_url: str | None, region: str | None, key_id: str | None, secret: str | None) -> Any:
    return S3Resource(endpoint_url=endpoint_url, region_name=region, aws_access_key_id=key_id,
                      aws_secret_access_key=secret).get_client()
