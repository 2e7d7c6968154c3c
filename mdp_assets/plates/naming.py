"""Image file naming schemes of real instruments: a file name -> well, site, channel (and z, t).

Schemes:
- phenix: Opera Phenix / Harmony, `r03c03f03p01-ch5sk1fk1fl1.tiff` (row, column, field, plane, channel,
  timepoint as sk).
- imagexpress: Molecular Devices ImageXpress, `<plate>_<well>_s<site>_w<n><optional id>.tif`.
- nf1: the NF1 Schwann cell screen, `B7_01_1_3_DAPI_001.tif` (well, 01, channel number, site,
  channel name, 001).
- regex: a user-supplied regular expression with named groups well, site, channel (optional z, t).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mdp_assets.errors import MdpError

IMAGE_SUFFIXES = (".tif", ".tiff")

_PATTERNS: dict[str, str] = {
    "phenix": r"^r(?P<row>\d{2})c(?P<col>\d{2})f(?P<site>\d{2})p(?P<z>\d{2})-ch(?P<channel>\d+)sk(?P<t>\d+)fk\d+fl\d+\.tiff?$",
    # MetaXpress leaves out _s<n> when one site was imaged and _w<n> when one wavelength was.
    "imagexpress": r"^(?P<plate>.+?)_(?P<well>[A-Za-z]{1,2}\d{2})(?:_s(?P<site>\d+))?(?:_w(?P<channel>\d))?(?:[0-9A-Fa-f-]{36})?\.(?i:tiff?)$",
    "nf1": r"^(?P<well>[A-Pa-p]\d{1,2})_\d{2}_\d_(?P<site>\d+)_(?P<channel>[A-Za-z0-9]+)_\d{3}\.tiff?$",
}

# Rows A..P (96/384 wells) and A..Z, AA..AF (1536 wells: 32 rows x 48 columns).
_WELL = re.compile(r"^([A-Za-z]|[Aa][A-Fa-f])0*(\d{1,2})$")


@dataclass(frozen=True)
class ImageName:
    """What a file name says about its image."""

    well: str
    site: int
    channel: str
    channel_token: str
    z: int | None = None
    t: int | None = None

    @property
    def channel_is_named(self) -> bool:
        """True when the manifest mapped the file name's channel token to a name."""
        return self.channel != self.channel_token


def normalize_well(well: str) -> str:
    """'b7', 'B07' and 'B7' all become 'B07' (the zero-padded form CellProfiler and pycytominer use);
    1536-well rows run on from Z to AA..AF ('AF48')."""
    match = _WELL.match(well.strip())
    if not match or not 1 <= int(match.group(2)) <= 48:
        raise MdpError(f"{well!r} is not a well name like B07 (rows A-Z and AA-AF, columns 1-48)")
    return f"{match.group(1).upper()}{int(match.group(2)):02d}"


def well_from_row_col(row: int, col: int) -> str:
    if not 1 <= row <= 32 or not 1 <= col <= 48:
        raise MdpError(f"row {row} column {col} is outside a 1536-well plate")
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    row_name = letters[row - 1] if row <= 26 else "A" + letters[row - 27]
    return f"{row_name}{col:02d}"


def row_number(row: str) -> int:
    """'A' -> 1 ... 'Z' -> 26, 'AA' -> 27 ... 'AF' -> 32 (the inverse of well_from_row_col's rows)."""
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    name = row.upper()
    if len(name) == 1 and name in letters:
        return letters.index(name) + 1
    if len(name) == 2 and name[0] == "A" and name[1] in letters[:6]:
        return 27 + letters.index(name[1])
    raise MdpError(f"{row!r} is not a plate row (A-Z, AA-AF)")


class NamingScheme:
    """A compiled naming scheme; `parse` returns None for names that are not this scheme's images."""

    def __init__(self, name: str, pattern: str | None = None, channel_names: dict[str, str] | None = None):
        if name == "regex":
            if not pattern:
                raise MdpError("naming scheme 'regex' needs a pattern")
            source = pattern
        elif name in _PATTERNS:
            source = _PATTERNS[name]
        else:
            raise MdpError(f"unknown naming scheme {name!r}; known: {sorted([*_PATTERNS, 'regex'])}")
        self.name = name
        self.regex = re.compile(source)
        self.channel_names = dict(channel_names or {})

    def parse(self, filename: str) -> ImageName | None:
        match = self.regex.match(filename)
        if not match:
            return None
        groups = match.groupdict()
        if "row" in groups and groups.get("row") is not None:
            well = well_from_row_col(int(groups["row"]), int(groups["col"]))
        else:
            well = normalize_well(groups["well"])
        token = groups["channel"] or "1"
        # Phenix and ImageXpress name channels by number; the manifest maps "ch1"/"w1"/"1" to a name.
        channel = (
            self.channel_names.get(token)
            or self.channel_names.get(f"ch{token}")
            or self.channel_names.get(f"w{token}")
            or token
        )
        return ImageName(
            well=well,
            site=int(groups["site"] or 1),
            channel=channel,
            channel_token=token,
            z=int(groups["z"]) if groups.get("z") is not None else None,
            t=int(groups["t"]) if groups.get("t") is not None else None,
        )


def channel_identifier(name: str) -> str:
    """An instrument's channel name as the levels name it: CellProfiler image names, LoadData columns and
    feature names (`Cells_Intensity_MeanIntensity_<channel>`) take letters, digits and '_' only, starting with
    a letter ('HOECHST 33342' -> 'HOECHST_33342', '488 long' -> 'Ch488_long'). The manifest's `channels`
    maps the instrument's own name to any name the lab prefers."""
    cleaned = re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_")
    if not cleaned:
        raise MdpError(f"channel name {name!r} has no letters or digits")
    return cleaned if cleaned[0].isalpha() else f"Ch{cleaned}"


def looks_like_image(filename: str) -> bool:
    """An image file of the plate: a TIFF, not hidden, not one of MetaXpress' `_thumb` previews."""
    return filename.lower().endswith(IMAGE_SUFFIXES) and not filename.startswith(".") and "_thumb" not in filename
