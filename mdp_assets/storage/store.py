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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mdp_assets.checksums import FileRecord, record_files, tree_digest
from mdp_assets.errors import MdpError
from mdp_assets.faults import fault_point
from mdp_assets.plates.registry import PlateAccess
from mdp_assets.storage import catalog, lifecycle
from mdp_assets.storage.partitions import StagedFiles, StoredPartition, partition_key
from mdp_assets.storage.policy import StoragePolicy
from mdp_assets.storage.provenance import RO_CRATE_FILE, provenance_record, ro_crate, software_versions
from mdp_assets.storage.tiers import PARTITION_RECORD, DamagedPartition, TierStore, fetch_verified


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
        """A stored partition as a local, read-only folder, from wherever it lives now, every file checked
        against its recorded sha256 (DamagedPartition names the tier, level, plate and files that differ, and
        the catalog flags them)."""
        found = self.locate(asset, partition)
        what = f"{asset} for {partition or 'all plates'}"
        if found is None and self.reconcile([partition_key(asset, partition)]):
            found = self.locate(asset, partition)  # a crash had left it parked or half-moved
        if found is None:
            raise MdpError(f"{what} is not materialized in any tier of its lifecycle")
        if found.released:
            raise MdpError(f"{what} was released from tier {found.tier!r} on {found.record['released_at']} "
                           "(a transient level); materialize it again to read it")
        files = tuple(FileRecord(**f) for f in found.record["files"])
        try:
            # Every read is verified: a file that differs from its recorded sha256 is never handed to a step.
            folder = fetch_verified(self.tier_of(found.tier), partition_key(asset, partition), files, self.cache_root)
        except DamagedPartition as damaged:
            catalog.mark_status(self.catalog_path, asset, partition or catalog.UNPARTITIONED, found.tier,
                                dict(damaged.problems))
            raise
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
            _drop_process_staging(staged.root)
            raise
        store = self.tier_of(tier)
        key = partition_key(asset, partition)
        self.reconcile([key])  # whatever an earlier crash left of this partition is settled before it changes
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
        fault_point("write.staged")
        store.write(staged.root, key, records, move=True,
                    message=f"mdp: {asset} of {partition or 'all plates'}, code version {made_by.code_version}")
        _drop_process_staging(staged.root)
        fault_point("write.tiered")
        for stage in self.policy.stages(asset)[1:]:
            older = self.tier_of(stage.tier)
            if older.read_record(key) is not None:
                older.delete(key, message=f"mdp: {asset} of {partition or 'all plates'} replaced by a new version")
        stored = store.read_record(key) or record
        if stored.get("versioned"):  # a versioned tier adds its content hashes and commit to the record
            record, bookkeeping = stored, catalog.bookkeeping_of(store, key)
        fault_point("write.before_catalog")
        catalog.replace_partition(
            self.catalog_path, asset, partition or catalog.UNPARTITIONED,
            catalog.rows_for_record(record, lambda relpath: store.uri(key, relpath), bookkeeping, tier,
                                    asset, made_by.code_version, digest),
        )
        return record

    # -- after a crash ----------------------------------------------------------------------------------
    def reconcile(self, keys: Iterable[str] | None = None) -> list[str]:
        """Make the tiers whole and the catalog equal to them after any crash, for the partitions `keys`
        (`<asset>/<partition>`) or for everything: interrupted replaces, writes and deletes are recovered in
        each tier (never deleting the only complete copy); a partition found in two tiers is settled (an
        interrupted lifecycle move is finished, an older copy a new write left behind is removed, each only
        once the copy kept is verified); the catalog's rows are replaced where they differ from the tiers.
        Returns what was done."""
        tiers = {name: self.tier_of(name) for name in self.policy.tiers}
        wanted = None if keys is None else sorted(set(keys))
        notes: list[str] = []
        for store in tiers.values():
            # A backend without crash recovery of its own (its writes are atomic some other way) has none to do.
            recover = getattr(store, "recover", lambda key: [])
            notes += store.clean_partials() if wanted is None else [n for k in wanted for n in recover(k)]
        copies: dict[str, list[lifecycle.Located]] = {}
        for name, store in tiers.items():
            for key in (store.partition_keys() if wanted is None else wanted):
                record = store.read_record(key)
                if record is not None:
                    copies.setdefault(key, []).append(
                        lifecycle.Located(record["asset"], record["partition"], key, name, record))
        for key, found in copies.items():
            if len(found) > 1:
                notes += self._settle_copies(key, found, tiers)
                copies[key] = [c for c in found if tiers[c.tier].read_record(key) is not None]
        notes += self._reconcile_catalog(copies, tiers, wanted)
        return notes

    def _settle_copies(self, key: str, found: list[lifecycle.Located], tiers: dict[str, TierStore]) -> list[str]:
        first, second = found[0], found[1]
        for target in found:
            source = next((c for c in found if lifecycle.is_copy_of(target.record, c)), None)
            if source is not None:  # a lifecycle move between its copy and its delete
                return [lifecycle.finish_interrupted(source, target, tiers.__getitem__, self.cache_root)]
        # A write stores the new version in its level's first tier, then removes older copies from later ones.
        stages = [s.tier for s in self.policy.stages(first.asset)] if first.asset in self.policy.levels else []
        newest = max(found, key=lambda c: c.record["written_at"])
        if newest.tier in stages and all(c.tier in stages and stages.index(c.tier) > stages.index(newest.tier)
                                         for c in found if c is not newest):
            try:
                fetch_verified(tiers[newest.tier], key, [FileRecord(**f) for f in newest.record["files"]],
                               self.cache_root)
            except DamagedPartition as damaged:
                return [f"{key}: the newer copy is damaged ({damaged}); older copies kept"]
            for older in found:
                if older is not newest:
                    tiers[older.tier].delete(key, message=f"mdp: {key} replaced by a new version (after a crash)")
            return [f"{key}: removed the older copy a crashed write left in "
                    f"{[c.tier for c in found if c is not newest]}; kept the new one in {newest.tier!r}"]
        return [f"{key}: stored in {first.tier!r} and {second.tier!r} and neither copy explains the other; "
                "both kept (resolve by hand: mdp catalog --query problems)"]

    def _reconcile_catalog(self, copies: dict[str, list[lifecycle.Located]], tiers: dict[str, TierStore],
                           wanted: list[str] | None) -> list[str]:
        cataloged = catalog.partition_files(self.catalog_path, wanted)
        notes = []
        for key in sorted(set(copies) | set(cataloged)):
            asset, _, partition = key.partition("/")
            found = copies.get(key, [])
            expected = {(c.tier, f["relpath"], f["sha256"]) for c in found if not c.record.get("released_at")
                        for f in c.record["files"]}
            have = {(tier, relpath, sha) for tier, relpath, sha, _ in cataloged.get(key, set())
                    if relpath not in BOOKKEEPING}
            # The record rows say which write of the partition the catalog knows (its time), in which tier.
            records_have = {(tier, created) for tier, relpath, _, created in cataloged.get(key, set())
                            if relpath == PARTITION_RECORD}
            records_are = {(c.tier, datetime.fromisoformat(c.record["written_at"])) for c in found}
            if expected == have and records_have == records_are:
                continue
            rows = [row for c in found for row in catalog.rows_for_record(
                c.record, lambda relpath, c=c: tiers[c.tier].uri(key, relpath), catalog.bookkeeping_of(tiers[c.tier], key),
                c.tier, c.asset, c.record.get("code_version"), c.record.get("data_version"))]
            catalog.replace_partition(self.catalog_path, asset, partition, rows)
            notes.append(f"catalog: {key} now lists what the tiers hold ({', '.join(c.tier for c in found) or 'nowhere'})")
        return notes


def _drop_process_staging(staged: Path) -> None:
    """Remove the process's own staging folder (`.staging/<host>-<pid>/`) once nothing else is staged in it."""
    if staged.parent.parent.name == ".staging":
        try:
            staged.parent.rmdir()
        except OSError:
            pass  # another step of this process is staging there


def is_restricted(plate: PlateAccess) -> bool:
    """Collaborators' and identifiable patients' data: never readable by every account on the machine."""
    return plate.identifiable_patient_data or plate.origin.startswith("collaborator")


def restrict_files(root: Path, file_mode: int) -> None:
    """Take world (and, by the mode, group) access off a staged partition before it enters its tier; folders
    keep execute where their files keep read, so the owner and permitted group can still list them."""
    folder_mode = file_mode | ((file_mode & 0o444) >> 2)
    for path in [root, *root.rglob("*")]:
        path.chmod(folder_mode if path.is_dir() else file_mode)
