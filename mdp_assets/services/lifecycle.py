"""The lifecycle as a service: release transient levels whose readers are made, finish interrupted moves,
move every partition that is due to its next tier (copy, verify, record, then delete the source), and release
the landing zone's images of plates whose verified copy the policy lets it (`raw_images.landing`).
`lifecycle_job` and `mdp lifecycle --dry-run` both come here."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import dagster as dg

from mdp_assets.errors import MdpError
from mdp_assets.faults import fault_point
from mdp_assets.services.instance_status import latest_status
from mdp_assets.checksums import FileRecord
from mdp_assets.storage import catalog, lifecycle, raw_images
from mdp_assets.storage.policy_check import plates_of_record
from mdp_assets.storage.resource import MdpStorage
from mdp_assets.storage.store import PartitionStore
from mdp_assets.storage.tiers import EphemeralTier


@dataclass
class LifecycleReport:
    moves: list[dict[str, Any]]
    released: list[str]
    notes: list[str]
    failures: list[str]
    landing_releases: list[dict[str, Any]] = field(default_factory=list)


def release_consumed(
    instance: dg.DagsterInstance, storage: MdpStorage, consumers: dict[str, list[str]], plates: list[str] | None = None
) -> list[str]:
    """Release (delete the data of) transient partitions once every level that reads them was made from them."""
    policy = storage.policy()
    released = []
    for level, stages in policy.levels.items():
        store = storage.tier(stages[0].tier, policy)
        if not isinstance(store, EphemeralTier):
            continue
        for key in list(store.partition_keys()):
            record = store.read_record(key)
            if record is None or record.get("released_at") or (plates is not None and record["partition"] not in plates):
                continue
            own = latest_status(instance, dg.AssetKey(level), record["partition"])
            if own is None or own.data_version != record["data_version"]:
                continue
            downstream = [latest_status(instance, dg.AssetKey(c), record["partition"]) for c in consumers.get(level, [])]
            if not downstream or any(d is None or d.storage_id < own.storage_id for d in downstream):
                continue
            freed = store.release(key, datetime.now(timezone.utc).isoformat())
            rows = catalog.rows_for_partition(store.folder(key), store.name, record["level"], record["code_version"],
                                              record["data_version"])
            catalog.replace_partition(storage.catalog_path, record["asset"],
                                      record["partition"] or catalog.UNPARTITIONED, rows)
            released.append(f"{key}: released {freed} bytes from {store.name!r} (its readers are all made)")
    return released


def run_lifecycle(storage: MdpStorage, now: datetime, dry_run: bool = False) -> LifecycleReport:
    """Clean half-written copies, finish interrupted moves, and move every partition that is due."""
    policy = storage.policy()
    stores = {name: storage.tier(name, policy) for name in policy.tiers}
    report = LifecycleReport([], [], [], [])
    partition_store = storage.store()
    if not dry_run:
        # Whatever a crash left (a parked folder, a half-made copy, a move between copy and delete, a catalog
        # behind its tiers) is settled before anything moves.
        for note in partition_store.reconcile():
            (report.failures if "resolve by hand" in note else report.notes).append(note)
    stored, doubles = lifecycle.locate_all(policy, stores.__getitem__)
    for first, _second in doubles:
        report.notes.append(f"{first.key}: in two tiers; a real run settles it first")
    active_since = now - timedelta(days=policy.active_days)
    active = {plate for plate, when in catalog.last_materialized(storage.catalog_path).items() if when >= active_since}
    moves, notes = lifecycle.plan_moves(policy, stored, now, active, catalog.pinned(storage.catalog_path))
    report.notes.extend(notes)
    for move in moves:
        if dry_run:
            report.notes.append(f"{move.key}: would move {move.from_tier} -> {move.to_tier} ({move.reason})")
            continue
        try:
            report.moves.append(_move(storage, partition_store, stores, move, now.isoformat()))
        except MdpError as exc:
            report.failures.append(f"{move.key}: {exc}")
    stored, _ = lifecycle.locate_all(policy, stores.__getitem__)  # where the moves left everything
    for due in raw_images.due_landing_releases(policy, stored, now):
        if dry_run:
            report.notes.append(f"{due.key}: would release the landing images of {due.plate} "
                                f"(verified copy in {due.tier!r})")
            continue
        try:
            report.landing_releases.append(_release_landing(storage, stores, due, now))
        except MdpError as exc:
            report.failures.append(f"{due.key}: landing images kept: {exc}")
    return report


def _release_landing(storage: MdpStorage, stores: dict, due: raw_images.LandingRelease, now: datetime) -> dict[str, Any]:
    """Delete a plate's landing images whose stored copy is verified (each landing file must still be the
    stored content), then record the release in the partition record, its provenance and the catalog. Killed
    midway, the next run verifies again and deletes what is left: a release is never recorded before every
    image is gone, and no image is deleted before its stored copy is verified."""
    tier = stores[due.tier]
    problems = raw_images.landing_release_problems(due, tier, storage.cache_root)
    if problems:
        raise MdpError("; ".join(problems))
    plate = storage.registry().load(due.plate)
    landing = storage.landing()
    subdir = plate.manifest.images_prefix
    try:
        root: Path | None = landing.open_plate(due.plate)
    except MdpError:
        root = None  # every file already gone from an S3 landing zone
    stored = {Path(f["relpath"]).name: FileRecord(**f) for f in due.record["files"]
              if f["relpath"].startswith(f"{raw_images.IMAGES_DIR}/")}
    files = {name: (root / subdir / name) if root is not None else Path("/nonexistent") / name for name in stored}
    released, kept, freed = raw_images.release_files(files, stored, lambda name: landing.delete(due.plate, subdir + name))
    if kept:
        raise MdpError(f"{len(kept)} landing image(s) differ from the stored copy and were kept: {kept[:10]}")
    rule = storage.policy().raw_images.landing
    release = {"plate": due.plate, "released_at": now.isoformat(), "tier": due.tier, "landing": plate.landing,
               "files": len(released), "bytes": freed, "data_version": due.record["data_version"],
               "policy": f"release: {rule.release}, after_days: {rule.after_days:g}"}
    record = {**due.record, "landing_release": release,
              "provenance": {**due.record["provenance"], "landing_release": release}}
    tier.replace_record(due.key, record, message=f"mdp: landing images of {due.plate} released ({now.isoformat()})")
    rows = catalog.rows_for_record(record, lambda relpath: tier.uri(due.key, relpath), catalog.bookkeeping_of(tier, due.key),
                                   due.tier, record["level"], record["code_version"], record["data_version"])
    catalog.record_landing_release(storage.catalog_path, release, rows)
    return release


def apply_lifecycle(
    instance: dg.DagsterInstance, storage: MdpStorage, consumers: dict[str, list[str]], as_of: str | None, dry_run: bool
) -> LifecycleReport:
    """What `lifecycle_job` and `mdp lifecycle` do: release consumed transient levels, then move what is due
    as of `as_of` (ISO time; default now). A dry run only reports."""
    now = datetime.fromisoformat(as_of) if as_of else datetime.now(timezone.utc)
    now = now if now.tzinfo else now.replace(tzinfo=timezone.utc)
    released = [] if dry_run else release_consumed(instance, storage, consumers)
    report = run_lifecycle(storage, now, dry_run=dry_run)
    report.released.extend(released)
    return report


def describe_move(move: dict[str, Any]) -> str:
    return f"moved {move['asset']} of {move['partition']}: {move['from']} -> {move['to']} (sha256 {move['sha256']})"


def _move(storage: MdpStorage, partition_store: PartitionStore, stores: dict, move: lifecycle.PlannedMove, when: str) -> dict[str, Any]:
    source, target = stores[move.from_tier], stores[move.to_tier]
    record = source.read_record(move.key)
    # The plates' access classes as registered now: a reclassification after the write wins.
    plates = [access for _, access in plates_of_record(record, storage.registry())] or [None]
    partition_store.check_allowed(move.to_tier, plates, [f["bytes"] for f in record["files"]],
                                  f"{move.key} (lifecycle move)")
    new_record = lifecycle.copy_partition(source, target, move.key, record, move.to_tier, when, storage.cache_root)
    fault_point("move.copied")
    rows = catalog.rows_for_record(new_record, lambda relpath: target.uri(move.key, relpath),
                                   catalog.bookkeeping_of(target, move.key), move.to_tier,
                                   new_record["level"], new_record["code_version"], new_record["data_version"])
    moved = new_record["moves"][-1]
    catalog.record_move(storage.catalog_path, new_record["asset"], new_record["partition"] or catalog.UNPARTITIONED,
                        rows, moved)
    fault_point("move.cataloged")
    source.delete(move.key, message=f"mdp: moved {move.key} to {move.to_tier}")
    return {**moved, "asset": new_record["asset"], "partition": new_record["partition"], "uri": target.uri(move.key)}
