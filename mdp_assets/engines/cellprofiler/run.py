"""The CellProfiler engine's levels: the lab's illumination pipeline (illumination_functions), what the
analysis pipeline reads (corrected_images) and the analysis pipeline itself (segmentation_masks).

Every pipeline is read first (describe.py): mdp feeds it what its input modules take (a LoadData CSV with
every Orig<channel>/Illum<channel> column it reads, or a file list its NamesAndTypes rules make image sets
of, checked by CellProfiler before the run), and reads back what it saves and exports under the names its
settings give. Correction happens once: an analysis pipeline that corrects illumination itself gets the raw
images (and the illumination functions); one that does not gets the images the illumination pipeline
corrected and saved, when it saved some.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import tifffile

from mdp_assets.config import SHIPPED_PIPELINES
from mdp_assets.engines.cellprofiler.describe import (
    PipelineDescription,
    describe_pipeline,
    match_files,
    saved_file_name,
)
from mdp_assets.engines.cellprofiler.engine import CellProfilerEngine, GroupResult, summarize_failures
from mdp_assets.engines.cellprofiler.outputs import (
    CellProfilerOutput,
    compartments,
    features_from_cellprofiler,
    file_list,
    merge_groups,
    pipeline_hash,
    read_output,
    split_wells,
)
from mdp_assets.engines.cellprofiler.pipelines import illumination_pipeline
from mdp_assets.errors import MdpError
from mdp_assets.plates.inventory import site_images
from mdp_assets.science.image_qc import passing_sites
from mdp_assets.science.image_store import write_stack

OBJECT_TABLES = "cellprofiler"
CORRECTED = "corrected"  # the illumination pipeline's saved corrected images, in illumination_functions
CORRECTED_INDEX = "corrected.parquet"
# A plate where the pipeline finds no primary object in more than this share of its sites fails.
MAX_EMPTY_SITE_FRACTION = 0.5
FILES = ["Metadata_Well", "Metadata_Site", "Metadata_Channel", "path"]


def _qc_passing(raw_images: pd.DataFrame, image_qc: pd.DataFrame, what: str) -> pd.DataFrame:
    good = passing_sites(image_qc)
    images = raw_images[[(w, int(s)) in good for w, s in zip(raw_images["Metadata_Well"], raw_images["Metadata_Site"])]]
    if images.empty:
        raise MdpError(f"no site passed image QC; {what}")
    return images


def raw_files(raw_images: pd.DataFrame) -> pd.DataFrame:
    """One file per site and channel (the first z/t plane), as FILES columns."""
    rows = [{"Metadata_Well": well, "Metadata_Site": site, "Metadata_Channel": channel, "path": str(path)}
            for (well, site), paths in site_images(raw_images).items() for channel, path in sorted(paths.items())]
    return pd.DataFrame(rows, columns=FILES)


# The Cell Painting Gallery's names for a plate's illumination functions (`illum/<Plate>/<Plate>_Illum<Channel>.npy`),
# which LoadData-driven pipelines and their load_data_with_illum.csv files expect.
ILLUM_FILE = "{plate}_Illum{channel}.npy"
SITE_KEYS = ("Metadata_Plate", "Metadata_Well", "Metadata_Site")


def site_metadata(raw_images: pd.DataFrame) -> pd.DataFrame:
    """Per site, the Metadata_ columns of raw_images that are one value per site (plate annotations, platemap
    columns, acquisition metadata), for the LoadData fields a pipeline names."""
    metadata = [c for c in raw_images.columns if c.startswith("Metadata_") and c not in ("Metadata_Channel", "Metadata_Z", "Metadata_T")]
    table = raw_images[metadata].assign(Metadata_Site=raw_images["Metadata_Site"].astype(int))
    return table.drop_duplicates(["Metadata_Well", "Metadata_Site"]).set_index(["Metadata_Well", "Metadata_Site"])


def stage_illumination(description: PipelineDescription, illumination_dir: Path | None, folder: Path,
                       plate: str) -> tuple[dict[str, str], str]:
    """Copies of the plate's stored illumination functions (`<channel>.npy`) under the names a LoadData pipeline
    expects (ILLUM_FILE) in `folder`, for each Illum<channel> image it reads: {channel: file name}, and a digest
    of their content (a changed function is a changed input)."""
    _, illum = description.loaddata_channels()
    names, digest = {}, hashlib.sha256()
    for channel in sorted(illum):
        source = illumination_dir / f"{channel}.npy" if illumination_dir is not None else None
        if source is None or not source.exists():
            raise MdpError(f"{description.path.name} reads Illum{channel} (LoadData FileName_Illum{channel}); the "
                           f"illumination level saved no function for channel {channel}", path=description.path)
        folder.mkdir(parents=True, exist_ok=True)
        names[channel] = ILLUM_FILE.format(plate=plate, channel=channel)
        data = source.read_bytes()
        if not (folder / names[channel]).exists() or (folder / names[channel]).read_bytes() != data:
            (folder / names[channel]).write_bytes(data)
        digest.update(channel.encode() + hashlib.sha256(data).digest())
    return names, digest.hexdigest()


def analysis_loaddata(files: pd.DataFrame, plate: str, description: PipelineDescription, metadata: pd.DataFrame | None,
                      illumination_folder: Path | None, illumination_files: dict[str, str]) -> pd.DataFrame:
    """LoadData rows with every column the pipeline reads: FileName_/PathName_Orig<channel> (the site's files),
    FileName_/PathName_Illum<channel> (its illumination functions, as `stage_illumination` named them),
    Metadata_Plate, Metadata_Well, Metadata_Site and every other Metadata_<field> its modules name."""
    orig, illum = description.loaddata_channels()
    channels = set(files["Metadata_Channel"])
    if orig - channels:
        raise MdpError(f"LoadData of {description.path.name} reads Orig{sorted(orig - channels)[0]}: the plate has no "
                       f"channel {sorted(orig - channels)} (its channels: {sorted(channels)})", path=description.path)
    fields = [f"Metadata_{name}" for name in description.metadata_needed if f"Metadata_{name}" not in SITE_KEYS]
    known = set(metadata.columns) if metadata is not None else set()
    if set(fields) - known:
        raise MdpError(f"{description.path.name} reads metadata {sorted(set(fields) - known)} (its modules name "
                       f"{', '.join(chr(92) + 'g<' + n + '>' for n in description.metadata_needed)}); the plate has no "
                       "such column: add it to the platemap or to plate.yaml's annotations", path=description.path)
    rows = []
    for (well, site), site_files in files.groupby(["Metadata_Well", "Metadata_Site"], sort=True):
        record: dict[str, str] = {}
        for row in site_files.sort_values("Metadata_Channel").itertuples(index=False):
            record[f"FileName_Orig{row.Metadata_Channel}"] = Path(row.path).name
            record[f"PathName_Orig{row.Metadata_Channel}"] = str(Path(row.path).parent)
        for channel in sorted(illum):
            record[f"FileName_Illum{channel}"] = illumination_files[channel]
            record[f"PathName_Illum{channel}"] = str(illumination_folder)
        record.update({"Metadata_Plate": plate, "Metadata_Well": well, "Metadata_Site": str(site)})
        for name in fields:
            record[name] = str(metadata.loc[(well, int(site)), name])
        rows.append(record)
    return pd.DataFrame(rows)


def _image_sets(engine: CellProfilerEngine, description: PipelineDescription, files: pd.DataFrame,
                listing: Path) -> list[dict]:
    """The image sets the pipeline's NamesAndTypes makes of the files (asked of CellProfiler), each with the
    site it is, checked: every image it needs from one site, every site once."""
    by_path = {str(Path(p).resolve()): (w, int(s), c) for w, s, c, p in files[FILES].itertuples(index=False)}
    sets = match_files(engine.python, description.path, [Path(p) for p in files["path"]])
    where = f"NamesAndTypes of {description.path.name}"
    rules = "; ".join(f"{name}: {rule}" for name, rule in description.rules)
    if not sets:
        raise MdpError(f"{where} makes no image set of the plate's files ({rules}); files given: "
                       f"{sorted(Path(p).name for p in files['path'])[:6]}...", path=description.path)
    annotated, seen = [], set()
    for number, image_set in enumerate(sets, start=1):
        sites = set()
        for name in description.images_needed:
            url = image_set.get(f"URL_{name}")
            path = image_set.get(f"PathName_{name}"), image_set.get(f"FileName_{name}")
            found = by_path.get(str(Path(*path).resolve())) if all(path) else None
            if url is None or found is None:
                raise MdpError(f"{where}: image set {number} has no file of the plate for image {name!r} ({rules})",
                               path=description.path)
            sites.add(found[:2])
        if len(sites) != 1:
            raise MdpError(f"{where}: image set {number} takes files of different sites {sorted(sites)} (its "
                           "image set matching puts them together); match by Well and Site metadata",
                           path=description.path)
        (well, site), = sites
        seen.add((well, site))
        annotated.append({**image_set, "mdp_well": well, "mdp_site": site})
    missing = sorted(set(zip(files["Metadata_Well"], files["Metadata_Site"].astype(int))) - seen)
    if missing:
        raise MdpError(f"{where}: no image set for sites {missing[:10]} ({rules})", path=description.path)
    return annotated


def image_channels(description: PipelineDescription, image_sets: list[dict], files: pd.DataFrame) -> dict[str, str]:
    """Image name (as the pipeline names its input) -> the plate's channel it got."""
    by_name = {Path(p).name: c for c, p in zip(files["Metadata_Channel"], files["path"])}
    out = {}
    for name in description.images_needed:
        channels = {by_name.get(str(s.get(f"FileName_{name}"))) for s in image_sets} - {None}
        if len(channels) != 1:
            raise MdpError(f"image {name!r} of {description.path.name} gets files of channels {sorted(channels)}; "
                           "it must get one channel", path=description.path)
        out[name] = channels.pop()
    return out


def _group(engine: CellProfilerEngine, description: PipelineDescription, files: pd.DataFrame, plate: str,
           work: Path, group_id: str, illumination_dir: Path | None, metadata: pd.DataFrame | None = None) -> dict:
    """One CellProfiler group's inputs (a LoadData CSV, or a file list for input modules) and its image sets, in
    a folder named by pipeline and inputs: a re-run with the same ones finds a finished group and skips it."""
    if description.input == "LoadData":
        illumination_folder = work / "illum" / plate
        names, digest = stage_illumination(description, illumination_dir, illumination_folder, plate)
        table = analysis_loaddata(files, plate, description, metadata, illumination_folder, names)
        content = digest + table.to_csv(index=False)
    else:
        table = None
        content = "".join(f"{Path(p).resolve().as_uri()}\n" for p in sorted(files["path"]))
    folder = work / hashlib.sha256((description.sha256 + content).encode()).hexdigest()[:20]
    folder.mkdir(parents=True, exist_ok=True)
    group = {"id": group_id, "output_dir": str(folder / "output")}
    if table is not None:
        (folder / "load_data.csv").write_text(table.to_csv(index=False))
        group["data_file"] = str(folder / "load_data.csv")
        image_sets = [{**row, "mdp_well": row["Metadata_Well"], "mdp_site": int(row["Metadata_Site"])}
                      for row in table.to_dict("records")]
    else:
        group["file_list"] = str(file_list(sorted(files["path"]), folder / "files.txt"))
        image_sets = _image_sets(engine, description, files, folder / "files.txt")
    return {"runner": group, "image_sets": image_sets}


def _run(context: dg.AssetExecutionContext, engine: CellProfilerEngine, pipeline: Path, prepared: list[dict],
         what: str, summaries_after: bool = False) -> tuple[str, list[GroupResult]]:
    """Run the groups; one summary line per group goes to the event log (CellProfiler's own output is in the
    step's compute log), here unless the caller logs them with the objects found (`summaries_after`)."""
    version, results = engine.run_groups(context, pipeline, [p["runner"] for p in prepared])
    failed = not all(r.ok for r in results)
    if failed or not summaries_after:
        for result in results:
            (context.log.info if result.ok else context.log.error)(result.summary())
    if failed:
        ok = sum(r.ok for r in results)
        raise MdpError(f"{what}: {len(results) - ok} of {len(results)} CellProfiler group(s) failed ({ok} finished and "
                       f"are kept for the next run):\n{summarize_failures(results)}", path=pipeline)
    return version, results


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
    "All: across cycles" needs every image in one run). The illumination functions it saves become
    `<channel>.npy`; the corrected images it saves are kept as it wrote them, in `corrected/`, indexed by
    `corrected.parquet` (well, site, channel, file_name)."""
    images = _qc_passing(raw_images, image_qc, "no illumination function can be made")
    if pipeline.resolve() == (SHIPPED_PIPELINES / "illumination.cppipe").resolve():
        # The shipped default adapts to the plate's channels (it is written for Cell Painting's five).
        channels = sorted(images["Metadata_Channel"].unique())
        pipeline = work_root / "pipelines" / f"illumination-{'-'.join(channels)}.cppipe"
        pipeline.parent.mkdir(parents=True, exist_ok=True)
        pipeline.write_text(illumination_pipeline(channels))
    description = describe_pipeline(engine.python, pipeline)
    functions, corrected = description.saved_functions(), description.saved_corrected()
    if not functions and not corrected:
        raise MdpError(f"the illumination pipeline {pipeline.name} saves neither an illumination function (SaveImages "
                       "of a CorrectIlluminationCalculate output) nor corrected images (SaveImages of a "
                       f"CorrectIlluminationApply output); its modules: {description.module_names()}", path=pipeline)
    files = raw_files(images)
    work = work_root / "cellprofiler-illumination" / context.partition_key
    prepared = _group(engine, description, files, context.partition_key, work, "plate", None, site_metadata(images))
    version, _ = _run(context, engine, pipeline, [prepared], "the illumination pipeline")
    output, sets = Path(prepared["runner"]["output_dir"]), prepared["image_sets"]
    channel_of = image_channels(description, sets, files)
    made = {}
    for save in functions:
        source = dict(description.calculations)[save.image]
        channel = channel_of.get(source)
        path = output / saved_file_name(save, sets[-1])
        if channel is None or not path.exists():
            raise MdpError(f"SaveImages #{save.module} of {pipeline.name} saved no {path.name} (illumination function "
                           f"{save.image} of {source})", path=pipeline)
        function = np.load(path) if path.suffix == ".npy" else tifffile.imread(path)
        np.save(staged / f"{channel}.npy", np.asarray(function, dtype=np.float32))
        made[channel] = save.image
    rows = []
    if corrected:
        (staged / CORRECTED).mkdir()
    for image_set in sets:
        for save in corrected:
            name = saved_file_name(save, image_set)
            path = output / name
            if not path.exists():
                raise MdpError(f"SaveImages #{save.module} of {pipeline.name} saved no {name} (corrected {save.image} of "
                               f"{image_set['mdp_well']} site {image_set['mdp_site']})", path=pipeline)
            shutil.copy(path, staged / CORRECTED / path.name)
            rows.append({"Metadata_Well": image_set["mdp_well"], "Metadata_Site": int(image_set["mdp_site"]),
                         "Metadata_Channel": channel_of[description.correction_of(save.image).image],
                         "file_name": path.name})
    if rows:
        pd.DataFrame(rows).to_parquet(staged / CORRECTED_INDEX, index=False)
    shutil.rmtree(work, ignore_errors=True)
    used = images.groupby("Metadata_Channel").size()
    return {"engine": f"cellprofiler {version}", "cellprofiler_version": version, "pipeline": str(pipeline),
            "pipeline_sha256": description.sha256, "images_per_channel": {str(k): int(v) for k, v in used.items()},
            "channels": len(used), "functions_saved": ", ".join(sorted(made)) or "none",
            "corrected_images_saved": len(rows)}


def analysis_input(description: PipelineDescription, raw_images: pd.DataFrame, illumination_dir: Path) -> tuple[pd.DataFrame, str]:
    """The files the analysis pipeline reads, and why: the raw images when it corrects illumination itself or
    when the illumination pipeline saved no corrected images; else the ones it saved."""
    index = illumination_dir / CORRECTED_INDEX
    if description.corrects_itself:
        corrections = ", ".join(f"{c.image} {c.method.lower()} {c.function}" for c in description.corrections)
        return raw_files(raw_images), f"raw images: {description.path.name} corrects illumination itself ({corrections})"
    if index.exists():
        corrected = pd.read_parquet(index)
        corrected["path"] = [str(illumination_dir / CORRECTED / n) for n in corrected["file_name"]]
        return corrected[FILES], "the corrected images the illumination pipeline saved"
    return raw_files(raw_images), f"raw images: {description.path.name} does not correct illumination"


def write_analysis_images(engine: CellProfilerEngine, pipeline: Path, raw_images: pd.DataFrame,
                          image_qc: pd.DataFrame, illumination_dir: Path, staged: Path) -> dict:
    """corrected_images for the CellProfiler engine: the images the analysis pipeline reads, one (C, Y, X) stack per
    QC-passing site in their own dtype, when those are the illumination pipeline's corrected ones; none when it
    reads raw images (correcting them itself or not at all): mdp makes no corrected copy of its own then."""
    description = describe_pipeline(engine.python, pipeline)
    images = _qc_passing(raw_images, image_qc, "nothing for CellProfiler to analyse")
    files, source = analysis_input(description, images, illumination_dir)
    good = passing_sites(image_qc)
    rows = []
    for (well, site), site_files in files.groupby(["Metadata_Well", "Metadata_Site"], sort=True):
        if (well, int(site)) not in good:
            continue
        site_files = site_files.sort_values("Metadata_Channel")
        channels = list(site_files["Metadata_Channel"])
        file_name = None
        if not source.startswith("raw"):
            stack = np.stack([tifffile.imread(p) for p in site_files["path"]])
            file_name = f"{well}_s{int(site):02d}.ome.tiff"
            write_stack(staged / file_name, stack, channels, None)
        rows.append({"Metadata_Well": well, "Metadata_Site": int(site), "file_name": file_name,
                     "channels": "|".join(channels)})
    sites = pd.DataFrame(rows, columns=["Metadata_Well", "Metadata_Site", "file_name", "channels"])
    return {"sites": sites, "analysis_reads": source,
            "images_written": int(sites["file_name"].notna().sum())}


def run_analysis(
    context: dg.AssetExecutionContext,
    engine: CellProfilerEngine,
    pipeline: Path,
    work_root: Path,
    raw_images: pd.DataFrame,
    image_qc: pd.DataFrame,
    illumination_dir: Path,
    staged: Path,
) -> dict:
    """Run the analysis pipeline over the plate's QC-passing sites in groups of wells, then write masks,
    the site index and CellProfiler's object tables into `staged`. Returns metadata for the output."""
    images = _qc_passing(raw_images, image_qc, "nothing for CellProfiler to analyse")
    description = describe_pipeline(engine.python, pipeline)
    files, source = analysis_input(description, images, illumination_dir)
    files = files[[(w, int(s)) in passing_sites(image_qc) for w, s in zip(files["Metadata_Well"], files["Metadata_Site"])]]
    work = work_root / "cellprofiler" / context.partition_key
    wells = list(files["Metadata_Well"].unique())
    # A pipeline grouping its image sets by anything coarser than a well runs as one group.
    processes = engine.workers or os.cpu_count() or 1
    if description.group_by and not set(description.group_by) <= {"Well", "Site"}:
        processes = 1
    prepared = [_group(engine, description, files[files["Metadata_Well"].isin(chunk)], context.partition_key, work,
                       f"{chunk[0]}-{chunk[-1]}", illumination_dir, site_metadata(images))
                for chunk in split_wells(wells, processes)]
    context.log.info(f"CellProfiler analysis of {len(files)} files ({source}) in {len(prepared)} group(s)")
    version, results = _run(context, engine, pipeline, prepared, "the analysis pipeline", summaries_after=True)
    outputs = [read_output(Path(p["runner"]["output_dir"]), description.export) for p in prepared]
    for result, output in zip(results, outputs):
        context.log.info(result.summary(output.counts()))
    merged = merge_groups(outputs)
    sites = _image_sites(merged.image, files)
    (staged / OBJECT_TABLES).mkdir()
    image_table = merged.image.merge(sites, on="ImageNumber", how="left")
    if "Metadata_Plate" not in image_table.columns:  # every per-image table names its plate
        image_table.insert(0, "Metadata_Plate", context.partition_key)
    image_table.to_parquet(staged / OBJECT_TABLES / "Image.parquet", index=False)
    for name, table in merged.objects.items():
        table.to_parquet(staged / OBJECT_TABLES / f"{name}.parquet", index=False)
    index, masks_note = _write_masks(description, sites, merged.image, prepared, staged)
    index.to_parquet(staged / "sites.parquet", index=False)
    judge_objects(index, description)
    shutil.rmtree(work, ignore_errors=True)  # everything is in the partition now
    return {
        "engine": f"cellprofiler {version}",
        "cellprofiler_version": version,
        "pipeline": str(pipeline),
        "pipeline_sha256": description.sha256,
        "analysis_reads": source,
        "groups": len(prepared),
        "objects": ", ".join(f"{k}: {v}" for k, v in merged.counts().items()),
        "sites": len(index),
        "nuclei": int(index["Count_Nuclei"].sum()) if len(index) else 0,
        "masks": masks_note,
    }


