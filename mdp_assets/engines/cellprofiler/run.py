"""The CellProfiler engine for segmentation_masks: the lab's analysis pipeline, run per group of wells."""

import hashlib
import os
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import tifffile

from mdp_assets.config import SHIPPED_PIPELINES
from mdp_assets.engines.cellprofiler.engine import CellProfilerEngine, summarize_failures
from mdp_assets.engines.cellprofiler.outputs import (
    CellProfilerOutput,
    features_from_cellprofiler,
    file_list,
    merge_groups,
    pipeline_hash,
    read_output,
    split_wells,
    uses_loaddata,
)
from mdp_assets.engines.cellprofiler.loaddata import loaddata_for_analysis
from mdp_assets.engines.cellprofiler.pipelines import illumination_pipeline
from mdp_assets.errors import MdpError
from mdp_assets.plates.inventory import uri_to_path
from mdp_assets.science.image_qc import passing_sites
from mdp_assets.science.image_store import write_stack

OBJECT_TABLES = "cellprofiler"


def run_analysis(
    context: dg.AssetExecutionContext,
    engine: CellProfilerEngine,
    pipeline: Path,
    work_root: Path,
    raw_images: pd.DataFrame,
    image_qc: pd.DataFrame,
    illumination_dir: Path | None,
    staged: Path,
) -> dict:
    """Run the analysis pipeline over the plate's QC-passing sites in groups of wells, then write masks,
    the site index and CellProfiler's object tables into `staged`. Returns metadata for the output."""
    images = _qc_passing(raw_images, image_qc, "nothing for CellProfiler to analyse")
    digest = pipeline_hash(pipeline)
    work = work_root / "cellprofiler" / context.partition_key
    groups = [
        _group(pipeline, digest, images[images["Metadata_Well"].isin(wells)], work, f"{wells[0]}-{wells[-1]}",
               illumination_dir)
        for wells in split_wells(list(images["Metadata_Well"].unique()), engine.workers or os.cpu_count() or 1)
    ]
    version, results = engine.run_groups(context, pipeline, groups)
    if not all(r.ok for r in results):
        ok = sum(r.ok for r in results)
        raise MdpError(f"{len(results) - ok} of {len(results)} CellProfiler group(s) failed ({ok} finished and are kept "
                       f"for the next run):\n{summarize_failures(results)}", path=pipeline)
    outputs = [read_output(Path(g["output_dir"])) for g in groups]
    merged = merge_groups(outputs)
    sites = _image_sites(merged.image, raw_images)
    (staged / OBJECT_TABLES).mkdir()
    image_table = merged.image.merge(sites, on="ImageNumber", how="left")
    if "Metadata_Plate" not in image_table.columns:  # every per-image table names its plate
        image_table.insert(0, "Metadata_Plate", context.partition_key)
    image_table.to_parquet(staged / OBJECT_TABLES / "Image.parquet", index=False)
    for name, table in merged.objects.items():
        table.to_parquet(staged / OBJECT_TABLES / f"{name}.parquet", index=False)
    index = _write_masks(sites, merged.image, groups, outputs, staged)
    index.to_parquet(staged / "sites.parquet", index=False)
    shutil.rmtree(work, ignore_errors=True)  # everything is in the partition now
    return {
        "engine": f"cellprofiler {version}",
        "cellprofiler_version": version,
        "pipeline": str(pipeline),
        "pipeline_sha256": digest,
        "groups": len(groups),
        "groups_reused": sum(r.skipped for r in results),
        "objects": ", ".join(f"{k}: {v}" for k, v in merged.counts().items()),
        "sites": len(index),
        "nuclei": int(index["Count_Nuclei"].sum()) if len(index) else 0,
    }


def _qc_passing(raw_images: pd.DataFrame, image_qc: pd.DataFrame, what: str) -> pd.DataFrame:
    good = passing_sites(image_qc)
    images = raw_images[[(w, int(s)) in good for w, s in zip(raw_images["Metadata_Well"], raw_images["Metadata_Site"])]]
    if images.empty:
        raise MdpError(f"no site passed image QC; {what}")
    return images


def _group(pipeline: Path, digest: str, images: pd.DataFrame, work: Path, group_id: str,
           illumination_dir: Path | None) -> dict:
    """One CellProfiler group's inputs (a LoadData CSV, or a file list for pipelines with input modules), in a
    folder named by pipeline and inputs: a re-run with the same ones finds a finished group and skips it."""
    if uses_loaddata(pipeline):
        content = loaddata_for_analysis(images, illumination_dir).to_csv(index=False)
    else:
        content = "".join(f"{uri_to_path(u).resolve().as_uri()}\n" for u in images["uri"])
    folder = work / hashlib.sha256((digest + content).encode()).hexdigest()[:20]
    folder.mkdir(parents=True, exist_ok=True)
    group = {"id": group_id, "output_dir": str(folder / "output")}
    if uses_loaddata(pipeline):
        (folder / "load_data.csv").write_text(content)
        group["data_file"] = str(folder / "load_data.csv")
    else:
        group["file_list"] = str(file_list([uri_to_path(u) for u in images["uri"]], folder / "files.txt"))
    return group


