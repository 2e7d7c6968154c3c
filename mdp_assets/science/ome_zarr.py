"""A plate's raw images and masks as an OME-Zarr HCS plate (OME-NGFF 0.4), the format the Image Data
Resource and the BioImage Archive take, written with the `ome-zarr` package.

The hierarchy is the NGFF high-content-screening one: `plate.ome.zarr/<row>/<column>/<field>`, a well
`B07` at `B/7`, its sites in site order as fields `0`, `1`, ... Each field is a multiscale image with axes
`c, y, x` (`t` and `z` added when the plate has several time points or planes), the plate's channel names
and colours in its `omero` metadata, and the physical pixel size from the inventory (micrometres) as the
scale of its coordinate transformation. The segmentation masks of a site are OME-Zarr labels under its field
(`labels/Nuclei`, `labels/Cells`: a cell carries its nucleus' label). Each field also records, under `mdp`,
its well, site and the source files with their sha256.

Memory: one field at a time (its planes, and its pyramid levels while they are written); the plate is never
held whole. Pixels are the source TIFFs' own (same dtype, lossless compression).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import zarr
from ome_zarr.format import FormatV04
from ome_zarr.scale import Methods
from ome_zarr.writer import write_image, write_labels, write_plate_metadata, write_well_metadata

from mdp_assets.errors import MdpError
from mdp_assets.plates.inventory import uri_to_path
from mdp_assets.plates.naming import row_number
from mdp_assets.plates.tiff_metadata import read_plane
from mdp_assets.science.image_store import read_stack

PLATE_STORE = "plate.ome.zarr"
NGFF_VERSION = "0.4"
SMALLEST_LEVEL = 256  # pyramid levels halve a field while its smaller side stays at least this
LARGEST_CHUNK = 2048  # a plane is one chunk up to this side, else tiles of 1024
# Channel colours for viewers (RGB hex), in the plate's channel order; the nuclei channel is blue.
COLORS = ["00FF00", "FF0000", "FF00FF", "FFFF00", "00FFFF", "FF8000", "FFFFFF"]
NUCLEI_COLOR = "0000FF"
_WELL = re.compile(r"^([A-Z]{1,2})(\d{1,2})$")


def writer_parameters() -> dict[str, str | int]:
    """What the written store depends on besides the images: provenance and the level's code version."""
    return {"format": f"OME-NGFF {NGFF_VERSION} HCS plate", "writer": f"ome-zarr {version('ome-zarr')}",
            "pyramid_smallest_side": SMALLEST_LEVEL, "downsampling": "resize (images), nearest (labels)"}


def well_path(well: str) -> tuple[str, str]:
    """'B07' -> ('B', '7'): the NGFF row and column names of a well."""
    match = _WELL.match(well)
    if not match:
        raise MdpError(f"{well!r} is not a well name like B07")
    return match.group(1), str(int(match.group(2)))


@dataclass(frozen=True)
class Plane:
    channel: str
    z: int
    t: int
    path: Path
    file_name: str
    sha256: str


@dataclass(frozen=True)
class FieldSource:
    """One site of the plate: its image planes and, where the segmentation saved them, its masks."""

    well: str
    site: int
    planes: tuple[Plane, ...]
    pixel_size_um: tuple[float, float] | None  # (y, x)
    masks: Path | None = None


@dataclass
class PlateSummary:
    wells: list[str] = field(default_factory=list)
    fields: int = 0
    fields_with_labels: int = 0
    labels: list[str] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)
    pixel_size_um: list[float] | None = None
    levels: int = 0
    image_bytes_read: int = 0


def _plane_numbers(table: pd.DataFrame, column: str) -> pd.Series | int:
    """A plane's z or t from the inventory (0 where the naming scheme has none)."""
    if column not in table.columns:
        return 0
    return pd.to_numeric(table[column], errors="coerce").fillna(0).astype(int)


def _pixel_size(images: pd.DataFrame) -> tuple[float, float] | None:
    """(y, x) in micrometres as the site's images state it, or None when they do not."""
    sizes = []
    for axis in ("Y", "X"):
        column = f"Metadata_PhysicalSize{axis}_um"
        known = pd.to_numeric(images[column], errors="coerce").dropna() if column in images.columns else ()
        if not len(known):
            return None
        sizes.append(float(known.iloc[0]))
    return sizes[0], sizes[1]