def judge_objects(index: pd.DataFrame, description: PipelineDescription) -> None:
    """A plate where the pipeline found no primary object in most sites fails, naming them."""
    if index.empty:
        raise MdpError(f"{description.path.name} processed no site of the plate", path=description.path)
    empty = index[index["Count_Nuclei"] == 0]
    if len(empty) > MAX_EMPTY_SITE_FRACTION * len(index):
        primary = description.primary[0] if description.primary else "objects"
        names = ", ".join(f"{r.Metadata_Well} site {r.Metadata_Site}" for r in empty.head(20).itertuples())
        raise MdpError(f"{description.path.name} found no {primary} in {len(empty)} of {len(index)} sites ({names}); "
                       "check that it gets the images it expects (correction, channels) and its segmentation "
                       "settings", path=description.path)


def _image_sites(image: pd.DataFrame, files: pd.DataFrame) -> pd.DataFrame:
    """ImageNumber -> Metadata_Well, Metadata_Site, by the files CellProfiler names in the image table (the
    files mdp gave it, so whatever the pipeline's own metadata says)."""
    by_name = {Path(p).name: (w, int(s)) for w, s, p in zip(files["Metadata_Well"], files["Metadata_Site"], files["path"])}
    rows = []
    for record in image.itertuples(index=False):
        names = [getattr(record, c) for c in image.columns if c.startswith("Image_FileName_")]
        found = next((by_name[n] for n in names if n in by_name), None)
        if found is None:
            raise MdpError(f"CellProfiler image set {record.ImageNumber} names none of the files mdp gave it: {names}")
        rows.append({"ImageNumber": record.ImageNumber, "Metadata_Well": found[0], "Metadata_Site": found[1]})
    return pd.DataFrame(rows, columns=["ImageNumber", "Metadata_Well", "Metadata_Site"])


