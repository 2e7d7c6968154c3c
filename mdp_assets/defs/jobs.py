"""Jobs: the per-plate chain through every level, and the cross-plate consensus."""

import dagster as dg

CONSENSUS = dg.AssetKey("consensus_profiles")

plate_job = dg.define_asset_job(
    "plate_job",
    selection=dg.AssetSelection.all() - dg.AssetSelection.assets(CONSENSUS),
    description="Every level of one plate, raw images to embeddings.",
)

consensus_job = dg.define_asset_job(
    "consensus_job",
    selection=dg.AssetSelection.assets(CONSENSUS),
    description="Consensus profiles across every plate.",
)
