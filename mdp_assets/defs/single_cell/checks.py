"""The single-cell QC check, its own step over the stored flags: runs with `single_cell_qc` or alone, and
names the wells over the maximum."""

import dagster as dg
import pandas as pd

from mdp_assets.config import StepSettings
from mdp_assets.defs.plates.partitions import plate_check
from mdp_assets.science.cell_qc import OUTLIER, flagged_by_well, well_flags
from mdp_assets.storage.partitions import TABLE_FILE, StoredPartition


def flagged_fraction_check(table: pd.DataFrame, maximum: float) -> dg.AssetCheckResult:
    """Fails when more than `maximum` of the plate's cells, or of any well's, are flagged; names those wells."""
    fraction = float(table[OUTLIER].mean()) if len(table) else 0.0
    wells = flagged_by_well(table)
    over = wells[wells["flagged_fraction"] > maximum]
    return dg.AssetCheckResult(
        check_name="flagged_fraction",
        passed=fraction <= maximum and over.empty,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "flagged_fraction": fraction,
            "maximum": maximum,
            "wells_over_maximum": len(over),
            "wells": dg.MetadataValue.md("\n".join(
                f"- {r.Metadata_Well}: {r.flagged} of {r.cells} cells ({r.flagged_fraction:.1%})"
                for r in over.itertuples()) or "none"),
        },
    )


@plate_check(asset="single_cell_qc",
                description="share of the plate's and of each well's cells flagged as outliers (cell_qc.max_flagged_fraction)")
def flagged_fraction(single_cell_qc: StoredPartition, settings: StepSettings) -> dg.AssetCheckResult:
    # Two columns of the stored flags, not the whole QC table.
    return flagged_fraction_check(well_flags(single_cell_qc.path(TABLE_FILE)), settings.cell_qc.max_flagged_fraction)
