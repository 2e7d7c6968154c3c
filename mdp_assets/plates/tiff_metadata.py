"""Acquisition metadata from TIFF files: baseline tags, OME-XML and ImageJ metadata, read with tifffile.

The playbook's one hard rule about metadata is that it travels with the data through every level, so
this is where it enters: channel names, physical pixel size, objective, exposure, acquisition time,
dimension order (OME-XML, ImageJ, the Phenix's per-image Harmony XML, MetaMorph's MetaSeries XML). Truncated or unreadable files are errors naming the file, never silently skipped.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from mdp_assets.errors import MdpError
from mdp_assets.plates.harmony import HARMONY_IMAGE_XML_TAG, parse_image_xml
from mdp_assets.plates.imagexpress import metaseries_acquisition

_LENGTH_TO_MICRONS = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}
_TIME_TO_MS = {"s": 1e3, "ms": 1.0, "µs": 1e-3, "us": 1e-3, "min": 6e4}


@dataclass
class TiffInfo:
    """What one TIFF file holds, and how it was acquired (None where the file does not say)."""

    width: int
    height: int
    dtype: str
    axes: str
    shape: tuple[int, ...]
    is_ome: bool
    dimension_order: str | None = None
    channel_names: list[str] = field(default_factory=list)
    physical_size_x_um: float | None = None
    physical_size_y_um: float | None = None
    objective: str | None = None
    objective_magnification: float | None = None
    objective_na: float | None = None
    exposure_ms: list[float | None] = field(default_factory=list)
    acquisition_time: str | None = None
    software: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in element if _local(child.tag) == name]


def _first(element: ET.Element, name: str) -> ET.Element | None:
    found = _children(element, name)
    return found[0] if found else None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def parse_ome_xml(xml: str, info: TiffInfo, image_index: int = 0) -> None:
    """Fill `info` from an OME-XML document (any schema year: namespaces are ignored)."""
    root = ET.fromstring(xml)
    images = _children(root, "Image")
    if not images:
        return
    image = images[min(image_index, len(images) - 1)]
    pixels = _first(image, "Pixels")
    if pixels is not None:
        info.dimension_order = pixels.get("DimensionOrder")
        for axis in ("X", "Y"):
            size = _float(pixels.get(f"PhysicalSize{axis}"))
            unit = pixels.get(f"PhysicalSize{axis}Unit", "µm")
            if size is not None and unit in _LENGTH_TO_MICRONS:
                setattr(info, f"physical_size_{axis.lower()}_um", size * _LENGTH_TO_MICRONS[unit])
        channels = _children(pixels, "Channel")
        info.channel_names = [c.get("Name") or c.get("Fluor") or c.get("ID", f"Channel:{i}") for i, c in enumerate(channels)]
        exposures: dict[int, float] = {}
        for plane in _children(pixels, "Plane"):
            exposure = _float(plane.get("ExposureTime"))
            unit = plane.get("ExposureTimeUnit", "s")
            the_c = int(plane.get("TheC", "0"))
            if exposure is not None and unit in _TIME_TO_MS and the_c not in exposures:
                exposures[the_c] = exposure * _TIME_TO_MS[unit]
        if exposures:
            info.exposure_ms = [exposures.get(c) for c in range(max(len(channels), max(exposures) + 1))]
    acquired = _first(image, "AcquisitionDate")
    if acquired is not None and acquired.text:
        info.acquisition_time = acquired.text.strip()
    settings = _first(image, "ObjectiveSettings")
    objective_id = settings.get("ID") if settings is not None else None
    for instrument in _children(root, "Instrument"):
        for objective in _children(instrument, "Objective"):
            if objective_id is None or objective.get("ID") == objective_id:
                info.objective = objective.get("Model") or objective.get("ID")
                info.objective_magnification = _float(objective.get("NominalMagnification"))
                info.objective_na = _float(objective.get("LensNA"))
                break


def _check_not_truncated(path: Path, tif: tifffile.TiffFile) -> None:
    size = path.stat().st_size
    for page in tif.pages:
        offsets = getattr(page, "dataoffsets", ()) or ()
        counts = getattr(page, "databytecounts", ()) or ()
        for offset, count in zip(offsets, counts):
            if offset + count > size:
                raise MdpError(
                    f"truncated TIFF: image data ends at byte {offset + count} but the file has {size} bytes",
                    path=path,
                )


def _baseline_tags(page: tifffile.TiffPage, info: TiffInfo) -> None:
    """Software and DateTime only. The resolution tags are not the sample's pixel size: instruments write
    display defaults or the camera's own pixel there (a Phenix writes 155 pixels per cm, 64.5 µm), so a
    pixel size comes only from OME-XML, ImageJ's micron calibration, the instrument's XML or the manifest."""
    tags = page.tags
    if "Software" in tags:
        info.software = str(tags["Software"].value)
    if "DateTime" in tags and not info.acquisition_time:
        raw = str(tags["DateTime"].value).strip()
        try:
            info.acquisition_time = datetime.strptime(raw, "%Y:%m:%d %H:%M:%S").isoformat()
        except ValueError:
            info.acquisition_time = raw


def _harmony_tag(page: tifffile.TiffPage, info: TiffInfo) -> None:
    """The Phenix's per-image XML (TIFF tag 65500): what the image says of its own acquisition."""
    if HARMONY_IMAGE_XML_TAG not in page.tags:
        return
    found = parse_image_xml(page.tags[HARMONY_IMAGE_XML_TAG].value)
    if "channel_name" in found and not info.channel_names:
        info.channel_names = [str(found["channel_name"])]
    if "physical_size_um" in found and info.physical_size_x_um is None:
        info.physical_size_x_um = info.physical_size_y_um = float(found["physical_size_um"])
    if "exposure_ms" in found and not info.exposure_ms:
        info.exposure_ms = [float(found["exposure_ms"])]
    for key in ("objective", "objective_magnification", "objective_na", "acquisition_time"):
        if key in found and getattr(info, key) is None:
            setattr(info, key, found[key])


