"""Image quality as CellProfiler's MeasureImageQuality defines it.

- PowerLogLogSlope (blur): the slope of the log-log radial power spectrum, computed as centrosome's
  `radial_power_spectrum.rps` and MeasureImageQuality do (intensity-invariant, radii 2 .. min(h, w)/8).
  In-focus images have a shallower (less negative) slope than blurred ones.
- PercentMaximal (saturation): percent of pixels at the maximum value of the image itself.

Whether an image passes is judged by `QcThresholds`: relative to the plate by default, absolute on request.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage

from mdp_assets.parallel import map_sites
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


# Robust z-scores need a few images per channel to mean anything; below this the relative rules abstain.
MIN_IMAGES_FOR_RELATIVE = 5
_MAD_TO_SD = 1.4826


@dataclass(frozen=True)
class QcThresholds:
    """When an image fails QC. Relative rules judge an image against the plate's other images of the same
    channel (robust z-score: distance from the channel's median in scaled MADs), as the field's QC notebooks
    do, so an instrument whose sharp images sit at a slope of -2.8 is not failed wholesale; absolute limits
    are optional and apply on top. None turns a rule off."""

    focus_robust_z: float | None = 3.0  # blurred: slope more than this many MADs below the channel's median
    focus_min_drop: float = 0.5  # ... and at least this far below it (a tight plate's MAD is tiny; phenotypes move
    # the slope by up to ~0.4 on sharp images, real blur by more than 0.5)
    min_power_log_log_slope: float | None = None  # blurred: slope below this, whatever the plate
    saturation_robust_z: float | None = None  # saturated: percent maximal this many MADs above the median
    saturation_min_rise: float = 0.5  # ... and at least this many percentage points above it
    max_percent_maximal: float | None = 1.0  # saturated: more than this percent of pixels at the maximum

    def blurred(self, slope: float, robust_z: float = 0.0, from_median: float = 0.0) -> bool:
        relative = (self.focus_robust_z is not None and robust_z < -self.focus_robust_z
                    and from_median <= -self.focus_min_drop)
        return relative or (self.min_power_log_log_slope is not None and slope < self.min_power_log_log_slope)

    def saturated(self, saturation: float, robust_z: float = 0.0, from_median: float = 0.0) -> bool:
        relative = (self.saturation_robust_z is not None and robust_z > self.saturation_robust_z
                    and from_median >= self.saturation_min_rise)
        return relative or (self.max_percent_maximal is not None and saturation > self.max_percent_maximal)

    def passes(self, slope: float, saturation: float) -> bool:
        """An image judged by the absolute limits alone (a relative judgment needs the plate)."""
        return not self.blurred(slope) and not self.saturated(saturation)


def robust_z(values: pd.Series) -> pd.Series:
    """(x - median) / (1.4826 MAD); 0 everywhere when there are too few values to judge, and a tiny floor on
    the scale so identical images do not divide by zero."""
    if values.notna().sum() < MIN_IMAGES_FOR_RELATIVE:
        return pd.Series(0.0, index=values.index)
    median = values.median()
    scale = _MAD_TO_SD * (values - median).abs().median()
    scale = max(scale, 1e-9 * max(abs(median), 1.0))
    return (values - median) / scale


def measure_image(uri: str) -> tuple[float, float]:
    """(PowerLogLogSlope, PercentMaximal) of one image file."""
    pixels = read_plane(uri_to_path(uri))
    return power_log_log_slope(pixels), percent_maximal(pixels)


def measure_plate_quality(raw_images: pd.DataFrame, thresholds: QcThresholds, workers: int = 0) -> pd.DataFrame:
    """One row per image: blur and saturation measurements (in `workers` processes, 0: one per core), their
    robust z-scores within the plate's channel, the flags, and whether the image passes."""
    measured = map_sites(measure_image, list(raw_images["uri"]), workers)
    keys = ["Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_Channel", "file_name"]
    table = raw_images[keys].copy()
    table["ImageQuality_PowerLogLogSlope"] = [m[0] for m in measured]
    table["ImageQuality_PercentMaximal"] = [m[1] for m in measured]
    return judge(table, thresholds)


def judge(table: pd.DataFrame, thresholds: QcThresholds) -> pd.DataFrame:
    """Flag each image of a measured plate by the thresholds (relative rules within each channel)."""
    table = table.copy()
    by_channel = table.groupby("Metadata_Channel", sort=False)
    table["qc_focus_robust_z"] = by_channel["ImageQuality_PowerLogLogSlope"].transform(robust_z)
    table["qc_saturation_robust_z"] = by_channel["ImageQuality_PercentMaximal"].transform(robust_z)
    slope, saturation = table["ImageQuality_PowerLogLogSlope"], table["ImageQuality_PercentMaximal"]
    slope_from_median = slope - by_channel["ImageQuality_PowerLogLogSlope"].transform("median")
    saturation_from_median = saturation - by_channel["ImageQuality_PercentMaximal"].transform("median")
    table["qc_blurred"] = [thresholds.blurred(*v) for v in zip(slope, table["qc_focus_robust_z"], slope_from_median)]
    table["qc_saturated"] = [thresholds.saturated(*v) for v in
                             zip(saturation, table["qc_saturation_robust_z"], saturation_from_median)]
    table["qc_pass"] = ~(table["qc_blurred"] | table["qc_saturated"])
    return table.reset_index(drop=True)


def failing_sites(image_qc: pd.DataFrame) -> list[str]:
    """'<well> site <n>' for every site with a channel that failed QC, in plate order."""
    by_site = image_qc.groupby(["Metadata_Well", "Metadata_Site"])["qc_pass"].all()
    return [f"{well} site {int(site)}" for (well, site), ok in by_site.items() if not ok]


def too_many_failing(image_qc: pd.DataFrame, max_failing_site_fraction: float) -> str | None:
    """Why a plate stops at QC (more than the allowed share of its sites fail), or None: it goes on without
    its failing sites."""
    failing = failing_sites(image_qc)
    sites = image_qc[["Metadata_Well", "Metadata_Site"]].drop_duplicates().shape[0]
    if not sites or len(failing) / sites <= max_failing_site_fraction:
        return None
    return (f"{len(failing)} of {sites} sites fail QC, more than the limit {max_failing_site_fraction:.0%}: the plate "
            f"stops here (failing: {', '.join(failing[:20])}{' ...' if len(failing) > 20 else ''}); change the qc "
            "settings in mdp.yaml or the plate's manifest if these images are good, then re-materialize image_qc")


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
