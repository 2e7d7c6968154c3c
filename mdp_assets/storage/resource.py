"""Where mdp keeps things: the data root (tiers, staging) and the landing zone for new plates."""


import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from pydantic import Field

from dagster_aws.s3 import S3Resource

from mdp_assets.errors import MdpError
from mdp_assets.plates.inventory import PlateFolder
from mdp_assets.plates.landing import FolderLanding, LandingZone, S3Landing
from mdp_assets.storage.policy import StoragePolicy, load_policy, shipped_policy
from mdp_assets.storage.tiers import EphemeralTier, FilesystemTier, GitTier, S3Tier, TierStore


class MdpStorage(dg.ConfigurableResource):
    """The local data root: tiers live in `<data_root>/<tier>`, plates arrive in the landing zone."""

    data_root: str = Field(description="folder holding every tier and the staging area")
    landing_zone: str | None = Field(
        default=None, description="folder of incoming plate folders; default <data_root>/landing"
    )
    landing_s3_bucket: str | None = Field(
        default=None, description="when set, plates arrive under s3://<bucket>/<landing_s3_prefix><plate>/"
    )
    landing_s3_prefix: str = ""
    s3_endpoint_url: str | None = Field(default=None, description="any S3-compatible store; None for AWS")
    s3_region: str | None = None
    policy_file: str | None = Field(
        default=None, description="storage policy YAML; default: the shipped local policy (policies/local.yaml)"
    )

    def policy(self) -> StoragePolicy:
        return load_policy(Path(self.policy_file) if self.policy_file else shipped_policy("local"))

    def tier(self, name: str, policy: StoragePolicy | None = None) -> TierStore:
        """The store behind a tier of the policy (S3 credentials come from the usual AWS variables)."""
        policy = policy or self.policy()
        if name not in policy.tiers:
            raise MdpError(f"storage policy {policy.name!r} has no tier {name!r}")
        spec = policy.tiers[name]
        if spec.backend == "s3":
            endpoint = spec.endpoint_url or self.s3_endpoint_url or None
            client = S3Resource(endpoint_url=endpoint, region_name=spec.region or self.s3_region or None).get_client()
            return S3Tier(name, client, spec.bucket or "", spec.prefix)
        root = Path(spec.path or name)
        root = root if root.is_absolute() else self.root / root
        return {"filesystem": FilesystemTier, "git": GitTier, "ephemeral": EphemeralTier}[spec.backend](name, root)

    @property
    def cache_root(self) -> Path:
        return self.root / ".cache"

    @property
    def root(self) -> Path:
        return Path(self.data_root).expanduser().resolve()

    @property
    def landing_path(self) -> Path:
        return Path(self.landing_zone).expanduser().resolve() if self.landing_zone else self.root / "landing"

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.duckdb"


    def landing(self) -> LandingZone:
        """The landing zone: the local folder, or the S3 prefix (credentials from the usual AWS variables)."""
        if not self.landing_s3_bucket:
            return FolderLanding(self.landing_path)
        # An empty endpoint or region (as an environment variable can only be) means AWS's defaults.
        client = S3Resource(endpoint_url=self.s3_endpoint_url or None, region_name=self.s3_region or None).get_client()
        return S3Landing(client, self.landing_s3_bucket, self.landing_s3_prefix, self.root / "landing-mirror")

    def plate_folder(self, barcode: str) -> PlateFolder:
        folder = PlateFolder.open(self.landing().open_plate(barcode))
        if folder.barcode != barcode:
            raise MdpError(
                f"manifest barcode {folder.barcode!r} does not match its folder name {barcode!r}",
                path=folder.root / "plate.yaml",
            )
        return folder

    @contextmanager
    def staging_dir(self, label: str) -> Iterator[Path]:
        """A fresh folder on the data root's filesystem for an asset to fill.

        On success the IO manager takes it over (moved into its tier in one rename); on error it is removed,
        so a failed step leaves nothing half-written behind.
        """
        path = self.root / ".staging" / f"{label}-{uuid.uuid4().hex[:12]}"
        path.mkdir(parents=True)
        try:
            yield path
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
