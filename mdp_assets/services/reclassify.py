"""Reclassifying a plate: the one way a registered plate's origin (or patient-data or release flag) changes.

`mdp reclassify PLATE --origin ... --reason ...` records the change in the plate registry (when, who, why,
from, to) and in the catalog's `reclassifications` table, then re-checks every stored partition of the
plate and every partition made from it with other plates (`consensus_profiles`) against the policy with the
new access class: a partition that may stay, stays (its files lose world access if the plate is now
restricted); one that may not is moved, copy-verify-delete, to the first tier of its level's lifecycle that
allows it, or, when none does, withdrawn into `<data_root>/withdrawn/` (private, out of every tier, so
nothing serves it) and its catalog rows removed. Afterwards the policy is judged again against everything
stored, so a reclassification that left anything exposed fails loudly. Running it again with the same
access class re-checks and finishes what a crash left undone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import dagster as dg

from mdp_assets.errors import MdpError
from mdp_assets.plates.manifest import Origin
from mdp_assets.plates.registry import PlateAccess
from mdp_assets.storage import catalog, lifecycle
from mdp_assets.storage.policy import StoragePolicy
from mdp_assets.storage.policy_check import check_policy_against_stored, forget_checks, plates_of_record
from mdp_assets.storage.resource import MdpStorage
from mdp_assets.storage.store import is_restricted, restrict_files
from mdp_assets.storage.tiers import EphemeralTier, FilesystemTier

WITHDRAWN = "withdrawn"  # the folder under the data root for partitions no tier of their lifecycle may hold

RECLASSIFICATIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS reclassifications (
    plate VARCHAR, reclassified_at TIMESTAMPTZ, who VARCHAR, reason VARCHAR, from_access VARCHAR, to_access VARCHAR,
    actions VARCHAR
)
"""


@dataclass
class Reclassification:
    plate: str
    before: PlateAccess
    after: PlateAccess
    when: str
    actions: list[dict[str, Any]] = field(default_factory=list)

    def lines(self) -> list[str]:
        described = [f"plate {self.plate} reclassified: {_access(self.before)} -> {_access(self.after)}"]
        for action in self.actions:
            described.append(f"  {action['asset']} of {action['partition'] or 'all plates'}: {action['what']}")
        if not self.actions:
            described.append("  nothing of it is stored yet")
        return described


def _access(access: PlateAccess) -> str:
    flags = [f for f, on in (("identifiable patient data", access.identifiable_patient_data),
                             ("released", access.released)) if on]
    return access.origin + (f" ({', '.join(flags)})" if flags else "")


def reclassify_plate(storage: MdpStorage, barcode: str, origin: Origin, reason: str, who: str,
                     identifiable_patient_data: bool | None = None, released: bool | None = None,
                     instance: dg.DagsterInstance | None = None) -> Reclassification:
    """Change a plate's access class and bring everything stored of it into line with the policy. With an
    `instance`, each partition's outcome is also an asset observation, on the level's page in the UI."""
    if not reason.strip():
        raise MdpError(f"reclassifying plate {barcode} needs a reason (--reason)")
    policy = storage.policy()  # judged against the stored data as they stand, before anything changes
    registry = storage.registry()
    current = registry.load(barcode).manifest
    before, after = registry.reclassify(
        barcode, origin,
        current.identifiable_patient_data if identifiable_patient_data is None else identifiable_patient_data,
        current.released if released is None else released, reason, who)
    forget_checks()
    result = Reclassification(barcode, before.access, after.access, datetime.now(timezone.utc).isoformat())
    stores = {name: storage.tier(name, policy) for name in policy.tiers}
    stored, _ = lifecycle.locate_all(policy, stores.__getitem__)
    for item in stored:
        holds = item.partition == barcode or any(a.get("plate") == barcode for a in item.record.get("access") or [])
        if holds:
            result.actions.append(_recheck(storage, policy, stores, item, result.when))
    _record(storage, result, reason, who)
    if instance is not None:
        for action in result.actions:
            instance.report_runless_asset_event(dg.AssetObservation(
                dg.AssetKey(action["asset"]), partition=action["partition"],
                metadata={"reclassified_plate": barcode, "from": _access(result.before), "to": _access(result.after),
                          "reason": reason, "who": who, "outcome": action["what"]}))
    check_policy_against_stored(policy, Path(storage.policy_file), storage.catalog_path, registry,
                                lambda tier, key: stores[tier].read_record(key) if tier in stores else None)
    return result