def mask_objects(description: PipelineDescription) -> tuple[str | None, str | None]:
    """(the nucleus-like and the cell-like object): the first primary object, and the secondary grown from it."""
    primary = description.primary[0] if description.primary else None
    cell = next((obj for obj, source in description.secondary if source == primary), None)
    return primary, cell


def _write_masks(description: PipelineDescription, sites: pd.DataFrame, image: pd.DataFrame, prepared: list[dict],
                 staged: Path) -> tuple[pd.DataFrame, str]:
    """The label images the pipeline saved (ConvertObjectsToImage + SaveImages) of its primary object and the
    cell grown from it become mdp's masks, `<well>_s<site>_masks.tiff` (layers named as the objects)."""
    primary, cell = mask_objects(description)
    saved = description.saved_labels()
    lacking = [o for o in (primary, cell) if o and o not in saved]
    note = (f"label images of {primary} and {cell}" if not lacking else
            f"none: {description.path.name} saves no label image of {', '.join(lacking)} (ConvertObjectsToImage + "
            "SaveImages, 16-bit), so no crops can be made")
    files = {}
    for group in prepared:
        for image_set in group["image_sets"]:
            if not lacking:
                files[(image_set["mdp_well"], int(image_set["mdp_site"]))] = [
                    Path(group["runner"]["output_dir"]) / saved_file_name(saved[o], image_set) for o in (primary, cell)]
    counts = image.set_index("ImageNumber")
    rows = []
    for site in sites.itertuples(index=False):
        key = (site.Metadata_Well, int(site.Metadata_Site))
        file_name = None
        paths = files.get(key)
        if paths and all(p.exists() for p in paths):
            file_name = f"{site.Metadata_Well}_s{int(site.Metadata_Site):02d}_masks.tiff"
            write_stack(staged / file_name, np.stack([tifffile.imread(p).astype(np.int32) for p in paths]),
                        [primary, cell], None)
        row = counts.loc[site.ImageNumber]
        rows.append({
            "Metadata_Well": site.Metadata_Well,
            "Metadata_Site": int(site.Metadata_Site),
            "file_name": file_name,
            "corrected_file_name": f"{site.Metadata_Well}_s{int(site.Metadata_Site):02d}.ome.tiff",
            "Count_Nuclei": int(row.get(f"Image_Count_{primary}", 0) or 0) if primary else 0,
            "Count_Cells": int(row.get(f"Image_Count_{cell}", 0) or 0) if cell else 0,
        })
    return pd.DataFrame(rows), note


