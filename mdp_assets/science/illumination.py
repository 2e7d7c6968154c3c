"""Illumination correction the way CellProfiler's CorrectIlluminationCalculate / Apply do it.

Calculate ("All" images, "Regular" intensity): average every image of one channel across the plate,
smooth the average (Gaussian filter, one of CellProfiler's smoothing methods), then rescale it so its
robust minimum (2nd percentile of positive pixels) is 1 and nothing is below 1. Apply: divide.
Pixel values follow CellProfiler's convention: integer images are scaled to [0, 1] by their dtype's range.
"""

from __future__ import annotations

from collections.abc import Callable

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from mdp_assets.errors import MdpError
from mdp_assets.science.image_store import write_stack
from mdp_assets.plates.inventory import site_images, uri_to_path
from mdp_assets.plates.tiff_metadata import read_plane

ROBUST_FACTOR = 0.02  # CellProfiler's robust minimum: the 2nd percentile of positive pixels


def to_unit_range(image: np.ndarray) -> np.ndarray:
    """CellProfiler's image scaling: integers divided by their dtype maximum, floats unchanged."""
    if np.issubdtype(image.dtype, np.integer):
        return image.astype(np.float32) / np.float32(np.iinfo(image.dtype).max)
    return image.astype(np.float32, copy=False)


def average_images(images: Iterable[np.ndarray]) -> np.ndarray:
    total: np.ndarray | None = None
    count = 0
    for image in images:
        pixels = to_unit_range(image).astype(np.float64)
        if total is None:
            total = np.zeros_like(pixels)
        elif pixels.shape != total.shape:
            raise ValueError(f"image shape {pixels.shape} differs from the channel's {total.shape}")
        total += pixels
        count += 1
    if total is None:
        raise ValueError("no images to average")
    return total / count


def robust_rescale(function: np.ndarray) -> np.ndarray:
    positive = np.sort(function[function > 0], axis=None)
    if positive.size == 0:
        return np.ones_like(function)
    robust_minimum = positive[int(positive.size * ROBUST_FACTOR)]
    return np.maximum(function, robust_minimum) / robust_minimum


def illumination_function(images: Iterable[np.ndarray], smoothing_sigma: float) -> np.ndarray:
    """The flat-field function of one channel: average, smooth, rescale (all values >= 1)."""
    average = average_images(images)
    smoothed = ndimage.gaussian_filter(average, sigma=smoothing_sigma, mode="nearest")
    return robust_rescale(smoothed).astype(np.float32)


def apply_illumination(image: np.ndarray, function: np.ndarray) -> np.ndarray:
    if image.shape != function.shape:
        raise ValueError(f"image shape {image.shape} does not match illumination function {function.shape}")
    return (to_unit_range(image) / function).astype(np.float32)


@dataclass(frozen=True)
class IlluminationParameters:
    smoothing_sigma_fraction: float = 0.05  # Gaussian sigma as a fraction of the image width


def write_illumination_functions(
    raw_images: pd.DataFrame, good_sites: set[tuple[str, int]], out_dir: Path, params: IlluminationParameters
) -> dict[str, int]:
    """One `<channel>.npy` per channel from the plate's QC-passing images; returns images used per channel."""
    used: dict[str, int] = {}
    for channel, images in raw_images.groupby("Metadata_Channel", sort=True):
        selected = [
            uri_to_path(row.uri)
            for row in images.itertuples(index=False)
            if (row.Metadata_Well, int(row.Metadata_Site)) in good_sites
        ]
        if not selected:
            raise MdpError(f"channel {channel!r}: no image passed QC, so no illumination function can be made")
        width = int(images["width"].iloc[0])
        function = illumination_function((read_plane(p) for p in selected), params.smoothing_sigma_fraction * width)
        np.save(out_dir / f"{channel}.npy", function)
        used[str(channel)] = len(selected)
    return used


def write_corrected_images(
    raw_images: pd.DataFrame, good_sites: set[tuple[str, int]], illumination_dir: Path, out_dir: Path,
    progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Correct every QC-passing site into one (C, Y, X) float32 OME-TIFF; returns the site index.
    `progress` is told how many sites are done after each one."""
    channels = sorted(raw_images["Metadata_Channel"].unique())
    functions = {c: np.load(illumination_dir / f"{c}.npy") for c in channels}
    pixel_size = raw_images["Metadata_PhysicalSizeX_um"].dropna()
    pixel_size_um = float(pixel_size.iloc[0]) if len(pixel_size) else None
    rows = []
    for (well, site), paths in site_images(raw_images).items():
        if (well, site) not in good_sites:
            continue
        stack = np.stack([apply_illumination(read_plane(paths[c]), functions[c]) for c in channels])
        file_name = f"{well}_s{site:02d}.ome.tiff"
        write_stack(out_dir / file_name, stack, channels, pixel_size_um)
        rows.append({"Metadata_Well": well, "Metadata_Site": site, "file_name": file_name, "channels": "|".join(channels)})
        if progress:
            progress(len(rows))
    return pd.DataFrame(rows, columns=["Metadata_Well", "Metadata_Site", "file_name", "channels"])
