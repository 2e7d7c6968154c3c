"""Opera Phenix / Harmony `Index.idx.xml` (Harmony 4-5) and `Index.xml` (Harmony 6-7) files.

Every `<Image>` becomes one row: its file name (URL), Row, Col, FieldID, PlaneID, ChannelID, ChannelName
and every other field the instrument wrote, as the text it wrote (units dropped), so values survive to
LoadData CSVs unchanged. Namespaces differ between Harmony versions and are ignored.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd

from mdp_assets.errors import MdpError

INDEX_FILE_NAMES = ("Index.idx.xml", "Index.xml")
_LENGTH_UNITS_TO_UM = {"m": 1e6, "mm": 1e3, "um": 1.0, "µm": 1.0}
_TIME_UNITS_TO_MS = {"s": 1e3, "ms": 1.0}


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def find_index_file(folder: Path) -> Path | None:
    for name in INDEX_FILE_NAMES:
        if (folder / name).is_file():
            return folder / name
    return None


def read_harmony_index(path: Path) -> tuple[str | None, pd.DataFrame]:
    """(plate id, images table with one string column per Image field, plus `<field>_unit` where given)."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise MdpError(f"cannot parse Harmony index XML: {exc}", path=path) from exc
    plate_id = None
    rows = []
    channel_fields: dict[str, dict[str, str]] = {}
    for element in root.iter():
        name = _local(element.tag)
        if name == "PlateID" and plate_id is None and element.text:
            plate_id = element.text.strip()
        elif name == "Image" and element.get("Version") is not None:
            rows.append(_fields(element))
        elif name == "Entry" and element.get("ChannelID") and any(_local(c.tag) == "ChannelName" for c in element):
            # Harmony 6+ describes each channel once, in Maps/Map/Entry, instead of in every Image.
            channel_fields.setdefault(element.get("ChannelID", ""), {}).update(_fields(element))
    for row in rows:
        for key, value in channel_fields.get(row.get("ChannelID", ""), {}).items():
            row.setdefault(key, value)
    if not rows:
        raise MdpError("Harmony index XML lists no images", path=path)
    table = pd.DataFrame(rows)
    missing = {"URL", "Row", "Col", "FieldID", "ChannelID", "ChannelName"} - set(table.columns)
    if missing:
        raise MdpError(f"Harmony index XML images lack the fields {sorted(missing)}", path=path)
    return plate_id, table


def _fields(element: ET.Element) -> dict[str, str]:
    fields: dict[str, str] = {}
    for child in element:
        key = _local(child.tag)
        fields[key] = (child.text or "").strip()
        if child.get("Unit"):
            fields[f"{key}_unit"] = child.get("Unit", "")
    return fields


def acquisition_metadata(images: pd.DataFrame) -> pd.DataFrame:
    """Per file name: channel name, pixel size (µm), objective, exposure (ms), acquisition time."""

    def scaled(column: str, units: dict[str, float]) -> pd.Series:
        if column not in images.columns:
            return pd.Series([None] * len(images), index=images.index, dtype=object)
        unit = images.get(f"{column}_unit", pd.Series([""] * len(images), index=images.index))
        values = pd.to_numeric(images[column], errors="coerce")
        return values * unit.map(lambda u: units.get(u, float("nan")))

    out = pd.DataFrame({"file_name": images["URL"], "harmony_channel_name": images["ChannelName"]})
    out["Metadata_PhysicalSizeX_um"] = scaled("ImageResolutionX", _LENGTH_UNITS_TO_UM)
    out["Metadata_PhysicalSizeY_um"] = scaled("ImageResolutionY", _LENGTH_UNITS_TO_UM)
    out["Metadata_ObjectiveMagnification"] = pd.to_numeric(images.get("ObjectiveMagnification"), errors="coerce")
    out["Metadata_ObjectiveNA"] = pd.to_numeric(images.get("ObjectiveNA"), errors="coerce")
    out["Metadata_ExposureTime_ms"] = scaled("ExposureTime", _TIME_UNITS_TO_MS)
    out["Metadata_AcquisitionTime"] = images.get("AbsTime")
    return out


