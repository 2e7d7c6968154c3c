"""Level 3, masks: nuclei and cell label images per site."""


import dagster as dg
import pandas as pd

from mdp_assets.defs.plates.partitions import plates_partitions
from mdp_assets.storage.io_manager import StoredPartition, staged_output
from mdp_assets.storage.resource import MdpStorage
from mdp_assets.science.image_qc import empty_or_failed_wells
from mdp_assets.plates.registry import PlateContext
from pathlib import Path

from mdp_assets.engines.cellprofiler.engine import CELLPROFILER_POOL, CellProfilerEngine
from mdp_assets.defs.parameters import PipelineParameters
from mdp_assets.engines.cellprofiler.run import run_analysis
from mdp_assets.science.segmentation import write_masks


@dg.asset(
    partitions_def=plates_partitions,
    group_name="masks",
    kinds={"tiff", "scikit-image"},
    pool=CELLPROFILER_POOL,
    check_specs=[dg.AssetCheckSpec("no_empty_or_failed_wells", asset="segmentation_masks",
                                   description="names every well with no usable site or no nucleus")],
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
    parameters: PipelineParameters,
    cellprofiler: CellProfilerEngine,
):
    manifest = PlateContext.of(raw_images).manifest
    if parameters.uses_cellprofiler():
        context.log.info(f"engine: CellProfiler, pipeline {parameters.analysis_pipeline}")
        with storage.staging_dir("segmentation_masks") as staged:
            metadata = run_analysis(context, cellprofiler, Path(parameters.analysis_pipeline), storage, raw_images,
                                    image_qc, illumination_functions, staged)
            sites = pd.read_parquet(staged / "sites.parquet")
            problems = empty_or_failed_wells(set(raw_images["Metadata_Well"]), sites)
            yield staged_output(staged, metadata)
    else:
        if not cellprofiler.available():
            context.log.info(f"engine: built-in (no CellProfiler environment at {cellprofiler.environment}; "
                             "`make cellprofiler` builds one)")
        else:
            context.log.info("engine: built-in (chosen by the deployment's PipelineParameters.engine)")
        with storage.staging_dir("segmentation_masks") as staged:
            problems = yield from _builtin(raw_images, corrected_images, manifest, parameters, staged)
    yield dg.AssetCheckResult(
        check_name="no_empty_or_failed_wells",
        passed=not problems,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"wells": len(problems),
                  "problems": dg.MetadataValue.md("\n".join(f"- {w}: {why}" for w, why in problems.items()) or "none")},
    )


def _builtin(raw_images, corrected_images, manifest, parameters: PipelineParameters, staged):
    """The built-in engine: segment every corrected site; yields the output, returns wells with problems."""
    sites = write_masks(
        pd.read_parquet(corrected_images.path("sites.parquet")),
        corrected_images.root,
        staged,
        manifest.nuclei_channel,
        manifest.cell_channel,
        parameters.segmentation_parameters(),
    )
    sites.to_parquet(staged / "sites.parquet", index=False)
    nuclei = int(sites["Count_Nuclei"].sum()) if len(sites) else 0
    yield staged_output(staged, {"engine": "builtin", "sites": len(sites), "nuclei": nuclei})
    return empty_or_failed_wells(set(raw_images["Metadata_Well"]), sites)