def _metaseries(tif: tifffile.TiffFile, info: TiffInfo) -> None:
    """MetaMorph's per-image XML (ImageXpress, MetaXpress): what the image says of its acquisition."""
    if not tif.is_metaseries:
        return
    found = metaseries_acquisition((tif.metaseries_metadata or {}).get("PlaneInfo", {}))
    if "channel_name" in found and not info.channel_names:
        info.channel_names = [str(found["channel_name"])]
    if "physical_size_x_um" in found and info.physical_size_x_um is None:
        info.physical_size_x_um = float(found["physical_size_x_um"])
        info.physical_size_y_um = float(found["physical_size_y_um"])
    if "exposure_ms" in found and not info.exposure_ms:
        info.exposure_ms = [float(found["exposure_ms"])]
    for key in ("objective", "objective_magnification", "objective_na", "acquisition_time"):
        if key in found and getattr(info, key) is None:
            setattr(info, key, found[key])


def read_tiff_info(path: Path) -> TiffInfo:
    """Read shape, dtype and acquisition metadata of a TIFF without loading its pixels."""
    try:
        with tifffile.TiffFile(path) as tif:
            _check_not_truncated(path, tif)
            series = tif.series[0]
            page = tif.pages[0]
            info = TiffInfo(
                width=int(page.imagewidth),
                height=int(page.imagelength),
                dtype=str(np.dtype(series.dtype)),
                axes=series.axes,
                shape=tuple(int(s) for s in series.shape),
                is_ome=tif.is_ome,
            )
            if tif.is_ome and tif.ome_metadata:
                parse_ome_xml(tif.ome_metadata, info)
            if tif.is_imagej and tif.imagej_metadata:
                meta = tif.imagej_metadata
                if meta.get("unit") in ("micron", "um", "µm") and "XResolution" in page.tags:
                    numerator, denominator = page.tags["XResolution"].value
                    if numerator:
                        info.physical_size_x_um = info.physical_size_y_um = denominator / numerator
            _harmony_tag(page, info)
            _metaseries(tif, info)
            _baseline_tags(page, info)
            return info
    except MdpError:
        raise
    except FileNotFoundError:
        raise MdpError("image file not found", path=path) from None
    except Exception as exc:  # tifffile raises many types for damaged files
        raise MdpError(f"unreadable TIFF: {type(exc).__name__}: {exc}", path=path) from exc


def read_plane(path: Path) -> np.ndarray:
    """Read the first 2-D plane of a TIFF; an error names the file if the pixels cannot be decoded."""
    try:
        with tifffile.TiffFile(path) as tif:
            _check_not_truncated(path, tif)
            return tif.pages[0].asarray()
    except MdpError:
        raise
    except Exception as exc:
        raise MdpError(f"cannot decode image pixels: {type(exc).__name__}: {exc}", path=path) from exc
