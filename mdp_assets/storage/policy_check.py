"""A policy against the data already stored: a policy that would expose what a tier holds is refused.

A policy file is only text: re-declaring a tier `access: public` while it holds a collaborator's plate, or
letting a cloud tier hold identifiable-patient data it already holds by mistake, must not pass silently.
Whenever a policy is loaded (a new or changed file, and after a plate is reclassified), every stored
partition the catalog lists is judged against it, with each plate's access class as registered now (so a
reclassification's record wins over the one written with the data). Consensus-like partitions that
combine plates are judged for every plate their partition record names.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mdp_assets.errors import MdpError
from mdp_assets.plates.registry import PlateAccess, PlateRegistry
from mdp_assets.storage import catalog
from mdp_assets.storage.partitions import partition_key
from mdp_assets.storage.policy import StoragePolicy

MAX_LISTED = 20


@dataclass(frozen=True)
class Holding:
    """One stored partition: where it is and whose data it holds (None: a plate of unknown origin)."""

    tier: str
    level: str
    partition: str
    plates: tuple[tuple[str, PlateAccess | None], ...]

    @property
    def key(self) -> str:
        return partition_key(self.level, None if self.partition == catalog.UNPARTITIONED else self.partition)


def plates_of_record(record: dict[str, Any] | None, registry: PlateRegistry) -> tuple[tuple[str, PlateAccess | None], ...]:
    """The plates a partition record says it holds, each with its access class as registered now."""
    plates = []
    for written in (record or {}).get("access") or []:
        registered = registry.get(written["plate"])
        plates.append((written["plate"], registered.access if registered is not None else PlateAccess(**written)))
    return tuple(plates)


def stored_holdings(catalog_path: Path, registry: PlateRegistry,
                    read_record: Callable[[str, str], dict[str, Any] | None]) -> list[Holding]:
    """Every partition the catalog lists; `read_record(tier, key)` gives the record of a partition that
    combines plates (its `access` lists them)."""
    if not catalog_path.exists():
        return []
    with catalog.connect(catalog_path, read_only=True) as con:
        rows = con.execute("SELECT DISTINCT tier, asset_key, partition FROM stored_files ORDER BY 1, 2, 3").fetchall()
    holdings = []
    for tier, level, partition in rows:
        if partition != catalog.UNPARTITIONED:
            registered = registry.get(partition)
            plates: tuple[tuple[str, PlateAccess | None], ...] = (
                (partition, registered.access if registered is not None else None),)
        else:
            plates = plates_of_record(read_record(tier, partition_key(level, None)), registry)
        holdings.append(Holding(tier, level, partition, plates))
    return holdings


def exposures(policy: StoragePolicy, holdings: list[Holding]) -> list[str]:
    """Each stored partition that this policy would not allow where it is, with the tier, level and plate."""
    problems = []
    for holding in holdings:
        if holding.tier not in policy.tiers:
            continue  # a tier the policy no longer names is not served by it; the catalog's problems query shows it
        for plate, access in holding.plates:
            where = f"tier {holding.tier!r} holds {holding.level} of plate {plate}"
            if access is None:
                if policy.tiers[holding.tier].access != "private":
                    problems.append(f"{where}, a plate of unknown origin, and would be {policy.tiers[holding.tier].access}")
                continue
            problem = policy.origin_problem(holding.tier, access.origin, access.identifiable_patient_data,
                                            access.released)
            if problem:
                problems.append(f"{where} ({access.origin}"
                                f"{', identifiable patient data' if access.identifiable_patient_data else ''}"
                                f"{', released' if access.released else ''}), which this policy does not allow there: "
                                f"{problem.split(': ', 1)[1]}")
    return problems


def check_policy_against_stored(policy: StoragePolicy, policy_path: Path, catalog_path: Path, registry: PlateRegistry,
                                read_record: Callable[[str, str], dict[str, Any] | None]) -> None:
    """Refuse a policy under which stored data would be exposed, naming each tier, level and plate."""
    problems = exposures(policy, stored_holdings(catalog_path, registry, read_record))
    if problems:
        listed = "; ".join(problems[:MAX_LISTED]) + (f"; and {len(problems) - MAX_LISTED} more"
                                                      if len(problems) > MAX_LISTED else "")
        raise MdpError(f"storage policy {policy.name!r} would expose data already stored: {listed}. Move or withdraw "
                       "those partitions first (`mdp reclassify PLATE ...` re-checks and moves a plate's data), or "
                       "keep the tiers' access as it was", path=policy_path)


_checked: set[tuple[Any, ...]] = set()
_lock = threading.Lock()


def check_once(policy: StoragePolicy, policy_path: Path, catalog_path: Path, registry: PlateRegistry,
               read_record: Callable[[str, str], dict[str, Any] | None]) -> None:
    """`check_policy_against_stored`, once per version of the policy file and data root in this process (every
    read and write loads the policy); a policy that fails is checked again each time, so it keeps failing."""
    status = policy_path.stat()
    key = (str(policy_path.resolve()), status.st_mtime_ns, status.st_size, str(catalog_path))
    with _lock:
        if key in _checked:
            return
    check_policy_against_stored(policy, policy_path, catalog_path, registry, read_record)
    with _lock:
        _checked.add(key)


def forget_checks() -> None:
    """Judge every policy again on its next load (after a plate's access class changed)."""
    with _lock:
        _checked.clear()
