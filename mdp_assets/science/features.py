"""Single-cell measurements with CellProfiler's names (the built-in engine).

Column names follow CellProfiler / pycytominer: `<Compartment>_<FeatureGroup>_<Feature>[_<Channel>]`,
for example `Nuclei_AreaShape_Area` or `Cells_Intensity_MeanIntensity_DNA`. The compartments are
Nuclei, Cells and Cytoplasm; objects are matched by ObjectNumber (a cell carries its nucleus' label).
Lengths are in pixels and intensities in CellProfiler's [0, 1] scale, as CellProfiler reports them.

AreaShape, Location and Intensity are computed here with scikit-image. Texture, Granularity,
RadialDistribution and Correlation come from cp-measure (CellProfiler's measurement code as a library),
renamed as CellProfiler's MeasureTexture, MeasureGranularity, MeasureObjectIntensityDistribution and
MeasureColocalization name them; `CpMeasureGroups` says which of them run and with which settings. They are
opt-in, and cp-measure (with scipy.stats and numba, ~150 MB and ~1 s per process) is imported only when one runs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from scipy import ndimage
from skimage import measure, segmentation

from mdp_assets.parallel import imap_sites
from mdp_assets.science.illumination import to_unit_range
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


@dataclass(frozen=True)
class CpMeasureGroups:
    """The feature groups measured with cp-measure, with CellProfiler's module settings (defaults: those of
    the field's Cell Painting pipelines and CellProfiler's own). Texture is the slowest; each group can be
    switched off."""

    texture: bool = True
    texture_scales: tuple[int, ...] = (3,)  # MeasureTexture "Texture scale to measure"
    texture_gray_levels: int = 256  # MeasureTexture "how many gray levels"
    granularity: bool = True
    granularity_subsample: float = 0.25  # MeasureGranularity "Subsampling factor for granularity measurements"
    granularity_background_subsample: float = 0.25  # "... for background reduction"
    granularity_element_size: int = 10  # "Radius of structuring element"
    granularity_spectrum: int = 16  # "Range of the granular spectrum"
    radial_distribution: bool = True
    radial_bins: int = 4  # MeasureObjectIntensityDistribution "Number of bins" (scaled bins)
    correlation: bool = True
    correlation_threshold: int = 15  # MeasureColocalization "threshold as percentage of maximum intensity"

    @classmethod
    def none(cls) -> "CpMeasureGroups":
        return cls(texture=False, granularity=False, radial_distribution=False, correlation=False)


DEFAULT_GROUPS = CpMeasureGroups()


def _texture(labels: np.ndarray, pixels: np.ndarray, channel: str, groups: CpMeasureGroups) -> dict[str, np.ndarray]:
    from cp_measure.core.numba import measuretexture  # numba's Haralick kernel: mahotas' GLCM counts, ~100x faster

    out = {}
    for scale in groups.texture_scales:
        # cp-measure names a feature <Feature>_<scale>_<angle>_<levels>; CellProfiler puts the image after the feature.
        for key, values in measuretexture.get_texture(labels, pixels, scale=scale,
                                                      gray_levels=groups.texture_gray_levels).items():
            feature, rest = key.split("_", 1)
            out[f"Texture_{feature}_{channel}_{rest}"] = values
    return out


def _granularity(labels: np.ndarray, pixels: np.ndarray, channel: str, groups: CpMeasureGroups) -> dict[str, np.ndarray]:
    from cp_measure.core import measuregranularity

    spectrum = measuregranularity.get_granularity(
        labels, pixels, subsample_size=groups.granularity_subsample,
        image_sample_size=groups.granularity_background_subsample,
        element_size=groups.granularity_element_size, granular_spectrum_length=groups.granularity_spectrum)
    return {f"{key}_{channel}": values for key, values in spectrum.items()}  # Granularity_<n>_<channel>


def _radial_distribution(labels: np.ndarray, pixels: np.ndarray, channel: str,
                         groups: CpMeasureGroups) -> dict[str, np.ndarray]:
    from cp_measure.core import measureobjectintensitydistribution

    out = {}
    for key, values in measureobjectintensitydistribution.get_radial_distribution(
            labels, pixels, scaled=True, bin_count=groups.radial_bins).items():
        category, feature, bins = key.split("_", 2)  # RadialDistribution_FracAtD_1of4
        out[f"{category}_{feature}_{channel}_{bins}"] = values
    return out


def _rank_weighted_colocalization(labels: np.ndarray, first: np.ndarray, second: np.ndarray,
                                  thr: int) -> tuple[np.ndarray, np.ndarray]:
    """MeasureColocalization's RWC as CellProfiler 4.2 computes it: pixels ranked across all of the image's
    objects (not per object, as cp-measure does), weights from the rank difference, per-object thresholds."""
    inside = labels > 0
    lab, fi, si = labels[inside], first[inside].astype(float), second[inside].astype(float)
    index = np.arange(1, int(labels.max()) + 1)
    ranks = []
    for pixels in (fi, si):
        order = np.lexsort((lab, pixels))
        steps = np.cumsum(np.concatenate([[False], pixels[order[:-1]] != pixels[order[1:]]]))
        rank = np.zeros(pixels.shape, dtype=int)
        rank[order] = steps
        ranks.append(rank)
    top = max(ranks[0].max(), ranks[1].max()) + 1
    weight = (top - np.abs(ranks[0] - ranks[1])) / top
    tff = thr / 100 * np.asarray(ndimage.maximum(fi, lab, index))
    tss = thr / 100 * np.asarray(ndimage.maximum(si, lab, index))
    above_f, above_s = fi >= tff[lab - 1], si >= tss[lab - 1]
    both = above_f & above_s
    with np.errstate(divide="ignore", invalid="ignore"):
        rwc1 = ndimage.sum(fi[both] * weight[both], lab[both], index) / ndimage.sum(fi[above_f], lab[above_f], index)
        rwc2 = ndimage.sum(si[both] * weight[both], lab[both], index) / ndimage.sum(si[above_s], lab[above_s], index)
    return np.asarray(rwc1, dtype=float), np.asarray(rwc2, dtype=float)


def _correlation(labels: np.ndarray, first: np.ndarray, second: np.ndarray, names: tuple[str, str],
                 groups: CpMeasureGroups) -> dict[str, np.ndarray]:
    """MeasureColocalization within objects: Correlation, Overlap, K, Manders and RWC (not Costes; CellProfiler
    reports Slope for whole images only)."""
    from cp_measure.core import measurecolocalization

    a, b = names
    thr = groups.correlation_threshold
    pearson = measurecolocalization.get_correlation_pearson(first, second, labels)
    overlap = measurecolocalization.get_correlation_overlap(first, second, labels, thr=thr)
    manders = measurecolocalization.get_correlation_manders_fold(first, second, labels, thr=thr)
    rwc1, rwc2 = _rank_weighted_colocalization(labels, first, second, thr)
    return {
        f"Correlation_Correlation_{a}_{b}": pearson["Correlation_Pearson"],
        f"Correlation_Overlap_{a}_{b}": overlap["Correlation_Overlap"],
        f"Correlation_K_{a}_{b}": overlap["Correlation_K_1"],
        f"Correlation_K_{b}_{a}": overlap["Correlation_K_2"],
        f"Correlation_Manders_{a}_{b}": manders["Correlation_Manders_1"],
        f"Correlation_Manders_{b}_{a}": manders["Correlation_Manders_2"],
        f"Correlation_RWC_{a}_{b}": rwc1,
        f"Correlation_RWC_{b}_{a}": rwc2,
    }


def measure_cp_groups(labels: np.ndarray, channels: dict[str, np.ndarray], compartment: str,
                      groups: CpMeasureGroups = DEFAULT_GROUPS) -> pd.DataFrame:
    """Texture, Granularity, RadialDistribution and Correlation of one compartment with cp-measure, one row per
    object present in `labels` (indexed by its label), columns named `<Compartment>_<Group>_...` as CellProfiler
    names them. Pixels are taken in CellProfiler's [0, 1] scale (integer images divided by their dtype's range)."""
    present = np.unique(labels[labels > 0])
    if present.size == 0:
        return pd.DataFrame(index=pd.Index(present, name="label"))
    # cp-measure wants labels 1..N; relabel_sequential keeps the order, so row i is object present[i].
    sequential = segmentation.relabel_sequential(labels)[0]
    pixels = {name: np.clip(to_unit_range(image), 0.0, 1.0) for name, image in channels.items()}
    features: dict[str, np.ndarray] = {}
    with warnings.catch_warnings():  # empty bins, one-level objects: cp-measure warns and reports NaN, as CellProfiler
        warnings.simplefilter("ignore", RuntimeWarning)
        for channel, image in pixels.items():
            if groups.texture:
                features |= _texture(sequential, image, channel, groups)
            if groups.granularity:
                features |= _granularity(sequential, image, channel, groups)
            if groups.radial_distribution:
                features |= _radial_distribution(sequential, image, channel, groups)
        if groups.correlation:
            for a, b in combinations(pixels, 2):
                features |= _correlation(sequential, pixels[a], pixels[b], (a, b), groups)
    table = pd.DataFrame({f"{compartment}_{key}": np.asarray(values, dtype=float) for key, values in features.items()},
                         index=pd.Index(present, name="label"))
    return table


def measure_compartment(
    labels: np.ndarray, channels: dict[str, np.ndarray], compartment: str, object_numbers: np.ndarray,
    groups: CpMeasureGroups = DEFAULT_GROUPS,
) -> pd.DataFrame:
    """AreaShape, Location and Intensity features of one compartment (and the cp-measure `groups`), one row per
    object number.

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
    if groups != CpMeasureGroups.none():
        out = out.join(measure_cp_groups(labels, channels, compartment, groups))
    return out.reindex(object_numbers)