def _problems(policy: StoragePolicy, tier: str, plates: list[tuple[str, PlateAccess | None]]) -> list[str]:
    problems = []
    for plate, access in plates:
        if access is None:
            if policy.tiers[tier].access != "private":
                problems.append(f"plate {plate}'s origin is unknown")
            continue
        problem = policy.origin_problem(tier, access.origin, access.identifiable_patient_data, access.released)
        if problem:
            problems.append(f"plate {plate}: {problem}")
    return problems


def _recheck(storage: MdpStorage, policy: StoragePolicy, stores: dict, item: lifecycle.Located,
             when: str) -> dict[str, Any]:
    registry = storage.registry()
    plates = list(plates_of_record(item.record, registry))
    if not plates and item.partition:
        registered = registry.get(item.partition)
        plates = [(item.partition, registered.access if registered else None)]
    accesses = [access for _, access in plates]
    restricted = any(a is not None and is_restricted(a) for a in accesses)
    action = {"asset": item.asset, "partition": item.partition, "tier": item.tier}
    problems = _problems(policy, item.tier, plates)
    if not problems:
        store = stores[item.tier]
        if restricted and isinstance(store, FilesystemTier) and store.folder(item.key).is_dir():
            restrict_files(store.folder(item.key), policy.tiers[item.tier].restricted_mode)
            return {**action, "what": f"stays in {item.tier!r} (allowed); its files lose world access"}
        return {**action, "what": f"stays in {item.tier!r} (allowed)"}
    if item.record.get("released_at"):
        return {**action, "what": f"released from {item.tier!r} already (no data left), its record kept"}
    record = {**item.record, "access": [a.__dict__ for a in accesses if a is not None]}
    stages = [s.tier for s in policy.levels.get(item.asset, [])]
    target = next((t for t in stages if t != item.tier and not isinstance(stores[t], EphemeralTier)
                   and not _problems(policy, t, plates)), None)
    source = stores[item.tier]
    if target is not None:
        new_record = lifecycle.copy_partition(source, stores[target], item.key, record, target, when,
                                              storage.cache_root)
        if restricted and isinstance(stores[target], FilesystemTier):
            restrict_files(stores[target].folder(item.key), policy.tiers[target].restricted_mode)
        rows = catalog.rows_for_record(new_record, lambda relpath: stores[target].uri(item.key, relpath),
                                       catalog.bookkeeping_of(stores[target], item.key), target, new_record["level"],
                                       new_record["code_version"], new_record["data_version"])
        catalog.record_move(storage.catalog_path, item.asset, item.partition or catalog.UNPARTITIONED, rows,
                            new_record["moves"][-1])
        source.delete(item.key, message=f"mdp: {item.key} moved to {target} (plate reclassified)")
        return {**action, "to": target, "what": f"moved {item.tier!r} -> {target!r} ({'; '.join(problems)})"}
    withdrawn = FilesystemTier(WITHDRAWN, storage.root / WITHDRAWN)
    lifecycle.copy_partition(source, withdrawn, item.key, record, WITHDRAWN, when, storage.cache_root)
    restrict_files(withdrawn.folder(item.key), 0o600 if restricted else 0o640)
    catalog.replace_partition(storage.catalog_path, item.asset, item.partition or catalog.UNPARTITIONED, [])
    source.delete(item.key, message=f"mdp: {item.key} withdrawn (plate reclassified)")
    return {**action, "to": str(withdrawn.folder(item.key)),
            "what": f"withdrawn from {item.tier!r} to {withdrawn.folder(item.key)}: no tier of its lifecycle "
                    f"{stages} may hold it ({'; '.join(problems)}); make it again to store it where allowed"}


def _record(storage: MdpStorage, result: Reclassification, reason: str, who: str) -> None:
    with catalog.connect(storage.catalog_path) as con:
        con.execute(RECLASSIFICATIONS_SCHEMA)
        con.execute("INSERT INTO reclassifications VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [result.plate, result.when, who, reason, json.dumps(result.before.__dict__),
                     json.dumps(result.after.__dict__), json.dumps(result.actions)])
