"""Image quality as CellProfiler's MeasureImageQuality defines it.

- PowerLogLogSlope (blur): the slope of the log-log radial power spectrum, computed as centrosome's
  `radial_power_spectrum.rps` and MeasureImageQuality do (intensity-invariant, radii 2 .. min(h, w)/8).
  In-focus images have a shallower (less negative) slope than blurred ones.
- PercentMaximal (saturation): percent of pixels at the maximum value of the image itself.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage

from mdp_assets.plates.inventory import uri_to_path
from mdp_assets.plates.tiff_metadata import read_plane


def power_log_log_slope(image: np.ndarray) -> float:
    pixels = np.asarray(image, dtype=np.float64)
    if pixels.ndim != 2:
        raise ValueError(f"power_log_log_slope needs a 2-D image, got shape {pixels.shape}")
    height, width = pixels.shape
    radii2 = (np.arange(height).reshape(height, 1) ** 2) + (np.arange(width) ** 2)
    radii2 = np.minimum(radii2, np.flipud(radii2))
    radii2 = np.minimum(radii2, np.fliplr(radii2))
    max_width = min(height, width) / 8.0  # truncate early to avoid edge effects
    if np.ptp(pixels) > 0:
        scale = np.median(np.abs(pixels - pixels.mean()))
        if scale > 0:
            pixels = pixels / scale  # intensity invariant
    magnitude = np.abs(np.fft.fft2(pixels - pixels.mean()))
    power = magnitude**2
    radii = np.floor(np.sqrt(radii2)).astype(int) + 1
    labels = np.arange(2, np.floor(max_width)).astype(int)  # skip the DC component
    if labels.size == 0:
        return 0.0
    magnitude_sum = np.asarray(ndimage.sum(magnitude, radii, labels))
    power_sum = np.asarray(ndimage.sum(power, radii, labels))
    if magnitude_sum.sum() <= 0 or np.unique(image).size <= 1:
        return 0.0
    valid = magnitude_sum > 0
    radii_valid, power_valid = labels[valid].astype(float), power_sum[valid]
    if radii_valid.size <= 1:
        return 0.0
    log_power = np.log(power_valid)
    finite = np.isfinite(log_power)
    design = np.column_stack([np.log(radii_valid)[finite], np.ones(finite.sum())])
    slope = np.linalg.lstsq(design, log_power[finite], rcond=None)[0][0]
    return float(slope)


def percent_maximal(image: np.ndarray) -> float:
    pixels = np.asarray(image)
    return float(100.0 * np.count_nonzero(pixels == pixels.max()) / pixels.size)


@dataclass(frozen=True)
class QcThresholds:
    """An image passes when it is neither blurred nor saturated beyond these limits."""

    min_power_log_log_slope: float = -2.5
    max_percent_maximal: float = 1.0

    def blurred(self, slope: float) -> bool:
        return slope < self.min_power_log_log_slope

    def saturated(self, saturation: float) -> bool:
        return saturation > self.max_percent_maximal

    def passes(self, slope: float, saturation: float) -> bool:
        return not self.blurred(slope) and not self.saturated(saturation)




def measure_plate_quality(raw_images: pd.DataFrame, thresholds: QcThresholds, max_workers: int = 2) -> pd.DataFrame:
    """One row per image: its blur and saturation measurements and whether it passes."""

    def measure(uri: str) -> tuple[float, float]:
        pixels = read_plane(uri_to_path(uri))
        return power_log_log_slope(pixels), percent_maximal(pixels)

    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        measured = list(pool.map(measure, raw_images["uri"]))
    keys = ["Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_Channel", "file_name"]
    table = raw_images[keys].copy()
    table["ImageQuality_PowerLogLogSlope"] = [m[0] for m in measured]
    table["ImageQuality_PercentMaximal"] = [m[1] for m in measured]
    table["qc_blurred"] = [thresholds.blurred(s) for s, _ in measured]
    table["qc_saturated"] = [thresholds.saturated(p) for _, p in measured]
    table["qc_pass"] = ~(table["qc_blurred"] | table["qc_saturated"])
    return table.reset_index(drop=True)


def empty_or_failed_wells(all_wells: set[str], sites: pd.DataFrame) -> dict[str, str]:
    """Wells with no usable site (every site failed QC) or no nucleus found: well -> why."""
    problems = {}
    usable = set(sites["Metadata_Well"]) if len(sites) else set()
    for well in sorted(all_wells - usable):
        problems[well] = "every site failed image QC"
    if len(sites):
        nuclei = sites.groupby("Metadata_Well")["Count_Nuclei"].sum()
        for well, count in nuclei.items():
            if count == 0:
                problems[well] = "no nuclei found"
    return dict(sorted(problems.items()))


def passing_sites(image_qc: pd.DataFrame) -> set[tuple[str, int]]:
    """Sites whose every channel passed QC; only these go on to segmentation and features."""
    by_site = image_qc.groupby(["Metadata_Well", "Metadata_Site"])["qc_pass"].all()
    return {(well, int(site)) for (well, site), ok in by_site.items() if ok}
