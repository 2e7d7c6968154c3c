"""Level 3, masks: nuclei and cell label images per site."""

from pathlib import Path

import dagster as dg
import pandas as pd

from mdp_assets.config import StepSettings
from mdp_assets.defs.pictures import figure_metadata, plate_map_metadata
from mdp_assets.defs.plates.partitions import names_plate_and_level, plates_partitions
from mdp_assets.engines.cellprofiler.choice import engine_for_plate
from mdp_assets.engines.cellprofiler.engine import CELLPROFILER_POOL, CellProfilerEngine
from mdp_assets.engines.cellprofiler.run import run_analysis
from mdp_assets.science.image_qc import passing_sites
from mdp_assets.plates.inventory import site_images
from mdp_assets.science.crops import site_images_reader
from mdp_assets.science.image_store import read_stack
from mdp_assets.science.plots import cell_count_plate_map, segmentation_thumbnails
from mdp_assets.science.segmentation import write_masks
from mdp_assets.services.runs import site_progress
from mdp_assets.storage.partitions import StoredPartition, staged_output
from mdp_assets.storage.resource import MdpStorage


@dg.asset(
    partitions_def=plates_partitions,
    group_name="masks",
    kinds={"tiff", "scikit-image"},
    pool=CELLPROFILER_POOL,
    description="Per site, a (2, Y, X) int32 OME-TIFF of Nuclei and Cells labels (built-in engine: Otsu + shape "
    "declumping for nuclei, propagation-style watershed for cells; a cell carries its nucleus' label).",
)
@names_plate_and_level
def segmentation_masks(
    context: dg.AssetExecutionContext,
    raw_images: pd.DataFrame,
    image_qc: pd.DataFrame,
    illumination_functions: StoredPartition,
    corrected_images: StoredPartition,
    storage: MdpStorage,
    settings: StepSettings,
    cellprofiler: CellProfilerEngine,
) -> dg.Output:
    plate = storage.plate(context.partition_key)
    plate.check_images_unchanged("segmentation_masks", raw_images)  # before any pixel is read
    settings, stand_in = engine_for_plate(settings.for_plate(plate.manifest.settings, plate.barcode),
                                          set(raw_images["Metadata_Channel"]))
    if stand_in:
        context.log.warning(stand_in)
    with storage.staging_dir("segmentation_masks") as staged:
        if settings.uses_cellprofiler():
            pipeline = Path(settings.cellprofiler.analysis_pipeline)
            context.log.info(f"engine: CellProfiler, pipeline {pipeline}")
            wells = len({well for well, _ in passing_sites(image_qc)})  # the SLURM engine's groups follow them
            metadata = run_analysis(context, cellprofiler.for_wells(wells), pipeline, storage.root / ".work",
                                    raw_images, image_qc, illumination_functions.root, staged)
            sites = pd.read_parquet(staged / "sites.parquet")
            if metadata["masks"].startswith("none"):
                context.log.warning(f"masks: {metadata['masks']}")
        else:
            context.log.info("engine: built-in" + ("" if cellprofiler.available() else
                             f" (no CellProfiler environment at {cellprofiler.environment}; `make cellprofiler`)"))
            corrected = pd.read_parquet(corrected_images.path("sites.parquet"))
            sites = write_masks(corrected, corrected_images.root, staged, plate.manifest.nuclei_channel,
                                plate.manifest.cell_channel, settings.segmentation.parameters(),
                                site_progress(context.log.info, "segmentation_masks", len(corrected)),
                                settings.compute.workers)
            nuclei = int(sites["Count_Nuclei"].sum()) if len(sites) else 0
            metadata = {"engine": "builtin", "sites": len(sites), "nuclei": nuclei,
                        **({"engine_note": stand_in} if stand_in else {})}
        if "Metadata_Plate" not in sites.columns:  # every per-site table names its plate
            sites.insert(0, "Metadata_Plate", plate.barcode)
        sites.to_parquet(staged / "sites.parquet", index=False)
        picture = cell_count_plate_map(sites, set(raw_images["Metadata_Well"]), plate.barcode, plate.control_wells())
        thumbnails = _thumbnails(sites, staged, raw_images, corrected_images, plate.manifest.nuclei_channel,
                                 plate.barcode)
        return staged_output(staged, {**metadata, **plate_map_metadata(picture), **thumbnails})


def _thumbnails(sites: pd.DataFrame, masks_dir: Path, raw_images: pd.DataFrame, corrected_images: StoredPartition,
                nuclei_channel: str, barcode: str, count: int = 4) -> dict:
    """A few sites (one per well, in plate order) with the segmentation outlined, for the UI."""
    saved = sites[sites["file_name"].notna()].drop_duplicates("Metadata_Well").head(count)
    if saved.empty:
        return {}
    corrected = pd.read_parquet(corrected_images.path("sites.parquet"))
    read = site_images_reader(saved, corrected_images.root, corrected, site_images(raw_images))
    channels = sorted(raw_images["Metadata_Channel"].unique())
    position = channels.index(nuclei_channel) if nuclei_channel in channels else 0
    panels = []
    for site in saved.itertuples(index=False):
        labels, _ = read_stack(masks_dir / site.file_name)
        image = read(site.Metadata_Well, int(site.Metadata_Site))[position].astype(float)
        panels.append((f"{site.Metadata_Well} site {int(site.Metadata_Site)}", image, labels[0], labels[1]))
    png = segmentation_thumbnails(panels, f"{barcode}: segmentation ({channels[position]}; nuclei yellow, cells cyan)")
    return {"segmentation": figure_metadata(png, "sites with their nuclei and cells outlined")}
