"""Single-cell measurements with CellProfiler's names (the built-in engine).

Column names follow CellProfiler / pycytominer: `<Compartment>_<FeatureGroup>_<Feature>[_<Channel>]`,
for example `Nuclei_AreaShape_Area` or `Cells_Intensity_MeanIntensity_DNA`. The compartments are
Nuclei, Cells and Cytoplasm; objects are matched by ObjectNumber (a cell carries its nucleus' label).
Lengths are in pixels and intensities in CellProfiler's [0, 1] scale, as CellProfiler reports them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from skimage import measure

from mdp_assets.parallel import imap_sites
from mdp_assets.science.image_store import read_stack
from mdp_assets.science.profiles import metadata_first
from mdp_assets.science.segmentation import cytoplasm_labels
from mdp_assets.science.tables import BatchWriter

COMPARTMENTS = ("Nuclei", "Cells", "Cytoplasm")

_SHAPE_PROPERTIES = {
    "area": "Area",
    "perimeter": "Perimeter",
    "eccentricity": "Eccentricity",
    "solidity": "Solidity",
    "extent": "Extent",
    "major_axis_length": "MajorAxisLength",
    "minor_axis_length": "MinorAxisLength",
    "euler_number": "EulerNumber",
    "equivalent_diameter_area": "EquivalentDiameter",
    "feret_diameter_max": "MaxFeretDiameter",
    "area_convex": "ConvexArea",
}


def _std_intensity(mask: np.ndarray, intensity: np.ndarray) -> np.ndarray:
    return np.std(intensity[mask], axis=0)


def _median_intensity(mask: np.ndarray, intensity: np.ndarray) -> np.ndarray:
    return np.median(intensity[mask], axis=0)


def _lower_quartile(mask: np.ndarray, intensity: np.ndarray) -> np.ndarray:
    return np.percentile(intensity[mask], 25, axis=0)


def _upper_quartile(mask: np.ndarray, intensity: np.ndarray) -> np.ndarray:
    return np.percentile(intensity[mask], 75, axis=0)


def measure_compartment(
    labels: np.ndarray, channels: dict[str, np.ndarray], compartment: str, object_numbers: np.ndarray
) -> pd.DataFrame:
    """AreaShape, Location and Intensity features of one compartment, one row per object number.

    Objects absent from `labels` (for example a cytoplasm swallowed by its nucleus) get NaN features.
    """
    names = list(channels)
    stack = np.stack([channels[n] for n in names], axis=-1).astype(np.float32)
    table = measure.regionprops_table(
        labels,
        intensity_image=stack,
        properties=["label", "centroid", "bbox", "orientation", *_SHAPE_PROPERTIES,
                    "intensity_mean", "intensity_min", "intensity_max"],
        extra_properties=[_std_intensity, _median_intensity, _lower_quartile, _upper_quartile],
    )
    frame = pd.DataFrame(table).set_index("label")
    out = pd.DataFrame(index=frame.index)
    for prop, name in _SHAPE_PROPERTIES.items():
        out[f"{compartment}_AreaShape_{name}"] = frame[prop].astype(float)
    area, perimeter = frame["area"].astype(float), frame["perimeter"].astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out[f"{compartment}_AreaShape_FormFactor"] = np.where(perimeter > 0, 4 * np.pi * area / perimeter**2, np.nan)
    # CellProfiler reports orientation in degrees, counter-clockwise from the x axis.
    out[f"{compartment}_AreaShape_Orientation"] = np.degrees(frame["orientation"].astype(float))
    out[f"{compartment}_AreaShape_Center_X"] = frame["centroid-1"]
    out[f"{compartment}_AreaShape_Center_Y"] = frame["centroid-0"]
    out[f"{compartment}_AreaShape_BoundingBoxMinimum_X"] = frame["bbox-1"]
    out[f"{compartment}_AreaShape_BoundingBoxMinimum_Y"] = frame["bbox-0"]
    out[f"{compartment}_AreaShape_BoundingBoxMaximum_X"] = frame["bbox-3"]
    out[f"{compartment}_AreaShape_BoundingBoxMaximum_Y"] = frame["bbox-2"]
    out[f"{compartment}_Location_Center_X"] = frame["centroid-1"]
    out[f"{compartment}_Location_Center_Y"] = frame["centroid-0"]
    for index, channel in enumerate(names):
        mean = frame[f"intensity_mean-{index}"].astype(float)
        prefix = f"{compartment}_Intensity"
        out[f"{prefix}_IntegratedIntensity_{channel}"] = mean * area
        out[f"{prefix}_MeanIntensity_{channel}"] = mean
        out[f"{prefix}_StdIntensity_{channel}"] = frame[f"_std_intensity-{index}"]
        out[f"{prefix}_MinIntensity_{channel}"] = frame[f"intensity_min-{index}"]
        out[f"{prefix}_MaxIntensity_{channel}"] = frame[f"intensity_max-{index}"]
        out[f"{prefix}_MedianIntensity_{channel}"] = frame[f"_median_intensity-{index}"]
        out[f"{prefix}_LowerQuartileIntensity_{channel}"] = frame[f"_lower_quartile-{index}"]
        out[f"{prefix}_UpperQuartileIntensity_{channel}"] = frame[f"_upper_quartile-{index}"]
    return out.reindex(object_numbers)


def measure_site(nuclei: np.ndarray, cells: np.ndarray, channels: dict[str, np.ndarray]) -> pd.DataFrame:
    """All compartments of one site; one row per cell, `Metadata_ObjectNumber` first."""
    object_numbers = np.unique(cells[cells > 0])
    if object_numbers.size == 0:
        return pd.DataFrame({"Metadata_ObjectNumber": pd.Series(dtype="int64")})
    compartments = {"Nuclei": nuclei, "Cells": cells, "Cytoplasm": cytoplasm_labels(nuclei, cells)}
    parts = [measure_compartment(labels, channels, name, object_numbers) for name, labels in compartments.items()]
    table = pd.concat(parts, axis=1)
    table.index.name = "Metadata_ObjectNumber"
    return table.reset_index()


def _measure_stored_site(job: tuple[Path, Path, str, int]) -> pd.DataFrame:
    """One site measured from its stored masks and corrected stack (what a worker process runs)."""
    masks_path, corrected_path, well, site = job
    labels, _ = read_stack(masks_path)
    stack, names = read_stack(corrected_path)
    measured = measure_site(labels[0], labels[1], {name: stack[i] for i, name in enumerate(names)})
    measured.insert(0, "Metadata_Site", site)
    measured.insert(0, "Metadata_Well", well)
    return measured


def site_features(masks: pd.DataFrame, masks_dir: Path, corrected_dir: Path, workers: int = 0,
                  progress: Callable[[int], None] | None = None) -> Iterator[pd.DataFrame]:
    """Measure every segmented site, `workers` processes at once (0: one per core): one table per site, in the order of `masks`,
    its rows carrying Metadata_Well, Metadata_Site and Metadata_ObjectNumber. `progress` is told how many sites
    are done after each one."""
    jobs = [(masks_dir / site.file_name, corrected_dir / site.corrected_file_name, site.Metadata_Well,
             int(site.Metadata_Site)) for site in masks.itertuples(index=False)]
    for done, measured in enumerate(imap_sites(_measure_stored_site, jobs, workers), start=1):
        if progress:
            progress(done)
        yield measured
    if not jobs:
        yield pd.DataFrame(columns=["Metadata_Well", "Metadata_Site", "Metadata_ObjectNumber"])


def annotate_cells(measured: pd.DataFrame, wells: pd.DataFrame, sites: pd.DataFrame) -> pd.DataFrame:
    """A batch of measured cells with the plate's well (platemap) and site (acquisition) metadata, Metadata_
    columns first. mdp's metadata win over whatever the engine wrote under the same name."""
    keys = {"Metadata_Well", "Metadata_Site"}
    measured = measured.drop(columns=[c for c in [*wells.columns, *sites.columns]
                                      if c in measured.columns and c not in keys])
    return metadata_first(measured.merge(wells, on="Metadata_Well", how="left").merge(
        sites, on=["Metadata_Well", "Metadata_Site"], how="left"))


def write_single_cells(batches: Iterable[pd.DataFrame], wells: pd.DataFrame, sites: pd.DataFrame,
                       target: Path) -> dict[str, object]:
    """Every batch of measured cells annotated (`annotate_cells`) and written to `target` as it comes
    (`tables.BatchWriter`): the table equals the whole plate's, annotated at once, but memory holds one batch
    and one row group. Returns the level's figures: cells, features, wells."""
    seen_wells: set[str] = set()
    with BatchWriter(target) as writer:
        for batch in batches:
            table = annotate_cells(batch, wells, sites)
            writer.write(table)
            if len(table):
                seen_wells.update(table["Metadata_Well"].dropna().unique())
    columns = pq.read_schema(target).names
    return {"cells": writer.rows, "features": sum(not c.startswith("Metadata_") for c in columns),
            "wells": len(seen_wells)}
