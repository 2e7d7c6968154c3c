"""The raw_images check: does the platemap describe every imaged well? Wells it lacks (or leaves without a
treatment) would otherwise reach the profiles unannotated, silently; here they are a failing check result."""

import dagster as dg
import pandas as pd

from mdp_assets.defs.plates.partitions import plate_check
from mdp_assets.storage.resource import MdpStorage

LISTED = 100


@plate_check(asset="raw_images",
             description="every imaged well has a platemap row (and a treatment, when the manifest names a treatment "
             "column); platemap wells that were not imaged are listed")
def platemap_matches_images(context: dg.AssetCheckExecutionContext, raw_images: pd.DataFrame,
                            storage: MdpStorage) -> dg.AssetCheckResult:
    plate = storage.plate(context.op_execution_context.partition_key)
    coverage = plate.platemap_coverage(set(raw_images["Metadata_Well"]))
    problems = []
    if coverage.imaged_without_row:
        problems.append(f"{len(coverage.imaged_without_row)} imaged well(s) have no platemap row: "
                        f"{', '.join(coverage.imaged_without_row[:LISTED])}")
    if coverage.imaged_without_treatment:
        problems.append(f"{len(coverage.imaged_without_treatment)} imaged well(s) have no "
                        f"{plate.manifest.treatment_column!r} in the platemap: "
                        f"{', '.join(coverage.imaged_without_treatment[:LISTED])}")
    wells = raw_images["Metadata_Well"].nunique()
    return dg.AssetCheckResult(
        passed=coverage.complete,
        severity=dg.AssetCheckSeverity.ERROR if coverage.imaged_without_row else dg.AssetCheckSeverity.WARN,
        description="; ".join(problems) or f"the platemap describes all {wells} imaged wells"
        + (f" ({len(coverage.not_imaged)} platemap wells were not imaged)" if coverage.not_imaged else ""),
        metadata={"imaged_wells": int(wells),
                  "imaged_without_platemap_row": ", ".join(coverage.imaged_without_row[:LISTED]) or "none",
                  "imaged_without_treatment": ", ".join(coverage.imaged_without_treatment[:LISTED]) or "none",
                  "platemap_wells_not_imaged": ", ".join(coverage.not_imaged[:LISTED]) or "none"},
    )