# The per-image XML a Phenix writes into TIFF tag 65500 (TiffImageDescription, Harmony 4 and later).
HARMONY_IMAGE_XML_TAG = 65500


def _child(element: ET.Element | None, name: str) -> ET.Element | None:
    if element is None:
        return None
    return next((child for child in element if _local(child.tag) == name), None)


def _children_named(element: ET.Element | None, name: str) -> list[ET.Element]:
    return [child for child in element if _local(child.tag) == name] if element is not None else []


def _number(element: ET.Element | None) -> float | None:
    try:
        return float(element.text) if element is not None and element.text else None
    except ValueError:
        return None


def _nth(items: list[ET.Element], one_based: str | None) -> ET.Element | None:
    try:
        index = int(one_based or "") - 1
    except ValueError:
        return None
    return items[index] if 0 <= index < len(items) else None


def parse_image_xml(xml: bytes | str) -> dict[str, object]:
    """What a Phenix image says of itself in its tag-65500 XML: channel name, exposure (ms), objective
    (ID, magnification, NA), acquisition time and the sample's pixel size in µm.

    The image names its Exposure, Record and Channel by 1-based ID; the Record holds the channel's name,
    camera and binning, the InstrumentDescription the objective and the camera's pixel. The XML states no
    sample pixel size; it is the optics' own relation, camera pixel x binning / (objective x instrument
    magnification), which reproduces the Index XML's ImageResolutionX (0.597976 µm on the realdata plates).
    Keys are absent where the XML does not say.
    """
    root = ET.fromstring(xml)
    image = _child(root, "Image")
    if image is None:
        return {}
    fields = {_local(child.tag): (child.text or "").strip() for child in image}
    found: dict[str, object] = {}
    if fields.get("AbsTime"):
        found["acquisition_time"] = fields["AbsTime"]
    experiment = _child(root, "DeviceExperiment")
    exposure = _nth(_children_named(_child(experiment, "Exposures"), "Exposure"), fields.get("ExposureID"))
    record = _nth(_children_named(exposure, "Record"), fields.get("RecordID"))
    channels = _children_named(_child(record, "Channels"), "Channel")
    channel = _nth(channels, fields.get("ChannelID")) or (channels[0] if len(channels) == 1 else None)
    camera_setting = _child(channel, "CameraSetting")
    if channel is not None and _child(channel, "Name") is not None:
        found["channel_name"] = (_child(channel, "Name").text or "").strip()
    exposure_time = _child(camera_setting, "Exposuretime")
    if _number(exposure_time) is not None:
        found["exposure_ms"] = _number(exposure_time) * _TIME_UNITS_TO_MS.get(exposure_time.get("Unit", "s"), float("nan"))
    instrument = _child(root, "InstrumentDescription")
    objective_id = (_child(exposure, "Objective").text or "").strip() if _child(exposure, "Objective") is not None else None
    objective = next((o for o in _children_named(_child(instrument, "Objectives"), "Objective")
                      if (_child(o, "ID").text if _child(o, "ID") is not None else None) == objective_id), None)
    if objective_id:
        found["objective"] = objective_id
    objective_magnification = _number(_child(objective, "Magnification"))
    if objective_magnification is not None:
        found["objective_magnification"] = objective_magnification
    if _number(_child(objective, "NumAperture")) is not None:
        found["objective_na"] = _number(_child(objective, "NumAperture"))
    camera_id = (_child(camera_setting, "CameraID").text or "").strip() if _child(camera_setting, "CameraID") is not None else None
    camera = next((c for c in _children_named(_child(instrument, "Cameras"), "Camera")
                   if _child(c, "ID") is not None and _child(c, "ID").text == camera_id), None)
    camera_pixel = _child(camera, "PixelSizeX")
    binning = _number(_child(camera_setting, "BinningX"))
    instrument_magnification = _number(_child(instrument, "Magnification"))
    if None not in (_number(camera_pixel), binning, objective_magnification, instrument_magnification):
        metres_to_um = _LENGTH_UNITS_TO_UM.get(camera_pixel.get("Unit", "m"), float("nan"))
        found["physical_size_um"] = (_number(camera_pixel) * metres_to_um * binning
                                     / (objective_magnification * instrument_magnification))
    return found
