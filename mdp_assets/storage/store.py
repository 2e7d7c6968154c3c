"""Stored partitions under the storage policy: write one where its level's lifecycle starts, find where it
lives now, read it back. The IO manager, the lifecycle and the command line all go through here.

A write checks the plate's origin against the tier's access and the tier's size limits, and refuses
(deleting the staged files, writing nothing anywhere) when either forbids it. Otherwise the partition is
stored whole or not at all, with `_partition.json` (what it is, every file's checksum, code and data
version, who may see it, provenance) and `ro-crate-metadata.json`, and the catalog gets its rows.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mdp_assets.checksums import FileRecord, record_files, tree_digest
from mdp_assets.errors import MdpError
from mdp_assets.plates.registry import PlateAccess
from mdp_assets.storage import catalog
from mdp_assets.storage.partitions import StagedFiles, StoredPartition, partition_key
from mdp_assets.storage.policy import StoragePolicy
from mdp_assets.storage.provenance import RO_CRATE_FILE, provenance_record, ro_crate, software_versions
from mdp_assets.storage.tiers import PARTITION_RECORD, TierStore


BOOKKEEPING = frozenset({PARTITION_RECORD, RO_CRATE_FILE})  # files of a partition that describe it


@dataclass(frozen=True)
class Located:
    """Where a stored partition is now: its tier and its partition record."""

    tier: str
    record: dict[str, Any]

    @property
    def released(self) -> bool:
        return bool(self.record.get("released_at"))


@dataclass(frozen=True)
class MadeBy:
    """How a partition was made, for its provenance."""

    run_id: str
    code_version: str | None
    parameters: dict[str, Any]
    inputs: list[dict[str, Any]]
    software: dict[str, str]


class PartitionStore:
    def __init__(self, policy: StoragePolicy, tier_of: Callable[[str], TierStore], catalog_path: Path, cache_root: Path):
        self.policy, self.tier_of, self.catalog_path, self.cache_root = policy, tier_of, catalog_path, cache_root

    # -- where things are -------------------------------------------------------------------------
    def locate(self, asset: str, partition: str | None) -> Located | None:
        """The tier a partition is in now, trying the tiers of its level's lifecycle in order."""
        key = partition_key(asset, partition)
        for stage in self.policy.stages(asset):
            record = self.tier_of(stage.tier).read_record(key)
            if record is not None:
                return Located(stage.tier, record)
        return None

    def uri(self, asset: str, partition: str | None, tier: str) -> str:
        return self.tier_of(tier).uri(partition_key(asset, partition))

    def read(self, asset: str, partition: str | None) -> StoredPartition:
        """A stored partition as a local, read-only folder, from wherever it lives now."""
        found = self.locate(asset, partition)
        what = f"{asset} for {partition or 'all plates'}"
        if found is None:
            raise MdpError(f"{what} is not materialized in any tier of its lifecycle")
        if found.released:
            raise MdpError(f"{what} was released from tier {found.tier!r} on {found.record['released_at']} "
                           "(a transient level); materialize it again to read it")
        folder = self.tier_of(found.tier).local_folder(partition_key(asset, partition), self.cache_root)
        files = tuple(FileRecord(**f) for f in found.record["files"])
        return StoredPartition(asset, partition or catalog.UNPARTITIONED, folder, found.record["kind"], files,
                               found.record)

    # -- the policy ---------------------------------------------------------------------------------
    def check_allowed(self, tier: str, plates: list[PlateAccess | None], sizes: list[int], what: str) -> None:
        """Every plate's origin must allow the tier's access, and the tier's size limits must hold. A plate of
        unknown origin (None) may only go to a private tier."""
        for plate in plates:
            if plate is None:
                if self.policy.tiers[tier].access != "private":
                    raise MdpError(f"{what}: the plate's origin is unknown, so it may only go to a private tier, "
                                   f"not {tier!r}")
                continue
            self.policy.check_origin(tier, plate.origin, plate.identifiable_patient_data, plate.released, what)
        self.policy.check_limits(tier, sizes, lambda: catalog.tier_bytes(self.catalog_path, tier), what)

    # -- writing --------------------------------------------------------------------------------------
    def write(self, staged: StagedFiles, asset: str, partition: str | None, plates: list[PlateAccess | None],
              made_by: MadeBy) -> dict[str, Any]:
        """Store a staged folder as the partition, in the first tier of its level's lifecycle; returns the
        partition record. Refused by the policy, the staged files are deleted and nothing is written."""
        what = f"{asset} of {partition or 'all plates'}"
        tier = self.policy.stages(asset)[0].tier
        records = list(staged.records) or record_files(staged.root)
        try:
            self.check_allowed(tier, plates, [r.bytes for r in records], what)
        except MdpError:
            shutil.rmtree(staged.root, ignore_errors=True)
            raise
        store = self.tier_of(tier)
        key = partition_key(asset, partition)
        digest = tree_digest(records)
        written_at = datetime.now(timezone.utc).isoformat()
        outputs = {"uri": store.uri(key), "sha256": digest, "bytes": sum(r.bytes for r in records),
                   "files": len(records)}
        origins = sorted({p.origin for p in plates if p is not None})
        provenance = provenance_record(
            asset=asset, partition=partition, code_version=made_by.code_version, parameters=made_by.parameters,
            run_id=made_by.run_id, inputs=made_by.inputs, outputs=outputs, origin=", ".join(origins) or None,
            software=software_versions(made_by.software),
        )
        record = {
            "asset": asset,
            "partition": partition,
            "level": asset,
            "tier": tier,
            "kind": staged.kind,
            "rows": staged.table_summary.get("rows"),
            "run_id": made_by.run_id,
            "written_at": written_at,
            "stage_entered_at": written_at,
            "moves": [],
            "code_version": made_by.code_version,
            "data_version": digest,
            "files": [r.__dict__ for r in records],
            "access": [p.__dict__ for p in plates if p is not None],
            "provenance": provenance,
        }
        (staged.root / RO_CRATE_FILE).write_text(json.dumps(ro_crate(provenance, record["files"]), indent=1))
        (staged.root / PARTITION_RECORD).write_text(json.dumps(record, indent=1, default=str))
        bookkeeping = catalog.bookkeeping_in(staged.root)
        if any(p is not None and is_restricted(p) for p in plates):
            restrict_files(staged.root, self.policy.tiers[tier].restricted_mode)
        store.write(staged.root, key, records, move=True,
                    message=f"mdp: {asset} of {partition or 'all plates'}, code version {made_by.code_version}")
        for stage in self.policy.stages(asset)[1:]:
            older = self.tier_of(stage.tier)
            if older.read_record(key) is not None:
                older.delete(key, message=f"mdp: {asset} of {partition or 'all plates'} replaced by a new version")
        catalog.replace_partition(
            self.catalog_path, asset, partition or catalog.UNPARTITIONED,
            catalog.rows_for_record(record, lambda relpath: store.uri(key, relpath), bookkeeping, tier,
                                    asset, made_by.code_version, digest),
        )
        return record


def is_restricted(plate: PlateAccess) -> bool:
    """Collaborators' and identifiable patients' data: never readable by every account on the machine."""
    return plate.identifiable_patient_data or plate.origin.startswith("collaborator")


def restrict_files(root: Path, file_mode: int) -> None:
    """Take world (and, by the mode, group) access off a staged partition before it enters its tier; folders
    keep execute where their files keep read, so the owner and permitted group can still list them."""
    folder_mode = file_mode | ((file_mode & 0o444) >> 2)
    for path in [root, *root.rglob("*")]:
        path.chmod(folder_mode if path.is_dir() else file_mode)
