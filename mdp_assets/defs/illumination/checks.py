"""The image QC checks, each its own step over the stored `image_qc` partition: they run with `image_qc`
(the UI's Materialize includes them) or alone (the asset's Checks tab, `Execute`), and name every failing
image in a table the UI shows without opening raw markdown."""

import dagster as dg
import pandas as pd

from mdp_assets.config import StepSettings
from mdp_assets.defs.plates.partitions import plate_check
from mdp_assets.science.image_qc import failing_sites, too_many_failing
from mdp_assets.storage.resource import MdpStorage

FAILING_COLUMNS = ["file_name", "Metadata_Well", "Metadata_Site", "Metadata_Channel",
                   "ImageQuality_PowerLogLogSlope", "ImageQuality_PercentMaximal"]


def failing_images_table(bad: pd.DataFrame, limit: int = 200) -> dg.TableMetadataValue:
    """The failing images as a table: file, well, site, channel and both measures."""
    columns = [c for c in FAILING_COLUMNS if c in bad.columns]
    records = [dg.TableRecord({c: (float(v) if isinstance(v, float) else (int(v) if c == "Metadata_Site" else str(v)))
                               for c, v in zip(columns, row)})
               for row in bad[columns].head(limit).itertuples(index=False)]
    schema = dg.TableSchema(columns=[dg.TableColumn(c, "float" if c.startswith("ImageQuality") else
                                                    ("int" if c == "Metadata_Site" else "string")) for c in columns])
    return dg.MetadataValue.table(records, schema=schema)


@plate_check(asset="image_qc",
                description="share of sites passing QC; failing sites are excluded below, and the plate stops "
                "(illumination_functions refuses it) only when more than qc.max_failing_site_fraction of its sites fail")
def qc_pass_fraction(context: dg.AssetCheckExecutionContext, image_qc: pd.DataFrame, settings: StepSettings,
                     storage: MdpStorage) -> dg.AssetCheckResult:
    plate = storage.plate(context.op_execution_context.partition_key)
    limit = settings.for_plate(plate.manifest.settings, plate.barcode).qc.max_failing_site_fraction
    failing = failing_sites(image_qc)
    sites = image_qc[["Metadata_Well", "Metadata_Site"]].drop_duplicates().shape[0]
    stops = too_many_failing(image_qc, limit)
    return dg.AssetCheckResult(
        passed=stops is None,
        severity=dg.AssetCheckSeverity.ERROR,
        description=stops or f"{len(failing)} of {sites} sites fail QC and are excluded below",
        metadata={"site_pass_fraction": 1 - len(failing) / sites, "max_failing_site_fraction": limit,
                  "images": len(image_qc), "failing_sites": ", ".join(failing[:100]) or "none",
                  "failed_images": failing_images_table(image_qc[~image_qc["qc_pass"]])},
    )


def _flag_check(image_qc: pd.DataFrame, flag: str, what: str) -> dg.AssetCheckResult:
    bad = image_qc[image_qc[flag]]
    return dg.AssetCheckResult(
        passed=bad.empty,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{len(bad)} of {len(image_qc)} images {what}; their sites are excluded from the levels below",
        metadata={"images": len(bad), "failing_images": failing_images_table(bad), "excluded_downstream": True},
    )


@plate_check(asset="image_qc",
                description="names every image judged blurred (ImageQuality_PowerLogLogSlope against the qc settings)")
def no_blurred_images(image_qc: pd.DataFrame) -> dg.AssetCheckResult:
    return _flag_check(image_qc, "qc_blurred", "are blurred")


@plate_check(asset="image_qc",
                description="names every image judged saturated (ImageQuality_PercentMaximal against the qc settings)")
def no_saturated_images(image_qc: pd.DataFrame) -> dg.AssetCheckResult:
    return _flag_check(image_qc, "qc_saturated", "are saturated")