class _SortedTable:
    """One object table read in batches of rows, handed out by image set: the tables are stored sorted by
    ImageNumber (run_analysis writes them so), so a batch of image sets is a run of consecutive rows."""

    def __init__(self, path: Path, batch_rows: int) -> None:
        self.path = path
        self.batches = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 16).iter_batches(batch_size=batch_rows)
        self.schema = pq.read_schema(path)
        self.held: pa.Table | None = None
        self.last = -1

    def until(self, image_number: int) -> pd.DataFrame:
        """Every row not handed out yet whose ImageNumber is at most `image_number`."""
        parts = []
        while True:
            if self.held is None:
                batch = next(self.batches, None)
                if batch is None:
                    break
                self.held = pa.Table.from_batches([batch])
                numbers = self.held.column("ImageNumber").to_numpy()
                if len(numbers) and (numbers[0] < self.last or (np.diff(numbers) < 0).any()):
                    raise MdpError("CellProfiler's object table is not sorted by ImageNumber; make segmentation_masks "
                                   "again", path=self.path)
                self.last = int(numbers[-1]) if len(numbers) else self.last
            numbers = self.held.column("ImageNumber").to_numpy()
            cut = int(np.searchsorted(numbers, image_number, side="right"))
            parts.append(self.held.slice(0, cut))
            if cut < len(numbers):
                self.held = self.held.slice(cut)
                break
            self.held = None
        return (pa.concat_tables(parts) if parts else self.schema.empty_table()).to_pandas()


