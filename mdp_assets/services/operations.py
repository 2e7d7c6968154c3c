"""What a data manager does with the instance: make stale levels again, rebuild the catalog, trace provenance.

These functions are used by the `mdp` command line and by tests; the Dagster UI offers the same through
backfills and the asset pages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import dagster as dg
import pandas as pd

from mdp_assets.defs.jobs import CONSENSUS, PLATE_JOB
from mdp_assets.storage.resource import MdpStorage
from mdp_assets.services.instance_status import latest_status, stale_reasons
from mdp_assets.storage import catalog
from mdp_assets.plates.inventory import plate_fingerprint
from mdp_assets.storage.provenance import describe


@dataclass(frozen=True)
class ReprocessOutcome:
    plate: str
    levels: list[str]
    reasons: dict[str, str]
    success: bool
    run_id: str | None


def plate_levels(defs: dg.Definitions) -> list[dg.AssetKey]:
    graph = defs.resolve_asset_graph()
    return [k for k in graph.toposorted_asset_keys if graph.get(k).partitions_def is not None]


def materialize_stale(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    storage: MdpStorage,
    plates: list[str],
    report: Callable[[str], None] = print,
) -> list[ReprocessOutcome]:
    """Materialize exactly the stale levels of each plate (and the consensus if it is stale after that)."""
    outcomes = []
    keys = plate_levels(defs)
    graph = defs.resolve_asset_graph()
    consumers = {k.path[-1]: [c.path[-1] for c in graph.get(k).child_keys] for k in keys}
    job = defs.resolve_job_def(PLATE_JOB)
    for plate in plates:
        try:
            fingerprint = plate_fingerprint(storage.plate_folder(plate))
        except Exception:  # the landing folder may be archived; then only code and data versions count
            fingerprint = None
        reasons = stale_reasons(instance, defs, keys, plate, fingerprint)
        if not reasons:
            report(f"{plate}: every level is materialized and unchanged; nothing to do")
            outcomes.append(ReprocessOutcome(plate, [], {}, True, None))
            continue
        for key in list(reasons):
            # A stale level that reads a released transient level needs that level made again first.
            for parent in graph.get(key).parent_keys:
                if parent not in reasons and _released(storage, parent, plate):
                    reasons[parent] = f"re-made for {key.to_user_string()} (it was released as a transient level)"
        names = [k.to_user_string() for k in keys if k in reasons]
        report(f"{plate}: materializing {len(names)} level(s): {', '.join(names)}")
        result = job.execute_in_process(
            # op_selection subsets within plate_job (asset_selection would also pull in the verification checks)
            instance=instance, partition_key=plate, op_selection=[k.path[-1] for k in keys if k in reasons],
            raise_on_error=False,
        )
        outcomes.append(ReprocessOutcome(plate, names, {k.to_user_string(): v for k, v in reasons.items()},
                                         result.success, result.run_id))
        if not result.success:
            return outcomes
        for line in release_consumed(instance, storage, consumers, plates=[plate]):
            report(line)
    consensus_reasons = stale_reasons(instance, defs, [CONSENSUS], None)
    if consensus_reasons:
        report(f"consensus_profiles: {consensus_reasons[CONSENSUS]}; materializing it across every plate")
        result = defs.resolve_job_def("consensus_job").execute_in_process(instance=instance, raise_on_error=False)
        outcomes.append(ReprocessOutcome("(all plates)", [CONSENSUS.to_user_string()],
                                         {CONSENSUS.to_user_string(): consensus_reasons[CONSENSUS]}, result.success, result.run_id))
    return outcomes


def _released(storage: MdpStorage, key: dg.AssetKey, plate: str) -> bool:
    from mdp_assets.storage.io_manager import locate

    found = locate(storage, key.path[-1], plate) if key.path[-1] in storage.policy().levels else None
    return bool(found and found[1].get("released_at"))


def rebuild_catalog(instance: dg.DagsterInstance, defs: dg.Definitions, storage: MdpStorage) -> int:
    """The catalog from scratch: every partition folder in every tier, with code and data versions and the
    level taken from the Dagster event log."""
    graph = defs.resolve_asset_graph()

    def versions(asset: str, partition: str | None) -> tuple[str | None, str | None, str | None]:
        key = dg.AssetKey.from_user_string(asset)
        status = latest_status(instance, key, partition)
        level = graph.get(key).group_name if graph.has(key) else None
        if status is None:
            return level, None, None
        return level, status.code_version, status.data_version

    policy = storage.policy()
    return catalog.rebuild(storage.catalog_path, [storage.tier(name, policy) for name in policy.tiers], versions)


def provenance_chain(instance: dg.DagsterInstance, plate: str, level: str) -> list[dict[str, Any]]:
    """The provenance records of a level of a plate and of every level it was made from, down to raw_images."""
    chain, seen = [], set()
    pending = [(level, plate)]
    while pending:
        asset, partition = pending.pop(0)
        if (asset, partition) in seen or asset == "landing_zone":
            continue
        seen.add((asset, partition))
        status = latest_status(instance, dg.AssetKey.from_user_string(asset), partition)
        if status is None:
            raise catalog.MdpError(f"{asset} of {partition or 'all plates'} has never been materialized")
        record = status.value("provenance")
        if record is None:
            raise catalog.MdpError(f"{asset} of {partition} was materialized without provenance; re-materialize it")
        chain.append(record)
        pending.extend((item["asset"], item.get("partition")) for item in record["inputs"])
    return chain


def explain_chain(chain: list[dict[str, Any]], raw_images: pd.DataFrame | None, max_files: int = 10) -> str:
    parts = [describe(record) for record in chain]
    if raw_images is not None:
        lines = [f"raw image files ({len(raw_images)}), as inventoried with their checksums:"]
        for row in raw_images.head(max_files).itertuples(index=False):
            lines.append(f"  {row.source_uri if hasattr(row, 'source_uri') else row.uri}  sha256 {row.sha256}")
        if len(raw_images) > max_files:
            lines.append(f"  ... and {len(raw_images) - max_files} more (the raw_images table lists them all)")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


@dataclass
class LifecycleReport:
    moves: list[dict[str, Any]]
    released: list[str]
    notes: list[str]
    failures: list[str]


def release_consumed(
    instance: dg.DagsterInstance, storage: MdpStorage, consumers: dict[str, list[str]], plates: list[str] | None = None
) -> list[str]:
    """Release (delete the data of) transient partitions once every level that reads them was made from them."""
    from mdp_assets.storage.tiers import EphemeralTier

    policy = storage.policy()
    released = []
    for level, stages in policy.levels.items():
        store = storage.tier(stages[0].tier, policy)
        if not isinstance(store, EphemeralTier):
            continue
        key_of_asset = dg.AssetKey(level)
        for key in list(store.partition_keys()):
            record = store.read_record(key)
            if record is None or record.get("released_at") or (plates is not None and record["partition"] not in plates):
                continue
            own = latest_status(instance, key_of_asset, record["partition"])
            if own is None or own.data_version != record["data_version"]:
                continue
            downstream = [latest_status(instance, dg.AssetKey(c), record["partition"]) for c in consumers.get(level, [])]
            if not downstream or any(d is None or d.storage_id < own.storage_id for d in downstream):
                continue
            when = datetime.now(timezone.utc).isoformat()
            freed = store.release(key, when)
            rows = catalog.rows_for_partition(store.folder(key), store.name, record["level"], record["code_version"],
                                              record["data_version"])
            catalog.replace_partition(storage.catalog_path, record["asset"], record["partition"] or catalog.UNPARTITIONED, rows)
            released.append(f"{key}: released {freed} bytes from {store.name!r} (its readers are all made)")
    return released


def run_lifecycle(storage: MdpStorage, now: datetime, dry_run: bool = False) -> LifecycleReport:
    """Clean half-written copies, finish interrupted moves, and move every partition that is due."""
    from mdp_assets.storage import lifecycle

    policy = storage.policy()
    stores = {name: storage.tier(name, policy) for name in policy.tiers}
    report = LifecycleReport([], [], [], [])
    if not dry_run:
        for store in stores.values():
            for removed in store.clean_partials():
                report.notes.append(f"removed a half-written copy: {removed}")
    stored, doubles = lifecycle.locate_all(policy, stores.__getitem__)
    for first, second in doubles:
        try:
            report.notes.append(lifecycle.finish_interrupted(first, second, stores.__getitem__, storage.cache_root)
                                if not dry_run else f"{first.key}: in two tiers; a real run finishes the move")
        except catalog.MdpError as exc:
            report.failures.append(str(exc))
    if doubles and not dry_run:
        stored, _ = lifecycle.locate_all(policy, stores.__getitem__)
    active_since = now - timedelta(days=policy.active_days)
    active = {plate for plate, when in catalog.last_materialized(storage.catalog_path).items() if when >= active_since}
    moves, notes = lifecycle.plan_moves(policy, stored, now, active, catalog.pinned(storage.catalog_path))
    report.notes.extend(notes)
    for move in moves:
        if dry_run:
            report.notes.append(f"{move.key}: would move {move.from_tier} -> {move.to_tier} ({move.reason})")
            continue
        try:
            report.moves.append(_move(storage, policy, stores, move, now.isoformat()))
        except catalog.MdpError as exc:
            report.failures.append(f"{move.key}: {exc}")
    return report


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


def _move(storage: MdpStorage, policy, stores: dict, move, when: str) -> dict[str, Any]:
    from mdp_assets.storage import lifecycle

    source, target = stores[move.from_tier], stores[move.to_tier]
    record = source.read_record(move.key)
    access = record.get("access") or []
    what = f"{move.key} (lifecycle move)"
    for plate in access:
        policy.check_origin(move.to_tier, plate["origin"], plate["identifiable_patient_data"], plate["released"], what)
    if not access and policy.tiers[move.to_tier].access != "private":
        raise catalog.MdpError(f"{what}: the plate's origin is unknown, so it may only go to a private tier")
    policy.check_limits(move.to_tier, [f["bytes"] for f in record["files"]],
                        lambda: catalog.tier_bytes(storage.catalog_path, move.to_tier), what)
    new_record = lifecycle.copy_partition(source, target, move.key, record, move.to_tier, when, storage.cache_root)
    rows = catalog.rows_for_record(new_record, lambda relpath: target.uri(move.key, relpath),
                                   catalog.bookkeeping_of(target, move.key), move.to_tier,
                                   new_record["level"], new_record["code_version"], new_record["data_version"])
    moved = new_record["moves"][-1]
    catalog.record_move(storage.catalog_path, new_record["asset"], new_record["partition"] or catalog.UNPARTITIONED, rows, moved)
    source.delete(move.key, message=f"mdp: moved {move.key} to {move.to_tier}")
    return {**moved, "asset": new_record["asset"], "partition": new_record["partition"], "uri": target.uri(move.key)}
