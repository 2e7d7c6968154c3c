"""Making exactly the stale levels again: which levels of which plates are out of date and why, and runs
that make them. `mdp reprocess`, `mdp run` and `mdp demo` submit those runs to the instance; tests can
execute the same plan in process."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import dagster as dg

from mdp_assets.errors import MdpError
from mdp_assets.plates.inventory import plate_fingerprint
from mdp_assets.plates.registry import PARTITIONS
from mdp_assets.services.instance_status import asset_graph_of, latest_status, stale_reasons
from mdp_assets.services.lifecycle import release_consumed
from mdp_assets.services.runs import RunOutcome, RunRequest
from mdp_assets.storage import catalog
from mdp_assets.storage.resource import MdpStorage

PLATE_JOB = "plate_job"
CONSENSUS_JOB = "consensus_job"
CONSENSUS = dg.AssetKey("consensus_profiles")


@dataclass(frozen=True)
class PlateWork:
    """The levels of one plate to make, upstream first, and why each is stale."""

    plate: str
    levels: list[str]
    reasons: dict[str, str] = field(default_factory=dict)

    def request(self) -> RunRequest:
        return RunRequest(PLATE_JOB, self.plate, tuple(self.levels))


def plate_levels(defs: dg.Definitions | dg.RepositoryDefinition) -> list[dg.AssetKey]:
    graph = asset_graph_of(defs)
    return [k for k in graph.toposorted_asset_keys if graph.get(k).partitions_def is not None]


def plan_plate(instance: dg.DagsterInstance, defs: dg.Definitions | dg.RepositoryDefinition, storage: MdpStorage, plate: str,
               levels: list[str] | None = None) -> PlateWork:
    """The stale levels of a plate (or, with `levels`, those levels whatever their state), with reasons."""
    keys = plate_levels(defs)
    known = {k.path[-1] for k in keys}
    if levels:
        unknown = sorted(set(levels) - known)
        if unknown:
            raise MdpError(f"unknown level(s) {unknown}; the levels are {[k.path[-1] for k in keys]}")
        return PlateWork(plate, [k.path[-1] for k in keys if k.path[-1] in levels],
                         {name: "asked for" for name in levels})
    try:
        # A landing zone released after its verified copy (policy raw_images.landing) no longer says what the
        # plate is: like an archived folder, only code and data versions count.
        released = catalog.landing_release(storage.catalog_path, plate) is not None
        fingerprint = None if released else plate_fingerprint(storage.plate_folder(plate))
    except MdpError:  # the landing folder may be archived; then only code and data versions count
        fingerprint = None
    reasons = stale_reasons(instance, defs, keys, plate, fingerprint)
    for asset, statuses in catalog.damaged_levels(storage.catalog_path, plate).items():
        key = dg.AssetKey.from_user_string(asset)
        if key in keys and key not in reasons:
            reasons[key] = f"stored files {statuses} (found by mdp verify)"
    for key, why in unrecorded_levels(instance, storage, keys, plate).items():
        reasons.setdefault(key, why)
    graph = asset_graph_of(defs)
    for key in list(reasons):
        # A stale level that reads a released transient level needs that level made again first.
        for parent in graph.get(key).parent_keys:
            if parent not in reasons and _released(storage, parent.path[-1], plate):
                reasons[parent] = f"re-made for {key.to_user_string()} (it was released as a transient level)"
    return PlateWork(plate, [k.path[-1] for k in keys if k in reasons],
                     {k.to_user_string(): v for k, v in reasons.items()})


def unrecorded_levels(instance: dg.DagsterInstance, storage: MdpStorage, keys: list[dg.AssetKey],
                      plate: str) -> dict[dg.AssetKey, str]:
    """Levels whose stored copy is not the one Dagster last recorded: a run died after storing it and before
    Dagster recorded the materialization, so what reads it could not say what it read. Made again."""
    store = storage.store()
    found = {}
    for key in keys:
        level = key.path[-1]
        if level not in store.policy.levels:
            continue
        located = store.locate(level, plate)
        status = latest_status(instance, key, plate)
        if located is not None and status is not None and located.record.get("data_version") != status.data_version \
                and not located.released:
            found[key] = (f"its stored copy (data version {str(located.record.get('data_version'))[:12]}, run "
                          f"{located.record.get('run_id')}) is not the materialization Dagster recorded; a run died "
                          "while storing it")
    return found


def _released(storage: MdpStorage, asset: str, plate: str) -> bool:
    if asset not in storage.policy().levels:
        return False
    found = storage.store().locate(asset, plate)
    return bool(found and found.released)


def consensus_reason(instance: dg.DagsterInstance, defs: dg.Definitions | dg.RepositoryDefinition) -> str | None:
    return stale_reasons(instance, defs, [CONSENSUS], None).get(CONSENSUS)


def plates_without_well_profiles(instance: dg.DagsterInstance) -> list[str]:
    """Registered plates whose well_profiles were never made: the consensus reads every plate's, so it waits."""
    plates = instance.get_dynamic_partitions(PARTITIONS)
    made = instance.get_materialized_partitions(dg.AssetKey("well_profiles"))
    return sorted(set(plates) - set(made))


def consumers_of(assets: Iterable[object]) -> dict[str, list[str]]:
    """Level -> the levels that read it, from asset definitions (a Definitions' `assets`)."""
    consumers: dict[str, list[str]] = {}
    for asset in assets:
        if isinstance(asset, dg.AssetsDefinition):
            for key in asset.keys:
                for parent in asset.asset_deps[key]:
                    consumers.setdefault(parent.path[-1], []).append(key.path[-1])
    return consumers


def materialize_in_process(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    storage: MdpStorage,
    plates: list[str],
    report: Callable[[str], None] = print,
) -> list[RunOutcome]:
    """Make the stale levels of each plate, then the consensus if it is stale, in this process (tests, and
    debugging); commands submit the same plan to the instance instead."""
    outcomes = []
    for plate in plates:
        work = plan_plate(instance, defs, storage, plate)
        if not work.levels:
            report(f"{plate}: every level is materialized and unchanged; nothing to do")
            continue
        report(f"{plate}: materializing {len(work.levels)} level(s): {', '.join(work.levels)}")
        result = defs.resolve_job_def(PLATE_JOB).execute_in_process(
            # op_selection subsets within plate_job (asset_selection would also pull in the verification checks)
            instance=instance, partition_key=plate, op_selection=work.levels, raise_on_error=False,
            tags={"mdp/plate": plate, "mdp/command": "in-process"},
        )
        outcomes.append(RunOutcome(result.run_id, PLATE_JOB, plate, "SUCCESS" if result.success else "FAILURE"))
        if not result.success:
            return outcomes
        for line in release_consumed(instance, storage, consumers_of(defs.assets or []), plates=[plate]):
            report(line)
    reason = consensus_reason(instance, defs)
    waiting_for = plates_without_well_profiles(instance)
    if reason and waiting_for:
        report(f"consensus_profiles: {reason}; it waits until every plate has well_profiles (not yet: {waiting_for})")
    elif reason:
        report(f"consensus_profiles: {reason}; materializing it across every plate")
        result = defs.resolve_job_def(CONSENSUS_JOB).execute_in_process(instance=instance, raise_on_error=False)
        outcomes.append(RunOutcome(result.run_id, CONSENSUS_JOB, None, "SUCCESS" if result.success else "FAILURE"))
    return outcomes
