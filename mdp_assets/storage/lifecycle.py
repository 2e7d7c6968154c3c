"""The lifecycle: partitions move to their level's next stage when their time in a stage is up.

A move copies the partition into the next tier (every file's sha256 verified there), records the move in
the partition record at the destination (from, to, when, checksum), and only then deletes the source.
A run killed between copy and delete leaves the partition in both tiers; the next run sees the
destination's record naming that very move, checks the copies against each other and finishes the move.
A copy whose checksums differ is removed and the source kept. Half-written copies are cleaned up.
Plates under active analysis (recently materialized) or pinned by a person stay where they are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from mdp_assets.errors import MdpError
from mdp_assets.checksums import FileRecord
from mdp_assets.storage.policy import StoragePolicy
from mdp_assets.storage.tiers import DamagedPartition, fetch_verified

UNPARTITIONED = "__all__"


@dataclass(frozen=True)
class Located:
    asset: str
    partition: str | None
    key: str
    tier: str
    record: dict[str, Any]


@dataclass(frozen=True)
class PlannedMove:
    asset: str
    partition: str | None
    key: str
    from_tier: str
    to_tier: str
    reason: str


def locate_all(policy: StoragePolicy, store_of: Callable[[str], Any]) -> tuple[list[Located], list[tuple[Located, Located]]]:
    """Every stored partition, and the pairs found in two tiers (an unfinished move)."""
    seen: dict[str, Located] = {}
    doubles = []
    for tier in policy.tiers:
        store = store_of(tier)
        for key in store.partition_keys():
            record = store.read_record(key)
            if record is None:
                continue
            found = Located(record["asset"], record["partition"], key, tier, record)
            if key in seen:
                doubles.append((seen[key], found))
            else:
                seen[key] = found
    return list(seen.values()), doubles


def plan_moves(
    policy: StoragePolicy, stored: list[Located], now: datetime, active: set[str], pinned: set[str]
) -> tuple[list[PlannedMove], list[str]]:
    """The moves due now, and notes on partitions held back (active, pinned, or outside their lifecycle)."""
    moves, notes = [], []
    for item in stored:
        if item.record.get("released_at"):
            continue
        stages = [s.tier for s in policy.stages(item.asset)] if item.asset in policy.levels else []
        if item.tier not in stages:
            notes.append(f"{item.key}: in tier {item.tier!r}, outside its level's lifecycle {stages}; left alone")
            continue
        index = stages.index(item.tier)
        days = policy.stages(item.asset)[index].days
        if days is None or index == len(stages) - 1:
            continue
        entered = datetime.fromisoformat(item.record.get("stage_entered_at") or item.record["written_at"])
        age = now - entered
        if age < timedelta(days=days):
            continue
        if item.partition in pinned:
            notes.append(f"{item.key}: due to move to {stages[index + 1]!r} but its plate is pinned")
            continue
        if item.partition in active:
            notes.append(f"{item.key}: due to move to {stages[index + 1]!r} but its plate is under active analysis")
            continue
        moves.append(PlannedMove(item.asset, item.partition, item.key, item.tier, stages[index + 1],
                                 f"{age.days} days in {item.tier!r} (stage lasts {days:g})"))
    return moves, notes


def moved_record(record: dict[str, Any], to_tier: str, when: str) -> dict[str, Any]:
    move = {"from": record["tier"], "to": to_tier, "when": when, "sha256": record["data_version"]}
    record = {k: v for k, v in record.items() if k != "versioned"}  # what a versioned tier said of its own copy
    return {**record, "tier": to_tier, "stage_entered_at": when, "moves": [*(record.get("moves") or []), move]}


def copy_partition(source_store: Any, target_store: Any, key: str, record: dict[str, Any], to_tier: str,
                   when: str, cache_root: Path) -> dict[str, Any]:
    """Copy a partition into the target tier, verified there; returns the record written at the target.
    The source is untouched. Raises MdpError (and leaves no copy) if a checksum differs."""
    data_files = [FileRecord(**f) for f in record["files"]]
    try:
        local = fetch_verified(source_store, key, data_files, cache_root)
    except DamagedPartition as damaged:
        raise MdpError(f"{damaged}; not moved") from None
    new_record = moved_record(record, to_tier, when)
    target_store.write(local, key, data_files, move=False, record=new_record,
                       message=f"mdp: lifecycle move of {key} from {record['tier']} ({when})")
    return target_store.read_record(key) or new_record  # as stored: a versioned tier adds its hashes


def is_copy_of(record: dict[str, Any], source: Located) -> bool:
    """Whether `record` is a lifecycle copy of the very partition `source` holds: its last move is from that
    tier and it is the same write (time and data version), not an older copy a newer write left behind."""
    moves = record.get("moves") or []
    return bool(moves) and moves[-1]["from"] == source.tier and moves[-1]["to"] == record["tier"] \
        and record["written_at"] == source.record["written_at"] and record["data_version"] == source.record["data_version"]


def finish_interrupted(first: Located, second: Located, store_of: Callable[[str], Any], cache_root: Path) -> str:
    """A partition found in two tiers: if one record names the move from the other, and the copies agree,
    delete the source. Returns what was done."""
    for source, target in ((first, second), (second, first)):
        if is_copy_of(target.record, source):
            expected = [FileRecord(**f) for f in source.record["files"]]
            try:
                fetch_verified(store_of(target.tier), target.key, expected, cache_root)
                copy_is_whole = True
            except DamagedPartition:
                copy_is_whole = False
            if copy_is_whole:
                store_of(source.tier).delete(source.key, message=f"mdp: finish the move of {source.key} to {target.tier}")
                return f"{source.key}: finished the interrupted move {source.tier} -> {target.tier}"
            store_of(target.tier).delete(target.key, message=f"mdp: drop a bad copy of {target.key}")
            return f"{source.key}: the copy in {target.tier!r} did not match; removed it, kept {source.tier!r}"
    raise MdpError(f"{first.key} is stored in both {first.tier!r} and {second.tier!r} and neither records a move from "
                   "the other; resolve by hand (mdp catalog --query problems)")
