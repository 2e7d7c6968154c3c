"""Level 2, QC'd and illumination-corrected images: image QC, flat-field functions, corrected images."""

import json
from pathlib import Path

import dagster as dg
import pandas as pd

from mdp_assets.config import StepSettings
from mdp_assets.defs.plates.partitions import plates_partitions
from mdp_assets.engines.cellprofiler.engine import CELLPROFILER_POOL, CellProfilerEngine
from mdp_assets.engines.cellprofiler.run import run_illumination
from mdp_assets.science.illumination import write_corrected_images, write_illumination_functions
from mdp_assets.science.image_qc import measure_plate_quality, passing_sites
from mdp_assets.defs.pictures import figure_metadata, plate_map_metadata
from mdp_assets.science.plots import illumination_figure, qc_plate_map
from mdp_assets.storage.partitions import StoredPartition, staged_output
from mdp_assets.storage.resource import MdpStorage

GROUP = "qc_and_illumination"


@dg.asset(
    partitions_def=plates_partitions,
    group_name=GROUP,
    kinds={"parquet"},
    description="Per image: focus (ImageQuality_PowerLogLogSlope) and saturation (ImageQuality_PercentMaximal) "
    "as CellProfiler's MeasureImageQuality defines them, and a pass flag. Failing sites are excluded below.",
)
def image_qc(context: dg.AssetExecutionContext, raw_images: pd.DataFrame, settings: StepSettings,
             storage: MdpStorage) -> dg.Output:
    plate = storage.plate(context.partition_key)
    qc = settings.for_plate(plate.manifest.settings, plate.barcode).qc
    thresholds = qc.thresholds()
    table = measure_plate_quality(raw_images, thresholds)
    fraction = float(table["qc_pass"].mean())
    return storage.table_output("image_qc", table, {
        "images": len(table),
        "pass_fraction": fraction,
        "failed_images": int((~table["qc_pass"]).sum()),
        "thresholds": thresholds.__dict__,
        **plate_map_metadata(qc_plate_map(table, plate.barcode, plate.control_wells())),
    })


@dg.asset(
    partitions_def=plates_partitions,
    group_name=GROUP,
    kinds={"numpy"},
    pool=CELLPROFILER_POOL,
    description="One flat-field function per channel, as <channel>.npy: the lab's CellProfiler illumination "
    "pipeline, or the built-in CorrectIlluminationCalculate approach ('All' images: average of the plate's "
    "QC-passing images, Gaussian-smoothed, rescaled to a robust minimum of 1).",
)
def illumination_functions(
    context: dg.AssetExecutionContext,
    raw_images: pd.DataFrame,
    image_qc: pd.DataFrame,
    storage: MdpStorage,
    settings: StepSettings,
    cellprofiler: CellProfilerEngine,
) -> dg.Output:
    plate = storage.plate(context.partition_key)
    settings = settings.for_plate(plate.manifest.settings, plate.barcode)
    with storage.staging_dir("illumination_functions") as staged:
        if settings.uses_cellprofiler():
            pipeline = Path(settings.cellprofiler.illumination_pipeline)
            context.log.info(f"engine: CellProfiler, pipeline {pipeline}")
            metadata = run_illumination(context, cellprofiler, pipeline, storage.root / ".work", raw_images, image_qc,
                                        staged)
        else:
            parameters = settings.illumination.parameters()
            used = write_illumination_functions(raw_images, passing_sites(image_qc), staged, parameters)
            metadata = {"engine": "builtin", "channels": len(used), "images_per_channel": used,
                        **parameters.__dict__}
        (staged / "illumination.json").write_text(json.dumps(metadata))
        picture = figure_metadata(illumination_figure(staged, plate.barcode), "illumination function per channel")
        return staged_output(staged, {**metadata, "illumination_functions": picture})


@dg.asset(
    partitions_def=plates_partitions,
    group_name=GROUP,
    kinds={"tiff"},
    metadata={"lifecycle": "transient"},
    description="Illumination-corrected images (CorrectIlluminationApply, divide), one (C, Y, X) float32 OME-TIFF "
    "per QC-passing site. A transient level: kept only until every level that reads it is made.",
)
def corrected_images(
    raw_images: pd.DataFrame, image_qc: pd.DataFrame, illumination_functions: StoredPartition, storage: MdpStorage
) -> dg.Output:
    with storage.staging_dir("corrected_images") as staged:
        sites = write_corrected_images(raw_images, passing_sites(image_qc), illumination_functions.root, staged)
        sites.to_parquet(staged / "sites.parquet", index=False)
        all_sites = raw_images[["Metadata_Well", "Metadata_Site"]].drop_duplicates().itertuples(index=False)
        kept = set(zip(sites["Metadata_Well"], sites["Metadata_Site"]))
        excluded = sorted(f"{w} site {s}" for w, s in all_sites if (w, int(s)) not in kept)
        return staged_output(
            staged,
            {"sites": len(sites), "sites_excluded_by_qc": len(excluded), "excluded_sites": ", ".join(excluded) or "none"},
        )
