"""Level 3, masks: nuclei and cell label images per site."""

from pathlib import Path

import dagster as dg
import pandas as pd

from mdp_assets.config import StepSettings
from mdp_assets.defs.pictures import plate_map_metadata
from mdp_assets.defs.plates.partitions import plates_partitions
from mdp_assets.engines.cellprofiler.engine import CELLPROFILER_POOL, CellProfilerEngine
from mdp_assets.engines.cellprofiler.run import run_analysis
from mdp_assets.science.plots import cell_count_plate_map
from mdp_assets.science.segmentation import write_masks
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
    settings = settings.for_plate(plate.manifest.settings, plate.barcode)
    with storage.staging_dir("segmentation_masks") as staged:
        if settings.uses_cellprofiler():
            pipeline = Path(settings.cellprofiler.analysis_pipeline)
            context.log.info(f"engine: CellProfiler, pipeline {pipeline}")
            metadata = run_analysis(context, cellprofiler, pipeline, storage.root / ".work", raw_images, image_qc,
                                    illumination_functions.root, staged)
        else:
            context.log.info("engine: built-in" + ("" if cellprofiler.available() else
                             f" (no CellProfiler environment at {cellprofiler.environment}; `make cellprofiler`)"))
            sites = write_masks(pd.read_parquet(corrected_images.path("sites.parquet")), corrected_images.root, staged,
                                plate.manifest.nuclei_channel, plate.manifest.cell_channel,
                                settings.segmentation.parameters())
            sites.to_parquet(staged / "sites.parquet", index=False)
            nuclei = int(sites["Count_Nuclei"].sum()) if len(sites) else 0
            metadata = {"engine": "builtin", "sites": len(sites), "nuclei": nuclei}
        sites = pd.read_parquet(staged / "sites.parquet")
        picture = cell_count_plate_map(sites, set(raw_images["Metadata_Well"]), plate.barcode, plate.control_wells())
        return staged_output(staged, {**metadata, **plate_map_metadata(picture)})
