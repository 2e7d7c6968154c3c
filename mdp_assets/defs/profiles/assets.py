"""Levels 5 and 6, profiles: single-cell profiles, well-level (bulk) profiles, and consensus profiles."""

import dagster as dg
import pandas as pd

from mdp_assets.config import StepSettings
from mdp_assets.defs.plates.partitions import plates_partitions
from mdp_assets.plates.registry import PERTURBATION
from mdp_assets.science.parquet_profiles import aggregate_parquet, normalize_and_select_parquet
from mdp_assets.science.profiles import consensus, infer_features, metadata_columns, normalize_and_select
from mdp_assets.storage.partitions import TABLE_FILE, StoredPartition, parquet_output
from mdp_assets.storage.resource import MdpStorage

GROUP = "profiles"


@dg.asset(
    partitions_def=plates_partitions,
    group_name=GROUP,
    kinds={"parquet", "pyarrow"},
    description="Single cells annotated with the platemap, normalized to negative controls (all cells when the "
    "platemap names none) and feature-selected (variance, correlation, missing values, blocklist), streamed "
    "from Parquet to Parquet in bounded memory.",
)
def single_cell_profiles(
    context: dg.AssetExecutionContext, single_cell_features: StoredPartition, settings: StepSettings,
    storage: MdpStorage,
) -> dg.Output:
    plate = storage.plate(context.partition_key)
    with storage.staging_dir("single_cell_profiles") as staged:
        summary = normalize_and_select_parquet(
            single_cell_features.path(TABLE_FILE), staged / TABLE_FILE, plate.negative_control_query,
            settings.profiles.parameters(),
        )
        return parquet_output(staged, summary)


@dg.asset(
    partitions_def=plates_partitions,
    group_name=GROUP,
    kinds={"parquet", "pandas"},
    description="Bulk profiles: single cells aggregated per well (median), normalized to negative-control wells "
    "and feature-selected. Well-constant metadata and Metadata_Object_Count are carried.",
)
def well_profiles(
    context: dg.AssetExecutionContext, single_cell_features: StoredPartition, settings: StepSettings,
    storage: MdpStorage,
) -> dg.Output:
    plate = storage.plate(context.partition_key)
    # Straight from the stored Parquet, a batch of feature columns at a time: never the whole plate in memory.
    wells = aggregate_parquet(single_cell_features.path(TABLE_FILE), strata=("Metadata_Plate", "Metadata_Well"))
    table, summary = normalize_and_select(wells, plate.negative_control_query, settings.profiles.parameters())
    return storage.table_output("well_profiles", table, {"wells": len(table), **summary})


@dg.asset(
    group_name=GROUP,
    kinds={"parquet", "pandas"},
    description="One profile per perturbation across every plate: the median (or pycytominer's modz) of its "
    "replicate well profiles over the features all plates kept. Plates whose manifest names no treatment "
    "column are left out.",
)
def consensus_profiles(
    context: dg.AssetExecutionContext,
    well_profiles: dict[str, pd.DataFrame],
    storage: MdpStorage,
    settings: StepSettings,
) -> dg.Output:
    usable = {plate: table for plate, table in well_profiles.items() if PERTURBATION in table.columns}
    left_out = sorted(set(well_profiles) - set(usable))
    if left_out:
        context.log.warning(f"plates without {PERTURBATION} left out of the consensus: {left_out}")
    if not usable:
        raise dg.Failure(f"no plate has {PERTURBATION}; set treatment_column in the plate manifests")
    common = set.intersection(*(set(infer_features(t)) for t in usable.values()))
    features = [f for f in next(iter(usable.values())).columns if f in common]
    stacked = pd.concat([t[[PERTURBATION, "Metadata_Plate", *features]] for t in usable.values()], ignore_index=True)
    plate_counts = stacked.groupby(PERTURBATION)["Metadata_Plate"].nunique().rename("Metadata_Plate_Count")
    operation = settings.consensus.operation
    table = consensus(stacked.drop(columns="Metadata_Plate"), [PERTURBATION], operation=operation)
    table = table.merge(plate_counts.reset_index(), on=PERTURBATION)
    table = table[metadata_columns(table) + features]
    return storage.table_output("consensus_profiles", table, {
        "perturbations": len(table), "operation": operation, "plates": len(usable), "features": len(features),
        "plates_left_out": ", ".join(left_out) or "none",
    })
