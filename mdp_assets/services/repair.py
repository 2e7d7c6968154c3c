"""`mdp repair`: damaged stored partitions made whole again. Each copy of each selected partition, in every
tier, is checked file by file against its record; a damaged file is restored from another verified copy where
one exists (the same partition in another tier, as a lifecycle copy leaves it, or the git tier's committed
version), checked again in place; a partition no copy can restore is made again from upstream (the caller
submits that run through the run queue, as every command that makes data does)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from mdp_assets.checksums import FileRecord, sha256_file
from mdp_assets.errors import MdpError
from mdp_assets.services.reprocess import PlateWork, plan_plate, plate_levels
from mdp_assets.storage import catalog
from mdp_assets.storage.partitions import partition_key
from mdp_assets.storage.resource import MdpStorage
from mdp_assets.storage.tiers import DamagedPartition, fetch_verified


@dataclass
class RepairReport:
    restored: list[str] = field(default_factory=list)
    intact: list[str] = field(default_factory=list)
    remake: list[PlateWork] = field(default_factory=list)


def _copies(storage: MdpStorage, key: str) -> list[tuple[str, dict]]:
    policy = storage.policy()
    found = []
    for name in policy.tiers:
        record = storage.tier(name, policy).read_record(key)
        if record is not None and not record.get("released_at"):
            found.append((name, record))
    return found


def _good_copy(storage: MdpStorage, key: str, wanted: FileRecord, damaged_tier: str, scratch: Path) -> tuple[Path, str] | None:
    """A file with the wanted sha256 from another tier's copy or from the damaged tier's own history."""
    for name, record in _copies(storage, key):
        if name == damaged_tier or not any(FileRecord(**f) == wanted for f in record["files"]):
            continue
        tier = storage.tier(name)
        try:
            folder = fetch_verified(tier, key, [wanted], storage.cache_root)
        except DamagedPartition:
            continue
        return folder / wanted.relpath, f"tier {name!r}"
    target = scratch / wanted.relpath.replace("/", "__")
    earlier_copy = getattr(storage.tier(damaged_tier), "earlier_copy", None)  # backends that keep history
    if earlier_copy is not None and earlier_copy(key, wanted.relpath, target) and sha256_file(target) == wanted.sha256:
        return target, f"the committed history of tier {damaged_tier!r}"
    return None


def repair(instance: dg.DagsterInstance, defs: dg.Definitions, storage: MdpStorage, plates: list[str],
           levels: list[str] | None = None) -> RepairReport:
    """Restore what a verified copy can restore; plan the rest to be made again (the levels and, for a level
    that reads a released transient level, that level first)."""
    report = RepairReport()
    every_level = [k.path[-1] for k in plate_levels(defs)]
    chosen = [lv for lv in every_level if not levels or lv in levels]
    for plate in plates:
        beyond_repair: set[str] = set()
        for level in chosen:
            key = partition_key(level, plate)
            for tier_name, record in _copies(storage, key):
                files = [FileRecord(**f) for f in record["files"]]
                tier = storage.tier(tier_name)
                try:
                    fetch_verified(tier, key, files, storage.cache_root)
                    report.intact.append(f"{level} of {plate} in {tier_name!r}: every file matches its sha256")
                    continue
                except DamagedPartition as damaged:
                    problems = dict(damaged.problems)
                catalog.mark_status(storage.catalog_path, level, plate, tier_name, problems)
                with tempfile.TemporaryDirectory(dir=storage.root) as scratch:
                    for wanted in [f for f in files if f.relpath in problems]:
                        source = _good_copy(storage, key, wanted, tier_name, Path(scratch))
                        if source is None:
                            beyond_repair.add(level)
                            continue
                        try:
                            tier.restore_file(key, wanted.relpath, source[0])
                        except MdpError:  # a store that keeps its objects immutable (dvc, git-lfs): made again
                            beyond_repair.add(level)
                            continue
                        report.restored.append(f"{level} of {plate} in {tier_name!r}: {wanted.relpath} restored "
                                               f"from {source[1]} (sha256 {wanted.sha256[:12]})")
                try:
                    fetch_verified(tier, key, files, storage.cache_root)
                    catalog.mark_status(storage.catalog_path, level, plate, tier_name, {f.relpath: "ok" for f in files})
                except DamagedPartition:
                    beyond_repair.add(level)
        if beyond_repair:
            work = plan_plate(instance, defs, storage, plate)
            needed = [lv for lv in work.levels if lv in beyond_repair or
                      work.reasons.get(lv, "").startswith("re-made for")]
            needed = sorted(set(needed) | beyond_repair, key=every_level.index)
            report.remake.append(PlateWork(plate, needed, {lv: work.reasons.get(lv, "damaged beyond repair: no "
                                                           "verified copy anywhere") for lv in needed}))
    storage.store().reconcile()
    return report

