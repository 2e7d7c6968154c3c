"""Illumination correction the way CellProfiler's CorrectIlluminationCalculate / Apply do it.

Calculate ("All" images, "Regular" intensity): average every image of one channel across the plate,
smooth the average (Gaussian filter, one of CellProfiler's smoothing methods), then rescale it so its
robust minimum (2nd percentile of positive pixels) is 1 and nothing is below 1. Apply: divide.
Pixel values follow CellProfiler's convention: integer images are scaled to [0, 1] by their dtype's range.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from mdp_assets.errors import MdpError
from mdp_assets.parallel import imap_sites
from mdp_assets.science.image_store import write_stack
from mdp_assets.plates.inventory import site_images, uri_to_path
from mdp_assets.plates.tiff_metadata import read_plane

ROBUST_FACTOR = 0.02  # CellProfiler's robust minimum: the 2nd percentile of positive pixels


def to_unit_range(image: np.ndarray) -> np.ndarray:
    """CellProfiler's image scaling: integers divided by their dtype maximum, floats unchanged."""
    if np.issubdtype(image.dtype, np.integer):
        return image.astype(np.float32) / np.float32(np.iinfo(image.dtype).max)
    return image.astype(np.float32, copy=False)


def robust_rescale(function: np.ndarray) -> np.ndarray:
    positive = np.sort(function[function > 0], axis=None)
    if positive.size == 0:
        return np.ones_like(function)
    robust_minimum = positive[int(positive.size * ROBUST_FACTOR)]
    return np.maximum(function, robust_minimum) / robust_minimum


def flat_field(average: np.ndarray, smoothing_sigma: float) -> np.ndarray:
    """The flat-field function of one channel from its average image: smooth, rescale (all values >= 1)."""
    smoothed = ndimage.gaussian_filter(average, sigma=smoothing_sigma, mode="nearest")
    return robust_rescale(smoothed).astype(np.float32)


def apply_illumination(image: np.ndarray, function: np.ndarray) -> np.ndarray:
    if image.shape != function.shape:
        raise ValueError(f"image shape {image.shape} does not match illumination function {function.shape}")
    return (to_unit_range(image) / function).astype(np.float32)


@dataclass(frozen=True)
class IlluminationParameters:
    smoothing_sigma_fraction: float = 0.05  # Gaussian sigma as a fraction of the image width


SUM_CHUNK = 16  # images one process sums at a time: fixed, so a function does not depend on the worker count


def sum_images(paths: list[Path]) -> tuple[np.ndarray, int, int]:
    """(sum, count, scale) of the images at `paths`: integer images summed exactly in int64 with scale their
    dtype maximum; float images (intensities already) in float64 with scale 1."""
    total: np.ndarray | None = None
    scale = 1
    for path in paths:
        image = read_plane(path)
        if total is None:
            integer = np.issubdtype(image.dtype, np.integer)
            scale = int(np.iinfo(image.dtype).max) if integer else 1
            total = np.zeros(image.shape, dtype=np.int64 if integer else np.float64)
        elif image.shape != total.shape:
            raise MdpError(f"image shape {image.shape} differs from the channel's {total.shape}", path=path)
        total += image if total.dtype == np.int64 else image.astype(np.float32).astype(np.float64)
    if total is None:
        raise ValueError("no images to sum")
    return total, len(paths), scale


def _chunks(items: list, size: int) -> list[list]:
    return [items[start:start + size] for start in range(0, len(items), size)]


def write_illumination_functions(
    raw_images: pd.DataFrame, good_sites: set[tuple[str, int]], out_dir: Path, params: IlluminationParameters,
    workers: int = 1,
) -> dict[str, int]:
    """One `<channel>.npy` per channel from the plate's QC-passing images; returns images used per channel.
    The images are summed in chunks of SUM_CHUNK in `workers` processes (0: one per core) and the chunks added
    in plate order, so the functions are the same for any number of processes; at most a few chunk sums are
    held at once, never the plate's images."""
    selected: dict[str, list[Path]] = {}
    widths: dict[str, int] = {}
    for channel, images in raw_images.groupby("Metadata_Channel", sort=True):
        selected[str(channel)] = [uri_to_path(row.uri) for row in images.itertuples(index=False)
                                  if (row.Metadata_Well, int(row.Metadata_Site)) in good_sites]
        if not selected[str(channel)]:
            raise MdpError(f"channel {channel!r}: no image passed QC, so no illumination function can be made")
        widths[str(channel)] = int(images["width"].iloc[0])
    tasks = [(channel, chunk) for channel, paths in selected.items() for chunk in _chunks(paths, SUM_CHUNK)]
    totals: dict[str, tuple[np.ndarray, int, int]] = {}
    for (channel, _), (total, count, scale) in zip(tasks, imap_sites(sum_images, [c for _, c in tasks], workers)):
        if channel in totals:
            before, counted, _ = totals[channel]
            total, count = before + total, counted + count
        totals[channel] = (total, count, scale)
    used: dict[str, int] = {}
    for channel, (total, count, scale) in totals.items():
        average = total.astype(np.float64) / (float(scale) * count)
        np.save(out_dir / f"{channel}.npy", flat_field(average, params.smoothing_sigma_fraction * widths[channel]))
        used[channel] = count
    return used


@dataclass(frozen=True)
class CorrectionJob:
    """One site to correct: its raw planes in channel order and where its stack goes."""

    well: str
    site: int
    paths: tuple[Path, ...]
    out_path: Path


def correct_site(job: CorrectionJob, functions: dict[str, np.ndarray], channels: list[str],
                 pixel_size_um: float | None) -> str:
    """Correct one site (CorrectIlluminationApply, divide) and store it in its raw images' bit depth."""
    planes = [read_plane(path) for path in job.paths]
    stack = np.stack([apply_illumination(plane, functions[c]) for plane, c in zip(planes, channels)])
    write_stack(job.out_path, stack, channels, pixel_size_um, bit_depth=planes[0].dtype)
    return job.out_path.name


def write_corrected_images(
    raw_images: pd.DataFrame, good_sites: set[tuple[str, int]], illumination_dir: Path, out_dir: Path,
    progress: Callable[[int], None] | None = None, workers: int = 1,
) -> pd.DataFrame:
    """Correct every QC-passing site into one (C, Y, X) OME-TIFF in the raw images' bit depth (uint16 for
    uint16 images: round(intensity x 65535), never clipped since a function is >= 1; float32 for float raw
    images), in `workers` processes (0: one per core); returns the site index in plate order. `progress` is
    told how many sites are done after each one."""
    channels = sorted(raw_images["Metadata_Channel"].unique())
    functions = {c: np.load(illumination_dir / f"{c}.npy") for c in channels}
    pixel_size = raw_images["Metadata_PhysicalSizeX_um"].dropna()
    pixel_size_um = float(pixel_size.iloc[0]) if len(pixel_size) else None
    jobs = [CorrectionJob(well, site, tuple(paths[c] for c in channels), out_dir / f"{well}_s{site:02d}.ome.tiff")
            for (well, site), paths in site_images(raw_images).items() if (well, site) in good_sites]
    rows = []
    work = partial(correct_site, functions=functions, channels=channels, pixel_size_um=pixel_size_um)
    for job, file_name in zip(jobs, imap_sites(work, jobs, workers)):
        rows.append({"Metadata_Well": job.well, "Metadata_Site": job.site, "file_name": file_name,
                     "channels": "|".join(channels)})
        if progress:
            progress(len(rows))
    return pd.DataFrame(rows, columns=["Metadata_Well", "Metadata_Site", "file_name", "channels"])
