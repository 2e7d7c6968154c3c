"""The built-in segmentation engine (scikit-image): nuclei, then cells grown from them.

It follows the shape of a Cell Painting CellProfiler pipeline: IdentifyPrimaryObjects on the DNA channel
(smoothing, Otsu threshold, declumping by shape, discard objects touching the border, size filter), then
IdentifySecondaryObjects by propagation from the nuclei over a cell-body channel. Each cell carries the
label of its nucleus, so Nuclei, Cells and Cytoplasm objects share ObjectNumber one-to-one.
"""

from __future__ import annotations

from collections.abc import Callable

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from skimage import feature, filters, measure, morphology, segmentation

from mdp_assets.errors import MdpError
from mdp_assets.parallel import imap_sites
from mdp_assets.science.image_store import read_stack, write_stack


@dataclass(frozen=True)
class SegmentationParameters:
    nuclei_smoothing_sigma: float = 1.5
    nuclei_min_area: int = 30
    nuclei_max_area: int = 5000
    declump_min_distance: int = 5
    cell_smoothing_sigma: float = 2.0
    cell_threshold_correction: float = 0.7  # CellProfiler's threshold correction factor, for dim cytoplasm
    cell_max_distance: int = 40  # pixels a cell may extend beyond its nucleus
    discard_border_nuclei: bool = True


def segment_nuclei(dna: np.ndarray, params: SegmentationParameters) -> np.ndarray:
    smoothed = filters.gaussian(dna.astype(np.float32), sigma=params.nuclei_smoothing_sigma)
    if np.ptp(smoothed) == 0:
        return np.zeros(dna.shape, dtype=np.int32)
    foreground = smoothed > filters.threshold_otsu(smoothed)
    foreground = ndimage.binary_fill_holes(foreground)
    foreground = morphology.remove_small_objects(foreground, max_size=params.nuclei_min_area - 1)
    distance = ndimage.distance_transform_edt(foreground)
    peaks = feature.peak_local_max(
        distance, min_distance=params.declump_min_distance, labels=measure.label(foreground), exclude_border=False
    )
    markers = np.zeros(dna.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = segmentation.watershed(-distance, markers, mask=foreground)
    if params.discard_border_nuclei:
        labels = segmentation.clear_border(labels)
    areas = np.bincount(labels.ravel())
    bad = np.flatnonzero((areas < params.nuclei_min_area) | (areas > params.nuclei_max_area))
    labels[np.isin(labels, bad[bad > 0])] = 0
    relabelled, _, _ = segmentation.relabel_sequential(labels)
    return relabelled.astype(np.int32)


def segment_cells(cell_image: np.ndarray, nuclei: np.ndarray, params: SegmentationParameters) -> np.ndarray:
    smoothed = filters.gaussian(cell_image.astype(np.float32), sigma=params.cell_smoothing_sigma)
    if nuclei.max() == 0 or np.ptp(smoothed) == 0:
        return np.zeros(nuclei.shape, dtype=np.int32)
    foreground = smoothed > filters.threshold_otsu(smoothed) * params.cell_threshold_correction
    near_nucleus = ndimage.distance_transform_edt(nuclei == 0) <= params.cell_max_distance
    mask = (foreground & near_nucleus) | (nuclei > 0)
    gradient = filters.sobel(smoothed)
    cells = segmentation.watershed(gradient, markers=nuclei, mask=mask)
    return cells.astype(np.int32)


def segment_site(dna: np.ndarray, cell_image: np.ndarray, params: SegmentationParameters) -> tuple[np.ndarray, np.ndarray]:
    nuclei = segment_nuclei(dna, params)
    cells = segment_cells(cell_image, nuclei, params)
    return nuclei, cells


def cytoplasm_labels(nuclei: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """IdentifyTertiaryObjects: the cell minus its nucleus, keeping the cell's label."""
    return np.where(nuclei > 0, 0, cells).astype(np.int32)


def cell_body_image(stack: np.ndarray, names: list[str], nuclei_channel: str, cell_channel: str | None) -> np.ndarray:
    """The image cells are grown over: the named channel, or all non-nuclear channels, each scaled to its
    99.9th percentile, averaged (robust to one dim stain)."""
    if cell_channel is not None:
        return stack[names.index(cell_channel)]
    others = [i for i, name in enumerate(names) if name != nuclei_channel] or list(range(len(names)))
    scaled = [stack[i] / max(float(np.percentile(stack[i], 99.9)), 1e-9) for i in others]
    return np.mean(scaled, axis=0)


def segment_stack_file(site: tuple[str, int, str], corrected_dir: Path, out_dir: Path, nuclei_channel: str,
                       cell_channel: str | None, params: SegmentationParameters) -> dict:
    """Segment one corrected site (well, site, file name) into `<well>_s<site>_masks.tiff`; its index row."""
    well, site_number, corrected_name = site
    stack, names = read_stack(corrected_dir / corrected_name)
    for needed in (nuclei_channel, cell_channel):
        if needed is not None and needed not in names:
            raise MdpError(f"channel {needed!r} (plate manifest) is not among the plate's channels {names}")
    nuclei, cells = segment_site(
        stack[names.index(nuclei_channel)], cell_body_image(stack, names, nuclei_channel, cell_channel), params
    )
    file_name = f"{well}_s{site_number:02d}_masks.tiff"
    write_stack(out_dir / file_name, np.stack([nuclei, cells]), ["Nuclei", "Cells"], None)
    return {
        "Metadata_Well": well,
        "Metadata_Site": site_number,
        "file_name": file_name,
        "corrected_file_name": corrected_name,
        "Count_Nuclei": int(nuclei.max()),
        "Count_Cells": int(np.unique(cells[cells > 0]).size),
    }


def write_masks(
    corrected_sites: pd.DataFrame,
    corrected_dir: Path,
    out_dir: Path,
    nuclei_channel: str,
    cell_channel: str | None,
    params: SegmentationParameters,
    progress: Callable[[int], None] | None = None,
    workers: int = 1,
) -> pd.DataFrame:
    """Segment every corrected site into `<well>_s<site>_masks.tiff` (Nuclei, Cells) in `workers` processes
    (0: one per core); returns the site index in the input's order. `progress` is told how many sites are
    done after each one."""
    sites = [(s.Metadata_Well, int(s.Metadata_Site), s.file_name) for s in corrected_sites.itertuples(index=False)]
    work = partial(segment_stack_file, corrected_dir=corrected_dir, out_dir=out_dir, nuclei_channel=nuclei_channel,
                   cell_channel=cell_channel, params=params)
    rows = []
    for row in imap_sites(work, sites, workers):
        rows.append(row)
        if progress:
            progress(len(rows))
    return pd.DataFrame(rows)
