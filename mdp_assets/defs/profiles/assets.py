"""Levels 5 and 6, profiles: single-cell profiles, well-level (bulk) profiles, and consensus profiles."""

import dagster as dg
import pandas as pd

from mdp_assets.config import StepSettings
from mdp_assets.defs.pictures import figure_metadata, plate_map_metadata
from mdp_assets.defs.plates.partitions import names_plate_and_level, plates_partitions
from mdp_assets.plates.registry import PERTURBATION
from mdp_assets.science.cell_qc import cells_for_profiles
from mdp_assets.science.parquet_profiles import aggregate_parquet, normalize_and_select_parquet
from mdp_assets.science.plots import feature_plate_map, map_per_treatment, replicate_correlation
from mdp_assets.science.profile_quality import replicate_retrieval
from mdp_assets.science.profiles import (consensus, infer_features, metadata_columns, normalize_and_select,
                                         replicate_correlations)
from mdp_assets.storage.partitions import TABLE_FILE, StoredPartition, parquet_output
from mdp_assets.storage.resource import MdpStorage

GROUP = "profiles"


def _qc_summary(left_out: int, settings: StepSettings) -> dict[str, object]:
    return {"cells_left_out_by_qc": left_out,
            "qc_flagged_cells": "left out" if settings.cell_qc.exclude_flagged else "kept"}


@dg.asset(
    partitions_def=plates_partitions,
    group_name=GROUP,
    kinds={"parquet", "pyarrow"},
    description="Single cells annotated with the platemap, normalized to negative controls (all cells when the "
    "platemap names none) and feature-selected (variance, correlation, missing values, blocklist), streamed "
    "from Parquet to Parquet in bounded memory. Cells single-cell QC flagged are left out (cell_qc.exclude_flagged).",
)
@names_plate_and_level
def single_cell_profiles(
    context: dg.AssetExecutionContext, single_cell_features: StoredPartition, single_cell_qc: StoredPartition,
    settings: StepSettings, storage: MdpStorage,
) -> dg.Output:
    plate = storage.plate(context.partition_key)
    with storage.staging_dir("single_cell_profiles") as staged, cells_for_profiles(
        single_cell_features.path(TABLE_FILE), single_cell_qc.path(TABLE_FILE), settings.cell_qc.exclude_flagged,
        storage.root / ".work"
    ) as (cells, left_out):
        summary = normalize_and_select_parquet(cells, staged / TABLE_FILE, plate.negative_control_query,
                                               settings.profiles.parameters(), memory_budget=settings.profiles.budget())
        return parquet_output(staged, {**summary, **_qc_summary(left_out, settings)})


@dg.asset(
    partitions_def=plates_partitions,
    group_name=GROUP,
    kinds={"parquet", "pandas"},
    description="Bulk profiles: single cells aggregated per well (median), normalized to negative-control wells "
    "and feature-selected. Well-constant metadata and Metadata_Object_Count are carried. Cells single-cell QC "
    "flagged are left out (cell_qc.exclude_flagged).",
)
@names_plate_and_level
def well_profiles(
    context: dg.AssetExecutionContext, single_cell_features: StoredPartition, single_cell_qc: StoredPartition,
    settings: StepSettings, storage: MdpStorage,
) -> dg.Output:
    plate = storage.plate(context.partition_key)
    with cells_for_profiles(single_cell_features.path(TABLE_FILE), single_cell_qc.path(TABLE_FILE),
                            settings.cell_qc.exclude_flagged, storage.root / ".work") as (cells, left_out):
        # Straight from the stored Parquet, a batch of feature columns at a time: never the whole plate in memory.
        wells = aggregate_parquet(cells, strata=("Metadata_Plate", "Metadata_Well"),
                                  memory_budget=settings.profiles.budget())
    table, summary = normalize_and_select(wells, plate.negative_control_query, settings.profiles.parameters())
    pictures = {}
    for feature in [f for f in settings.pictures.plate_map_features if f in wells.columns]:
        picture = feature_plate_map(wells, feature, plate.barcode, plate.control_wells())
        pictures.update(plate_map_metadata(picture, f"plate_map_{feature}"))
    return storage.table_output("well_profiles", table, {"wells": len(table), **summary, **pictures,
                                                         **_qc_summary(left_out, settings)})


@dg.asset(
    partitions_def=plates_partitions,
    group_name=GROUP,
    kinds={"parquet", "copairs"},
    description="Profile quality as the field judges it: copairs' replicate-retrieval mAP of every treatment's "
    "wells against the negative-control wells, its corrected p-value, and the fraction of treatments retrieved "
    "at the significance level; the negative controls split in two halves as the null check (near chance). "
    "One row per treatment; the plate's figures are numeric metadata, plotted across materializations.",
)
@names_plate_and_level
def profile_quality(
    context: dg.AssetExecutionContext, well_profiles: pd.DataFrame, settings: StepSettings, storage: MdpStorage
) -> dg.Output:
    plate = storage.plate(context.partition_key)
    quality = settings.profile_quality
    result = replicate_retrieval(well_profiles, PERTURBATION, plate.negative_control_query, quality.parameters())
    pictures = {}
    if result.computable:
        png = map_per_treatment(result.per_treatment, PERTURBATION, quality.parameters().threshold,
                                f"{plate.barcode}: mAP per treatment")
        pictures["map_per_treatment"] = figure_metadata(png, "mAP per treatment against its corrected p-value")
    return storage.table_output("profile_quality", result.per_treatment, {**result.summary(), **pictures})


@dg.asset(
    group_name=GROUP,
    kinds={"parquet", "pandas"},
    description="One profile per perturbation across every plate: the median (or pycytominer's modz) of its "
    "replicate well profiles over the features all plates kept. Plates whose manifest names no treatment "
    "column are left out.",
)
@names_plate_and_level
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
    across = across_plate_quality(usable, features, storage, settings)
    correlations = replicate_correlations(stacked, PERTURBATION)
    pictures = {}
    if len(correlations):
        pictures["replicate_correlation"] = figure_metadata(
            replicate_correlation(correlations, "replicate wells' correlation per treatment, all plates"),
            "median replicate correlation per treatment")
    return storage.table_output("consensus_profiles", table, {
        "perturbations": len(table), "operation": operation, "plates": len(usable), "features": len(features),
        "plates_left_out": ", ".join(left_out) or "none",
        **{f"across_plates_{k}": v for k, v in across.summary().items()}, **pictures,
        **({"across_plates_per_treatment": dg.MetadataValue.md("\n".join(
            f"- {r[PERTURBATION]}: mAP {r['mean_average_precision']:.3f}, corrected p {r['corrected_p_value']:.3g}"
            for _, r in across.per_treatment.iterrows()))} if across.computable else {}),
    })


def across_plate_quality(well_profiles: dict[str, pd.DataFrame], features: list[str], storage: MdpStorage,
                         settings: StepSettings):
    """copairs mAP over every plate's wells together: a treatment's replicates on all plates against all
    plates' negative controls (each plate's own control definition), over the features all plates kept."""
    marked = []
    for plate, table in well_profiles.items():
        query = storage.plate(plate).negative_control_query
        controls = table.query(query).index if query else []
        marked.append(table[[PERTURBATION, "Metadata_Plate", *features]].assign(
            Metadata_negative_control=table.index.isin(controls)))
    pooled = pd.concat(marked, ignore_index=True)
    return replicate_retrieval(pooled, PERTURBATION, "`Metadata_negative_control`",
                               settings.profile_quality.parameters())
