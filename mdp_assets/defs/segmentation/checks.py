"""The segmentation check, its own step over the stored masks: runs with `segmentation_masks` or alone."""

import dagster as dg
import pandas as pd

from mdp_assets.defs.plates.partitions import plate_check
from mdp_assets.science.image_qc import empty_or_failed_wells
from mdp_assets.storage.partitions import StoredPartition


@plate_check(asset="segmentation_masks",
                additional_ins={"raw_images": dg.AssetIn("raw_images")},
                description="names every well with no usable site or no nucleus")
def no_empty_or_failed_wells(segmentation_masks: StoredPartition, raw_images: pd.DataFrame) -> dg.AssetCheckResult:
    sites = pd.read_parquet(segmentation_masks.path("sites.parquet"))
    problems = empty_or_failed_wells(set(raw_images["Metadata_Well"]), sites)
    wells = raw_images["Metadata_Well"].nunique()
    return dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{len(problems)} of {wells} wells have no usable site or no nucleus",
        metadata={"wells": len(problems),
                  "problems": dg.MetadataValue.table(
                      [dg.TableRecord({"well": w, "why": why}) for w, why in problems.items()],
                      schema=dg.TableSchema(columns=[dg.TableColumn("well", "string"), dg.TableColumn("why", "string")]))},
    )