def cellprofiler_features(tables: Path, batch_bytes: int = 16 << 20) -> Iterator[pd.DataFrame]:
    """Single cells from the object tables a CellProfiler run left in a segmentation_masks partition, in
    batches of image sets (about `batch_bytes` of features each), in ImageNumber order: together they are the
    table the whole plate's object tables would give, but memory holds one batch."""
    image = pd.read_parquet(tables / "Image.parquet")  # one row per site
    paths = {p.stem: p for p in sorted(tables.glob("*.parquet")) if p.stem != "Image"}
    # The image table carries Metadata_Well / Metadata_Site as mdp resolved them; CellProfiler's own go.
    image = image.drop(columns=[c for c in ("Image_Metadata_Well", "Image_Metadata_Site") if c in image.columns])
    image = image.rename(columns={"Metadata_Well": "Image_Metadata_Well", "Metadata_Site": "Image_Metadata_Site"})
    files = {name: pq.ParquetFile(path) for name, path in paths.items()}
    # How objects make a cell is read from the whole plate's tables (their columns and counts), once.
    shapes = CellProfilerOutput(image.iloc[:0], {n: f.schema_arrow.empty_table().to_pandas() for n, f in files.items()})
    layout = compartments(shapes, {n: f.metadata.num_rows for n, f in files.items()})
    numbers = np.sort(image["ImageNumber"].unique())
    row_bytes = sum(8 * len(f.schema_arrow) for f in files.values()) or 8
    per_image = max((f.metadata.num_rows for f in files.values()), default=0) / max(len(numbers), 1)
    images_per_batch = max(1, int(batch_bytes // (row_bytes * max(per_image, 1))))
    readers = {name: _SortedTable(path, max(1024, int(batch_bytes // row_bytes))) for name, path in paths.items()}
    for start in range(0, len(numbers), images_per_batch):
        chosen = numbers[start : start + images_per_batch]
        last = int(chosen[-1]) if start + images_per_batch < len(numbers) else np.iinfo(np.int64).max
        objects = {name: reader.until(last) for name, reader in readers.items()}
        yield features_from_cellprofiler(CellProfilerOutput(image[image["ImageNumber"].isin(chosen)], objects), layout)
    if not len(numbers):
        yield features_from_cellprofiler(shapes, layout)
