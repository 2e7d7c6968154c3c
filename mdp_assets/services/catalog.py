"""The catalog as a service: verify every stored file wherever its tier keeps it, and rebuild the catalog
from the tiers and the event log. `mdp verify`, `verify_job` and `mdp catalog --rebuild` come here."""

from __future__ import annotations

import dagster as dg

from mdp_assets.services.instance_status import latest_status
from mdp_assets.storage import catalog
from mdp_assets.storage.partitions import partition_key
from mdp_assets.storage.resource import MdpStorage
from mdp_assets.storage.tiers import TierStore


def verify_stored_files(storage: MdpStorage, asset_keys: list[str] | None = None) -> tuple[int, list[catalog.FileProblem]]:
    """Re-read every cataloged file (of the levels `asset_keys` names, else of all) in its tier (a folder, a git
    repository, an S3 bucket) and compare its sha256 with the catalog's; the catalog records each file's status."""
    policy = storage.policy()
    stores: dict[str, TierStore | None] = {}

    def check(tier: str, asset_key: str, partition: str, relpath: str, sha256: str) -> str:
        if tier not in stores:
            stores[tier] = storage.tier(tier, policy) if tier in policy.tiers else None
        store = stores[tier]
        if store is None:
            return "missing"  # the tier is gone from the policy: nothing says where to look
        return store.check_file(partition_key(asset_key, partition), relpath, sha256)

    if not storage.catalog_path.exists():
        return 0, []
    storage.store().reconcile()  # the catalog equals the tiers before it is judged by them (no false alarms)
    return catalog.verify(storage.catalog_path, check, asset_keys)


def rebuild_catalog(instance: dg.DagsterInstance, storage: MdpStorage) -> int:
    """The catalog from scratch: every partition folder in every tier, with code and data versions taken from
    the Dagster event log."""

    def versions(asset: str, partition: str | None) -> tuple[str | None, str | None, str | None]:
        status = latest_status(instance, dg.AssetKey.from_user_string(asset), partition)
        if status is None:
            return asset, None, None
        return asset, status.code_version, status.data_version

    policy = storage.policy()
    return catalog.rebuild(storage.catalog_path, [storage.tier(name, policy) for name in policy.tiers], versions)
