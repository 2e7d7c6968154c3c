"""Molecular Devices ImageXpress / MetaXpress plates: the `.HTD` plate file and MetaMorph's per-image XML.

The HTD ("HTSInfoFile") is a list of `"Key", value, value, ...` lines describing the acquisition: plate
format (XWells x YWells), the wells and sites imaged (WellsSelection<row>, SiteSelection<row>) and the
wavelengths (WaveName<n>: the `w<n>` of the file names). Each image's ImageDescription holds MetaMorph's
MetaSeries XML (`<MetaData><PlaneInfo><prop id=... value=.../>`), read with tifffile.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from mdp_assets.errors import MdpError

_MAGNIFICATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[xX]\b")
_EXPOSURE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|us|µs)\s*$")
_TIME_TO_MS = {"s": 1e3, "ms": 1.0, "us": 1e-3, "µs": 1e-3}
_LENGTH_TO_UM = {"um": 1.0, "µm": 1.0, "micron": 1.0, "microns": 1.0, "nm": 1e-3, "mm": 1e3}


@dataclass(frozen=True)
class HtdPlate:
    """What an HTD file says of a plate."""

    columns: int
    rows: int
    wave_names: dict[str, str] = field(default_factory=dict)  # "1" (w1) -> "DAPI"
    wells: tuple[str, ...] = ()  # wells selected for imaging, e.g. ("B02", "B03")
    sites: int = 1
    timepoints: int = 1


def find_htd(images_dir: Path, plate_root: Path) -> Path | None:
    """The plate's HTD: in the images folder or any folder above it up to the plate folder."""
    folder = images_dir
    while True:
        found = sorted(folder.glob("*.HTD")) + sorted(folder.glob("*.htd"))
        if found:
            return found[0]
        if folder == plate_root or plate_root not in folder.parents:
            return None
        folder = folder.parent


def read_htd(path: Path) -> HtdPlate:
    try:
        text = path.read_text(encoding="latin-1")
    except OSError as exc:
        raise MdpError(f"cannot read the ImageXpress plate file: {exc}", path=path) from None
    values: dict[str, list[str]] = {}
    for row in csv.reader(text.splitlines(), skipinitialspace=True):
        if row:
            values[row[0].strip()] = [v.strip() for v in row[1:]]
    if "HTSInfoFile" not in values:
        raise MdpError("not an ImageXpress HTD file (no HTSInfoFile line)", path=path)
    try:
        columns, rows = int(values["XWells"][0]), int(values["YWells"][0])
    except (KeyError, IndexError, ValueError):
        raise MdpError("ImageXpress HTD file lacks XWells/YWells", path=path) from None
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    wells = []
    for row_index in range(rows):
        selection = values.get(f"WellsSelection{row_index + 1}", [])
        row_name = letters[row_index] if row_index < 26 else "A" + letters[row_index - 26]
        wells += [f"{row_name}{col + 1:02d}" for col, flag in enumerate(selection) if flag.upper() == "TRUE"]
    waves = {}
    if values.get("Waves", ["FALSE"])[0].upper() == "TRUE" or "WaveName1" in values:
        for n in range(1, int(values.get("NWavelengths", ["1"])[0]) + 1):
            if values.get(f"WaveName{n}"):
                waves[str(n)] = values[f"WaveName{n}"][0]
    sites = 1
    if values.get("Sites", ["FALSE"])[0].upper() == "TRUE":
        sites = sum(flag.upper() == "TRUE" for key, flags in values.items() if key.startswith("SiteSelection")
                    for flag in flags) or int(values.get("XSites", ["1"])[0]) * int(values.get("YSites", ["1"])[0])
    return HtdPlate(columns, rows, waves, tuple(wells), sites, int(values.get("TimePoints", ["1"])[0]))


def metaseries_acquisition(plane: dict[str, Any]) -> dict[str, object]:
    """Acquisition metadata from MetaMorph's PlaneInfo (tifffile's `metaseries_metadata["PlaneInfo"]`):
    pixel size in µm (only when spatial calibration is on), objective, its magnification and NA, exposure
    in ms, acquisition time and the illumination setting's name. Keys absent where the XML does not say."""
    found: dict[str, object] = {}
    calibrated = plane.get("spatial-calibration-state") in (True, "on")
    unit = str(plane.get("spatial-calibration-units", "")).strip()
    if calibrated and unit in _LENGTH_TO_UM and isinstance(plane.get("spatial-calibration-x"), float):
        found["physical_size_x_um"] = plane["spatial-calibration-x"] * _LENGTH_TO_UM[unit]
        found["physical_size_y_um"] = float(plane.get("spatial-calibration-y", plane["spatial-calibration-x"])) * _LENGTH_TO_UM[unit]
    objective = plane.get("_MagSetting_")
    if objective:
        found["objective"] = str(objective)
        magnification = _MAGNIFICATION.match(str(objective))
        if magnification:
            found["objective_magnification"] = float(magnification.group(1))
    if isinstance(plane.get("_MagNA_"), float):
        found["objective_na"] = plane["_MagNA_"]
    exposure = _EXPOSURE.match(str(plane.get("Exposure Time", "")))
    if exposure:
        found["exposure_ms"] = float(exposure.group(1)) * _TIME_TO_MS[exposure.group(2)]
    acquired = plane.get("acquisition-time-local")
    if isinstance(acquired, datetime):
        found["acquisition_time"] = acquired.isoformat(timespec="milliseconds")
    if plane.get("_IllumSetting_"):
        found["channel_name"] = str(plane["_IllumSetting_"])
    return found