def plate_fields(raw_images: pd.DataFrame, masks: pd.DataFrame | None = None,
                 masks_root: Path | None = None) -> list[FieldSource]:
    """The plate's fields from its raw_images inventory (paths from each row's uri) and, optionally, the
    segmentation_masks partition's `sites.parquet` (a site's `file_name` under `masks_root`)."""
    table = raw_images.copy()
    table["plane_z"] = _plane_numbers(table, "Metadata_Z")
    table["plane_t"] = _plane_numbers(table, "Metadata_T")
    mask_files: dict[tuple[str, int], Path] = {}
    if masks is not None and masks_root is not None:
        for row in masks.itertuples(index=False):
            if isinstance(row.file_name, str) and row.file_name:
                mask_files[(row.Metadata_Well, int(row.Metadata_Site))] = masks_root / row.file_name
    fields = []
    for (well, site), images in table.groupby(["Metadata_Well", "Metadata_Site"], sort=True):
        planes = tuple(Plane(r.Metadata_Channel, int(r.plane_z), int(r.plane_t), uri_to_path(r.uri),
                             r.file_name, r.sha256) for r in images.itertuples(index=False))
        site = int(site)
        fields.append(FieldSource(well, site, planes, _pixel_size(images), mask_files.get((well, site))))
    return fields


def _axes(times: int, planes: int) -> list[str]:
    return [*(["t"] if times > 1 else []), "c", *(["z"] if planes > 1 else []), "y", "x"]


def _scale_factors(height: int, width: int) -> list[int]:
    factors, factor = [], 2
    while min(height, width) // factor >= SMALLEST_LEVEL:
        factors.append(factor)
        factor *= 2
    return factors


def _chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    spatial = tuple(side if side <= LARGEST_CHUNK else 1024 for side in shape[-2:])
    return (1,) * (len(shape) - 2) + spatial


def _read_field(source: FieldSource, channels: list[str], times: list[int], zs: list[int]) -> np.ndarray:
    """(t, c, z, y, x) of one field, every plane read from its own TIFF."""
    stack: np.ndarray | None = None
    for plane in source.planes:
        pixels = read_plane(plane.path)
        if stack is None:
            stack = np.zeros((len(times), len(channels), len(zs), *pixels.shape), dtype=pixels.dtype)
        if pixels.shape != stack.shape[-2:]:
            raise MdpError(f"well {source.well} site {source.site}: {plane.file_name} is {pixels.shape[::-1]} "
                           f"pixels, the field's other images {stack.shape[:-3:-1]}", path=plane.path)
        stack[times.index(plane.t), channels.index(plane.channel), zs.index(plane.z)] = pixels
    assert stack is not None
    return stack


