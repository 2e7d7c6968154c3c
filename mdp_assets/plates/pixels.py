"""Pixel checks at intake: every image of a plate must be one the levels can read as its channel's.

A float image of raw counts among 16-bit images gives intensities 65,000 times off that pass QC; an RGB image,
NaN pixels or one image of another size crash later steps with a numpy error that names no file. So, before a
plate is registered, every image's header (tifffile pages: shape, dtype, bits per sample, samples per pixel;
no pixels) must agree with the rest of its channel, every plane must have the plate's one size, and RGB or
multi-sample images are refused. Float images are refused unless the manifest says they hold intensities
(`float_images: intensities`); then their pixels are read (only theirs) and must be finite and within [0, 1].
Every problem names the file.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from mdp_assets.errors import MdpError
from mdp_assets.parallel import map_sites

MAX_LISTED = 20


@dataclass(frozen=True)
class PixelFormat:
    """What a TIFF header says of its first plane."""

    height: int
    width: int
    dtype: str
    bits_per_sample: int
    samples_per_pixel: int
    photometric: str

    def describe(self) -> str:
        samples = f", {self.samples_per_pixel} samples per pixel" if self.samples_per_pixel != 1 else ""
        return f"{self.height}x{self.width} {self.dtype} ({self.bits_per_sample}-bit{samples})"


def pixel_format(path: Path) -> PixelFormat:
    """The first page's pixel format, from its header alone."""
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            shape = page.shape
            samples = int(page.samplesperpixel)
            # Samples last (contiguous) or first (separate planes); grayscale: the last two axes.
            planar = shape[-2:] if samples == 1 else shape[1:3] if int(page.planarconfig) == 2 else shape[:2]
            return PixelFormat(int(planar[0]), int(planar[1]), str(np.dtype(page.dtype)), int(page.bitspersample),
                               samples, getattr(page.photometric, "name", str(page.photometric)))
    except FileNotFoundError:
        raise MdpError("image file not found", path=path) from None
    except Exception as exc:  # tifffile raises many types for damaged files
        raise MdpError(f"unreadable TIFF: {type(exc).__name__}: {exc}", path=path) from exc


def float_problem(path: Path) -> str | None:
    """For a float image declared to hold intensities: NaN or infinite pixels, or values outside [0, 1]."""
    pixels = tifffile.imread(path, key=0)
    finite = np.isfinite(pixels)
    if not finite.all():
        return f"{int((~finite).sum())} NaN or infinite pixels"
    low, high = float(pixels.min()), float(pixels.max())
    if low < 0 or high > 1:
        return (f"float pixels from {low:g} to {high:g}: not intensities in [0, 1] (raw counts stored as float?)")
    return None


def _listed(items: list[str]) -> str:
    return "; ".join(items[:MAX_LISTED]) + (f"; and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def pixel_problems(images: dict[str, tuple[str, Path]], float_images: str = "refuse", workers: int = 0) -> list[str]:
    """Problems of a plate's images ({file name: (channel, path)}), each naming its file; headers (and float
    images' pixels) are read in `workers` processes (0: one per core)."""
    names = sorted(images)
    found = map_sites(_format_or_error, [images[n][1] for n in names], workers)
    problems: list[str] = []
    formats: dict[str, PixelFormat] = {}
    for name, result in zip(names, found):
        if isinstance(result, str):
            problems.append(f"{name}: {result}")
            continue
        if result.samples_per_pixel != 1 or result.photometric in ("RGB", "YCBCR", "PALETTE"):
            problems.append(f"{name}: an {result.photometric} image with {result.samples_per_pixel} samples per "
                            "pixel; each channel must be its own grayscale image")
            continue
        if np.dtype(result.dtype).kind not in "uif":
            problems.append(f"{name}: pixel type {result.dtype} is not a grayscale intensity")
            continue
        formats[name] = result
    by_channel: dict[str, list[str]] = defaultdict(list)
    for name in formats:
        by_channel[images[name][0]].append(name)
    for channel, members in sorted(by_channel.items()):
        usual = Counter((formats[n].dtype, formats[n].bits_per_sample) for n in members).most_common(1)[0][0]
        for name in members:
            if (formats[name].dtype, formats[name].bits_per_sample) != usual:
                problems.append(f"{name}: {formats[name].describe()}, while channel {channel}'s other images are "
                                f"{usual[0]} ({usual[1]}-bit): one channel, one pixel type and bit depth")
    if formats:
        size = Counter((f.height, f.width) for f in formats.values()).most_common(1)[0][0]
        for name, found_format in formats.items():
            if (found_format.height, found_format.width) != size:
                problems.append(f"{name}: {found_format.height}x{found_format.width} pixels, while the plate's images "
                                f"are {size[0]}x{size[1]}: every image of a plate must have the same size")
    floats = [n for n, f in formats.items() if np.dtype(f.dtype).kind == "f"]
    if floats and float_images == "refuse":
        problems.extend(f"{n}: a {formats[n].dtype} image; float images are refused unless the manifest says they "
                        "hold intensities in [0, 1] (float_images: intensities), as raw counts stored as float would "
                        "be read thousands of times too bright" for n in sorted(floats))
    elif floats:
        for name, problem in zip(sorted(floats), map_sites(_float_or_error, [images[n][1] for n in sorted(floats)],
                                                           workers)):
            if problem:
                problems.append(f"{name}: {problem}")
    return sorted(problems)


def _format_or_error(path: Path) -> PixelFormat | str:
    try:
        return pixel_format(path)
    except MdpError as exc:
        return str(exc).split(": ", 1)[-1]


def _float_or_error(path: Path) -> str | None:
    try:
        return float_problem(path)
    except Exception as exc:  # damaged pixel data
        return f"cannot decode image pixels: {type(exc).__name__}: {exc}"


def check_pixels(plate: str, images: dict[str, tuple[str, Path]], float_images: str, where: Path) -> None:
    problems = pixel_problems(images, float_images)
    if problems:
        raise MdpError(f"plate {plate} cannot be registered: {len(problems)} image(s) the levels cannot read as their "
                       f"channel's: {_listed(problems)}", path=where)
