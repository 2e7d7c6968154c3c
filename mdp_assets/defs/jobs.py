"""Jobs: the per-plate chain through every level, and the cross-plate consensus."""

import dagster as dg

from mdp_assets.services.reprocess import CONSENSUS, CONSENSUS_JOB, PLATE_JOB

STORAGE_COSTS = dg.AssetKey("storage_costs")


def build_jobs(excluded_checks: dg.AssetChecksDefinition) -> list:
    """`plate_job` and `consensus_job`; `excluded_checks` (the storage verification) runs on its own."""
    plate_job = dg.define_asset_job(
        PLATE_JOB,
        selection=dg.AssetSelection.all() - dg.AssetSelection.assets(CONSENSUS, STORAGE_COSTS)
        - dg.AssetSelection.checks(excluded_checks),
        description="Every level of one plate, raw images to embeddings.",
    )
    consensus_job = dg.define_asset_job(
        CONSENSUS_JOB,
        selection=dg.AssetSelection.assets(CONSENSUS) - dg.AssetSelection.checks(excluded_checks),
        description="Consensus profiles across every plate.",
    )
    return [plate_job, consensus_job]
