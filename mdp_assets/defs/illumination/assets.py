"""Level 2, QC'd and illumination-corrected images: image QC, flat-field functions, corrected images."""

import json
from pathlib import Path

import dagster as dg
import pandas as pd

from mdp_assets.config import StepSettings
from mdp_assets.defs.plates.partitions import names_plate_and_level, plates_partitions
from mdp_assets.engines.cellprofiler.choice import engine_for_plate
from mdp_assets.errors import MdpError
from mdp_assets.engines.cellprofiler.engine import CELLPROFILER_POOL, CellProfilerEngine
from mdp_assets.engines.cellprofiler.run import run_illumination, write_analysis_images
from mdp_assets.science.illumination import write_corrected_images, write_illumination_functions
from mdp_assets.science.image_qc import failing_sites, measure_plate_quality, passing_sites, too_many_failing
from mdp_assets.defs.pictures import figure_metadata, plate_map_metadata
from mdp_assets.science.plots import illumination_figure, qc_plate_map
from mdp_assets.services.runs import site_progress
from mdp_assets.storage.partitions import StoredPartition, staged_output
from mdp_assets.storage.resource import MdpStorage

GROUP = "qc_and_illumination"


@dg.asset(
    partitions_def=plates_partitions,
    group_name=GROUP,
    kinds={"parquet"},
    description="Per image: focus (ImageQuality_PowerLogLogSlope) and saturation (ImageQuality_PercentMaximal) "
    "as CellProfiler's MeasureImageQuality defines them, their robust z-scores within the plate's channel, and a "
    "pass flag (qc settings in mdp.yaml or the plate's manifest). Failing sites are excluded below.",
)
@names_plate_and_level
def image_qc(context: dg.AssetExecutionContext, raw_images: pd.DataFrame, settings: StepSettings,
             storage: MdpStorage) -> dg.Output:
    plate = storage.plate(context.partition_key)
    plate.check_images_unchanged("image_qc", raw_images)  # before any pixel is read
    qc = settings.for_plate(plate.manifest.settings, plate.barcode).qc
    thresholds = qc.thresholds()
    table = measure_plate_quality(raw_images, thresholds, settings.compute.workers)
    failing = failing_sites(table)
    sites = raw_images[["Metadata_Well", "Metadata_Site"]].drop_duplicates().shape[0]
    return storage.table_output("image_qc", table, {
        "images": len(table),
        "pass_fraction": float(table["qc_pass"].mean()),
        "failed_images": int((~table["qc_pass"]).sum()),
        "sites_failing": len(failing),
        "site_pass_fraction": 1 - len(failing) / sites,
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
@names_plate_and_level
def illumination_functions(
    context: dg.AssetExecutionContext,
    raw_images: pd.DataFrame,
    image_qc: pd.DataFrame,
    storage: MdpStorage,
    settings: StepSettings,
    cellprofiler: CellProfilerEngine,
) -> dg.Output:
    plate = storage.plate(context.partition_key)
    plate.check_images_unchanged("illumination_functions", raw_images)  # before any pixel is read
    settings, stand_in = engine_for_plate(settings.for_plate(plate.manifest.settings, plate.barcode),
                                          set(raw_images["Metadata_Channel"]))
    if stand_in:
        context.log.warning(stand_in)
    stops = too_many_failing(image_qc, settings.qc.max_failing_site_fraction)
    if stops:
        raise MdpError(f"plate {plate.barcode}: {stops}")
    with storage.staging_dir("illumination_functions") as staged:
        if settings.uses_cellprofiler():
            pipeline = Path(settings.cellprofiler.illumination_pipeline)
            context.log.info(f"engine: CellProfiler, pipeline {pipeline}")
            metadata = run_illumination(context, cellprofiler, pipeline, storage.root / ".work", raw_images, image_qc,
                                        staged)
        else:
            parameters = settings.illumination.parameters()
            used = write_illumination_functions(raw_images, passing_sites(image_qc), staged, parameters,
                                                settings.compute.workers)
            metadata = {"engine": "builtin", "channels": len(used), "images_per_channel": used,
                        **parameters.__dict__, **({"engine_note": stand_in} if stand_in else {})}
        (staged / "illumination.json").write_text(json.dumps(metadata))
        picture = figure_metadata(illumination_figure(staged, plate.barcode), "illumination function per channel")
        return staged_output(staged, {**metadata, "illumination_functions": picture})


@dg.asset(
    partitions_def=plates_partitions,
    group_name=GROUP,
    kinds={"tiff"},
    metadata={"lifecycle": "transient"},
    description="The images the analysis reads, one (C, Y, X) OME-TIFF per QC-passing site. Built-in engine: "
    "mdp's correction (CorrectIlluminationApply, divide), in the raw images' bit depth (uint16: round(intensity x "
    "65535); read back as CellProfiler's [0, 1] intensities). CellProfiler: the corrected images the lab's "
    "illumination pipeline saved, in their own dtype; none when the analysis pipeline reads raw images (it "
    "corrects them itself, or not at all): correction happens once. A transient level.",
)
@names_plate_and_level
def corrected_images(
    context: dg.AssetExecutionContext, raw_images: pd.DataFrame, image_qc: pd.DataFrame,
    illumination_functions: StoredPartition, storage: MdpStorage, settings: StepSettings,
    cellprofiler: CellProfilerEngine,
) -> dg.Output:
    plate = storage.plate(context.partition_key)
    plate.check_images_unchanged("corrected_images", raw_images)  # before any pixel is read
    settings, _ = engine_for_plate(settings.for_plate(plate.manifest.settings, plate.barcode),
                                   set(raw_images["Metadata_Channel"]))
    with storage.staging_dir("corrected_images") as staged:
        good = passing_sites(image_qc)
        extra = {}
        if settings.uses_cellprofiler():
            made = write_analysis_images(cellprofiler, Path(settings.cellprofiler.analysis_pipeline), raw_images,
                                         image_qc, illumination_functions.root, staged)
            sites = made.pop("sites")
            extra = made
            context.log.info(f"corrected_images: the analysis pipeline reads {made['analysis_reads']}")
        else:
            sites = write_corrected_images(raw_images, good, illumination_functions.root, staged,
                                           site_progress(context.log.info, "corrected_images", len(good)),
                                           settings.compute.workers)
        sites.insert(0, "Metadata_Plate", context.partition_key)
        sites.to_parquet(staged / "sites.parquet", index=False)
        all_sites = raw_images[["Metadata_Well", "Metadata_Site"]].drop_duplicates().itertuples(index=False)
        kept = set(zip(sites["Metadata_Well"], sites["Metadata_Site"]))
        excluded = sorted(f"{w} site {s}" for w, s in all_sites if (w, int(s)) not in kept)
        return staged_output(
            staged,
            {"sites": len(sites), "sites_excluded_by_qc": len(excluded), "excluded_sites": ", ".join(excluded) or "none",
             **extra},
        )