def measure_site(nuclei: np.ndarray, cells: np.ndarray, channels: dict[str, np.ndarray],
                 groups: CpMeasureGroups = DEFAULT_GROUPS) -> pd.DataFrame:
    """All compartments of one site; one row per cell, `Metadata_ObjectNumber` first."""
    object_numbers = np.unique(cells[cells > 0])
    if object_numbers.size == 0:
        return pd.DataFrame({"Metadata_ObjectNumber": pd.Series(dtype="int64")})
    compartments = {"Nuclei": nuclei, "Cells": cells, "Cytoplasm": cytoplasm_labels(nuclei, cells)}
    parts = [measure_compartment(labels, channels, name, object_numbers, groups)
             for name, labels in compartments.items()]
    table = pd.concat(parts, axis=1)
    table.index.name = "Metadata_ObjectNumber"
    return table.reset_index()


def _measure_stored_site(job: tuple[Path, Path, str, int, CpMeasureGroups]) -> pd.DataFrame:
    """One site measured from its stored masks and corrected stack (what a worker process runs)."""
    masks_path, corrected_path, well, site, groups = job
    labels, _ = read_stack(masks_path)
    stack, names = read_stack(corrected_path)
    measured = measure_site(labels[0], labels[1], {name: stack[i] for i, name in enumerate(names)}, groups)
    measured.insert(0, "Metadata_Site", site)
    measured.insert(0, "Metadata_Well", well)
    return measured


def site_features(masks: pd.DataFrame, masks_dir: Path, corrected_dir: Path, workers: int = 0,
                  progress: Callable[[int], None] | None = None,
                  groups: CpMeasureGroups = DEFAULT_GROUPS) -> Iterator[pd.DataFrame]:
    """Measure every segmented site (the cp-measure `groups` as configured), `workers` processes at once (0: one
    per core): one table per site, in the order of `masks`, its rows carrying Metadata_Well, Metadata_Site and
    Metadata_ObjectNumber. `progress` is told how many sites are done after each one."""
    jobs = [(masks_dir / site.file_name, corrected_dir / site.corrected_file_name, site.Metadata_Well,
             int(site.Metadata_Site), groups) for site in masks.itertuples(index=False)]
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
