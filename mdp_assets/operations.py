"""What a data manager does with the instance: make stale levels again, rebuild the catalog, trace provenance.

These functions are used by the `mdp` command line and by tests; the Dagster UI offers the same through
backfills and the asset pages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dagster as dg
import pandas as pd

from mdp_assets.defs.jobs import CONSENSUS, PLATE_JOB
from mdp_assets.defs.storage.resources import MdpStorage
from mdp_assets.instance_status import latest_status, stale_reasons
from mdp_assets.lib import catalog
from mdp_assets.lib.inventory import plate_fingerprint
from mdp_assets.lib.provenance import describe


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
    consensus_reasons = stale_reasons(instance, defs, [CONSENSUS], None)
    if consensus_reasons:
        report(f"consensus_profiles: {consensus_reasons[CONSENSUS]}; materializing it across every plate")
        result = defs.resolve_job_def("consensus_job").execute_in_process(instance=instance, raise_on_error=False)
        outcomes.append(ReprocessOutcome("(all plates)", [CONSENSUS.to_user_string()],
                                         {CONSENSUS.to_user_string(): consensus_reasons[CONSENSUS]}, result.success, result.run_id))
    return outcomes


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
