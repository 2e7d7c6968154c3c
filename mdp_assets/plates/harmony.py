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
