"""Level 4, single cells: CellProfiler-named features per cell, and an isolated image of every cell."""

import dagster as dg
import pandas as pd

from mdp_assets.config import StepSettings
from mdp_assets.defs.plates.partitions import names_plate_and_level, plates_partitions
from mdp_assets.engines.cellprofiler.run import OBJECT_TABLES, cellprofiler_features
from mdp_assets.plates.inventory import site_acquisition_metadata, site_images
from mdp_assets.science.cell_qc import outlier_flags, write_cell_qc
from mdp_assets.defs.pictures import figure_metadata
from mdp_assets.science.plots import crop_montage
from mdp_assets.science.crops import example_crops, raw_dtype, site_images_reader, write_crop_store
from mdp_assets.science.features import site_features, write_single_cells
from mdp_assets.services.runs import site_progress
from mdp_assets.storage.partitions import TABLE_FILE, StoredPartition, parquet_output, staged_output
from mdp_assets.storage.resource import MdpStorage

GROUP = "single_cell"


@dg.asset(
    partitions_def=plates_partitions,
    group_name=GROUP,
    kinds={"parquet", "scikit-image"},
    description="One row per cell: Nuclei_, Cells_ and Cytoplasm_ AreaShape/Location/Intensity (and, built-in, "
    "cp-measure's Texture/Granularity/RadialDistribution/Correlation) features with CellProfiler's names, and Metadata_ columns for plate, well, site, object, platemap and acquisition.",
)
@names_plate_and_level
def single_cell_features(
    context: dg.AssetExecutionContext,
    raw_images: pd.DataFrame,
    segmentation_masks: StoredPartition,
    corrected_images: StoredPartition,
    storage: MdpStorage,
    settings: StepSettings,
) -> dg.Output:
    plate = storage.plate(context.partition_key)
    tables = segmentation_masks.root / OBJECT_TABLES
    extra = {}
    if tables.is_dir():  # CellProfiler segmented and measured the cells
        made_by = segmentation_masks.record.get("provenance", {})
        engine = made_by.get("parameters", {}).get("engine", "cellprofiler")
        extra["cellprofiler_version"] = made_by.get("software", {}).get("cellprofiler", "unknown")
        batches = cellprofiler_features(tables)
    else:
        engine = "builtin (scikit-image)"
        masks = pd.read_parquet(segmentation_masks.path("sites.parquet"))
        groups = settings.for_plate(plate.manifest.settings, plate.barcode).features.parameters()
        batches = site_features(masks, segmentation_masks.root, corrected_images.root, settings.compute.workers,
                                site_progress(context.log.info, "single_cell_features", len(masks)), groups)
    wells = plate.well_metadata(list(raw_images["Metadata_Well"].unique()))
    sites = site_acquisition_metadata(raw_images)
    with storage.staging_dir("single_cell_features") as staged:
        # A batch of sites at a time, annotated and written as it comes: never the plate's cells at once.
        summary = write_single_cells(batches, wells, sites, staged / TABLE_FILE)
        return parquet_output(staged, {**summary, "engine": engine, **extra})


@dg.asset(
    partitions_def=plates_partitions,
    group_name=GROUP,
    kinds={"zarr"},
    description="The isolated single-cell images: a square crop (48 px by default) of every channel plus a CellMask "
    "channel around each nucleus, in one chunked zarr store per plate with an index.parquet of Metadata_ rows.",
)
@names_plate_and_level
def single_cell_crops(
    context: dg.AssetExecutionContext,
    raw_images: pd.DataFrame,
    single_cell_features: StoredPartition,
    single_cell_qc: StoredPartition,
    segmentation_masks: StoredPartition,
    corrected_images: StoredPartition,
    storage: MdpStorage,
    settings: StepSettings,
) -> dg.Output:
    plate = storage.plate(context.partition_key)
    plate.check_images_unchanged("single_cell_crops", raw_images)  # before any pixel is read
    crops = settings.for_plate(plate.manifest.settings, plate.barcode).crops
    channels = sorted(raw_images["Metadata_Channel"].unique())
    masks = pd.read_parquet(segmentation_masks.path("sites.parquet"))
    reader = site_images_reader(masks, corrected_images.root, pd.read_parquet(corrected_images.path("sites.parquet")),
                                site_images(raw_images))
    with storage.staging_dir("single_cell_crops") as staged:
        store = write_crop_store(single_cell_features.path(TABLE_FILE), masks, segmentation_masks.root, reader, channels,
                                 staged, crops.size, raw_dtype(raw_images), crops.channels,
                                 outlier_flags(single_cell_qc.path(TABLE_FILE)))
        metadata = {"cells": store.cells, "channels": ", ".join(store.channels),
                    "cells_without_masks": store.cells_without_masks, "dtype": str(raw_dtype(raw_images))}
        if store.cells_without_masks:
            why = ("the analysis pipeline saved no label images of its objects (ConvertObjectsToImage + SaveImages), "
                   "so there is nothing to cut cells out by" if masks["file_name"].isna().all() else
                   "their sites have no saved label images")
            metadata["crops_missing"] = (f"{store.cells_without_masks} of {store.cells + store.cells_without_masks} "
                                         f"cells have no crop: {why}")
            context.log.warning(metadata["crops_missing"])
        if store.cells:
            flagged, kept = example_crops(staged, store.flagged, store.kept, plate.manifest.nuclei_channel)
            png = crop_montage(flagged, kept, plate.manifest.nuclei_channel,
                               f"{plate.barcode}: cells single-cell QC flagged and kept")
            metadata["flagged_and_kept_cells"] = figure_metadata(png, "crops of flagged and kept cells")
        return staged_output(staged, metadata)


@dg.asset(
    partitions_def=plates_partitions,
    group_name=GROUP,
    kinds={"parquet", "scipy"},
    description="Single-cell QC by coSMicQC's method: per plate, cells whose named features (nucleus area, form "
    "factor, eccentricity, intensities, as configured in cell_qc.conditions) lie beyond z-score thresholds are "
    "flagged, as Metadata_cqc_<condition>_is_outlier columns (and Metadata_cqc_is_outlier for any), one row per "
    "cell in single_cell_features' order. Profiles leave flagged cells out unless cell_qc.exclude_flagged is false.",
)
@names_plate_and_level
def single_cell_qc(
    context: dg.AssetExecutionContext, single_cell_features: StoredPartition, settings: StepSettings,
    storage: MdpStorage,
) -> dg.Output:
    cell_qc = settings.cell_qc
    with storage.staging_dir("single_cell_qc") as staged:
        summary = write_cell_qc(single_cell_features.path(TABLE_FILE), cell_qc.conditions, staged / TABLE_FILE)
        cells, flagged = summary["cells"], summary["flagged_cells"]
        return parquet_output(staged, {
            **summary,
            "flagged_fraction": flagged / cells if cells else 0.0,
            "conditions": cell_qc.conditions,
            "flagged_cells_in_profiles": "left out" if cell_qc.exclude_flagged else "kept",
        })