def _image_sites(image: pd.DataFrame, raw_images: pd.DataFrame) -> pd.DataFrame:
    """ImageNumber -> Metadata_Well, Metadata_Site: from the image's own metadata, or from its file names."""
    if {"Image_Metadata_Well", "Image_Metadata_Site"} <= set(image.columns):
        return pd.DataFrame({"ImageNumber": image["ImageNumber"], "Metadata_Well": image["Image_Metadata_Well"].astype(str),
                             "Metadata_Site": pd.to_numeric(image["Image_Metadata_Site"]).astype(int)})
    by_name = {row.file_name: (row.Metadata_Well, int(row.Metadata_Site)) for row in raw_images.itertuples()}
    rows = []
    for record in image.itertuples(index=False):
        names = [getattr(record, c) for c in image.columns if c.startswith("Image_FileName_")]
        found = next((by_name[n] for n in names if n in by_name), None)
        if found is None:
            raise MdpError(f"CellProfiler image set {record.ImageNumber} names none of the plate's files: {names}")
        rows.append({"ImageNumber": record.ImageNumber, "Metadata_Well": found[0], "Metadata_Site": found[1]})
    return pd.DataFrame(rows)


def _write_masks(sites: pd.DataFrame, image: pd.DataFrame, groups: list[dict], outputs, staged: Path) -> pd.DataFrame:
    """Label images the pipeline saved as `<well>_s<site>_Nuclei.tiff` / `_Cells.tiff` become mdp's masks."""
    folders = [Path(g["output_dir"]) for g in groups]
    counts = image.set_index("ImageNumber")
    rows = []
    for site in sites.itertuples(index=False):
        nuclei_cells = []
        for obj in ("Nuclei", "Cells"):
            found = [f / f"{site.Metadata_Well}_s{site.Metadata_Site}_{obj}.tiff" for f in folders]
            found = [p for p in found if p.exists()]
            nuclei_cells.append(tifffile.imread(found[0]).astype(np.int32) if found else None)
        file_name = None
        if all(layer is not None for layer in nuclei_cells):
            file_name = f"{site.Metadata_Well}_s{int(site.Metadata_Site):02d}_masks.tiff"
            write_stack(staged / file_name, np.stack(nuclei_cells), ["Nuclei", "Cells"], None)
        row = counts.loc[site.ImageNumber]
        rows.append({
            "Metadata_Well": site.Metadata_Well,
            "Metadata_Site": int(site.Metadata_Site),
            "file_name": file_name,
            "corrected_file_name": f"{site.Metadata_Well}_s{int(site.Metadata_Site):02d}.ome.tiff",
            "Count_Nuclei": int(row.get("Image_Count_Nuclei", 0) or 0),
            "Count_Cells": int(row.get("Image_Count_Cells", 0) or 0),
        })
    return pd.DataFrame(rows)


def cellprofiler_features(tables: Path) -> pd.DataFrame:
    """Single cells from the object tables a CellProfiler run left in a segmentation_masks partition."""
    image = pd.read_parquet(tables / "Image.parquet")
    objects = {p.stem: pd.read_parquet(p) for p in sorted(tables.glob("*.parquet")) if p.stem != "Image"}
    # The image table carries Metadata_Well / Metadata_Site as mdp resolved them; CellProfiler's own go.
    image = image.drop(columns=[c for c in ("Image_Metadata_Well", "Image_Metadata_Site") if c in image.columns])
    image = image.rename(columns={"Metadata_Well": "Image_Metadata_Well", "Metadata_Site": "Image_Metadata_Site"})
    return features_from_cellprofiler(CellProfilerOutput(image, objects))


def run_illumination(
    context: dg.AssetExecutionContext,
    engine: CellProfilerEngine,
    pipeline: Path,
    work_root: Path,
    raw_images: pd.DataFrame,
    image_qc: pd.DataFrame,
    staged: Path,
) -> dict:
    """The lab's illumination pipeline over all of the plate's QC-passing images (one CellProfiler process:
    "All: across cycles" needs every image in one run); `Illum<Channel>.npy` become `<channel>.npy`."""
    images = _qc_passing(raw_images, image_qc, "no illumination function can be made")
    if pipeline.resolve() == (SHIPPED_PIPELINES / "illumination.cppipe").resolve():
        # The shipped default adapts to the plate's channels (it is written for Cell Painting's five).
        channels = sorted(images["Metadata_Channel"].unique())
        pipeline = work_root / "pipelines" / f"illumination-{'-'.join(channels)}.cppipe"
        pipeline.parent.mkdir(parents=True, exist_ok=True)
        pipeline.write_text(illumination_pipeline(channels))
    work = work_root / "cellprofiler-illumination" / context.partition_key
    group = _group(pipeline, pipeline_hash(pipeline), images, work, "plate", None)
    version, results = engine.run_groups(context, pipeline, [group])
    if not results[0].ok:
        raise MdpError(f"the illumination pipeline failed:\n{summarize_failures(results)}", path=pipeline)
    used = {}
    for channel, channel_images in images.groupby("Metadata_Channel"):
        made = Path(group["output_dir"]) / f"Illum{channel}.npy"
        if not made.exists():
            raise MdpError(f"the illumination pipeline saved no Illum{channel}.npy (it must, for channel {channel!r})",
                           path=pipeline)
        shutil.copy(made, staged / f"{channel}.npy")
        used[str(channel)] = len(channel_images)
    shutil.rmtree(work, ignore_errors=True)
    return {"engine": f"cellprofiler {version}", "cellprofiler_version": version, "pipeline": str(pipeline),
            "pipeline_sha256": pipeline_hash(pipeline), "images_per_channel": used, "channels": len(used)}