def _omero(stack: np.ndarray, channels: list[str], nuclei_channel: str | None) -> dict:
    limits = np.iinfo(stack.dtype) if np.issubdtype(stack.dtype, np.integer) else None
    entries, palette = [], iter(COLORS * (len(channels) // len(COLORS) + 1))
    for index, name in enumerate(channels):
        values = stack[:, index]
        low, high = (float(v) for v in np.percentile(values, [0.1, 99.9]))  # saturated pixels do not stretch it
        entries.append({
            "label": name, "active": True, "coefficient": 1.0, "family": "linear", "inverted": False,
            "color": NUCLEI_COLOR if name == nuclei_channel else next(palette),
            "window": {"min": float(limits.min) if limits else low,
                       "max": float(limits.max) if limits else high,
                       "start": low, "end": high if high > low else low + 1},
        })
    return {"channels": entries, "rdefs": {"model": "color"}}


def _write_field(group: zarr.Group, source: FieldSource, stack: np.ndarray, axes: list[str],
                 channels: list[str], nuclei_channel: str | None, fmt: FormatV04) -> list[str]:
    """One field's image and its labels; returns the labels' names."""
    squeeze = tuple(i for i, name in enumerate("tcz") if name not in axes)
    image = stack.squeeze(axis=squeeze) if squeeze else stack
    height, width = image.shape[-2:]
    factors = _scale_factors(height, width)
    scale = {"y": source.pixel_size_um[0], "x": source.pixel_size_um[1]} if source.pixel_size_um else None
    units = {"y": "micrometer", "x": "micrometer"} if source.pixel_size_um else None
    write_image(image, group, scale_factors=factors, method=Methods.RESIZE, fmt=fmt, axes=axes, scale=scale,
                axes_units=units, storage_options={"chunks": _chunks(image.shape)},
                name=f"{source.well} site {source.site}",
                metadata={"omero": _omero(stack, channels, nuclei_channel)})
    group.attrs["mdp"] = {"Metadata_Well": source.well, "Metadata_Site": source.site, "files": [
        {"channel": p.channel, "z": p.z, "t": p.t, "file_name": p.file_name, "sha256": p.sha256}
        for p in sorted(source.planes, key=lambda p: (p.t, channels.index(p.channel), p.z))]}
    if source.masks is None:
        return []
    masks, names = read_stack(source.masks)
    if masks.shape[-2:] != (height, width):
        raise MdpError(f"well {source.well} site {source.site}: masks are {masks.shape[:-3:-1]} pixels, the "
                       f"images {(width, height)}", path=source.masks)
    label_axes = [a for a in axes if a != "c"]
    label_shape = tuple(1 for _ in label_axes[:-2]) + (height, width)  # masks are of the first plane
    for index, name in enumerate(names or [f"labels{i}" for i in range(len(masks))]):
        write_labels(masks[index].reshape(label_shape), group, name=name, scaler=None, scale_factors=factors,
                     method=Methods.NEAREST, fmt=fmt, axes=label_axes, scale=scale, axes_units=units,
                     storage_options={"chunks": _chunks(label_shape)},
                     label_metadata={"source": {"image": "../../"}})
    return list(names)


def write_hcs_plate(target: Path, barcode: str, fields: list[FieldSource], nuclei_channel: str | None = None,
                    progress: Callable[[int], None] | None = None) -> PlateSummary:
    """Write `fields` as one OME-Zarr HCS plate at `target`, one field at a time."""
    if not fields:
        raise MdpError(f"plate {barcode}: no images to write as OME-Zarr")
    channels = sorted({p.channel for f in fields for p in f.planes})
    times = sorted({p.t for f in fields for p in f.planes})
    zs = sorted({p.z for f in fields for p in f.planes})
    axes = _axes(len(times), len(zs))
    fmt = FormatV04()
    root = zarr.open_group(str(target), mode="w", zarr_format=fmt.zarr_format)
    summary = PlateSummary(channels=channels)
    by_well: dict[str, list[FieldSource]] = {}
    for source in fields:
        by_well.setdefault(source.well, []).append(source)
    with dask.config.set(scheduler="synchronous"):  # one field, one thread: memory stays one field's
        for well, sources in sorted(by_well.items()):
            row, column = well_path(well)
            well_group = root.require_group(row).require_group(column)
            for index, source in enumerate(sorted(sources, key=lambda s: s.site)):
                stack = _read_field(source, channels, times, zs)
                labels = _write_field(well_group.require_group(str(index)), source, stack, axes, channels,
                                      nuclei_channel, fmt)
                summary.fields += 1
                summary.fields_with_labels += bool(labels)
                summary.labels = sorted(set(summary.labels) | set(labels))
                summary.image_bytes_read += sum(p.path.stat().st_size for p in source.planes)
                summary.levels = max(summary.levels, 1 + len(_scale_factors(*stack.shape[-2:])))
                if summary.pixel_size_um is None and source.pixel_size_um:
                    summary.pixel_size_um = list(source.pixel_size_um)
                del stack
                if progress:
                    progress(summary.fields)
            write_well_metadata(well_group, [{"path": str(i)} for i in range(len(sources))], fmt=fmt)
            summary.wells.append(well)
    rows = sorted({well_path(w)[0] for w in by_well}, key=row_number)
    columns = sorted({well_path(w)[1] for w in by_well}, key=int)
    write_plate_metadata(root, rows, columns, [f"{'/'.join(well_path(w))}" for w in summary.wells], fmt=fmt,
                         field_count=max(len(s) for s in by_well.values()), name=barcode)
    return summary
