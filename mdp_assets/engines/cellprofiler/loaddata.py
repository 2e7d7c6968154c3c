"""CellProfiler LoadData CSVs, in the layout the field's `pe2loaddata` tool writes.

One row per site: `FileName_<Orig>` / `PathName_<Orig>` per channel (channels ordered by their Harmony
name with spaces removed), `Metadata_Plate`, `Metadata_Well`, `Metadata_Site`, then every requested
metadata field in alphabetical order. A field whose value differs between the channels of a site gets one
column per channel (`Metadata_ExposureTime_OrigDNA`, in the configuration's channel order); a field shared
by all channels gets one column. Values are the instrument's own text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import yaml

from mdp_assets.errors import MdpError
from mdp_assets.plates.inventory import site_images
from mdp_assets.plates.naming import well_from_row_col


def read_pe2loaddata_config(path: Path) -> tuple[dict[str, str], list[str]]:
    """(Harmony channel name -> LoadData image name, metadata fields) from a pe2loaddata config.yml."""
    try:
        config = yaml.load(path.read_text(), Loader=yaml.BaseLoader)
    except (OSError, yaml.YAMLError) as exc:
        raise MdpError(f"cannot read pe2loaddata configuration: {exc}", path=path) from exc
    if isinstance(config, list):
        config = config[0]
    if not isinstance(config, dict) or not isinstance(config.get("channels"), dict):
        raise MdpError("pe2loaddata configuration needs a 'channels' mapping", path=path)
    return dict(config["channels"]), list((config.get("metadata") or {}).keys())


def loaddata_from_harmony(
    images: pd.DataFrame,
    plate: str,
    channels: Mapping[str, str],
    metadata_fields: Sequence[str],
    path_name: str,
) -> pd.DataFrame:
    """A LoadData table from a Harmony image table (see `read_harmony_index`)."""
    by_stripped = {name.replace(" ", ""): image for name, image in channels.items()}
    images = images.assign(_channel=images["ChannelName"].str.replace(" ", "", regex=False))
    unknown = sorted(set(images["_channel"]) - set(by_stripped))
    if unknown:
        raise MdpError(f"Harmony channels {unknown} are not in the configuration's channels {sorted(channels)}")
    file_channels = sorted(by_stripped)
    config_order = [name.replace(" ", "") for name in channels]
    plane = images["PlaneID"] if "PlaneID" in images.columns else "1"
    images = images.assign(_site=images["FieldID"].astype(int), _plane=pd.Series(plane, index=images.index).astype(int))
    per_channel = [
        field for field in metadata_fields
        if field in images.columns and (images.groupby(["Row", "Col", "_site", "_plane"])[field].nunique() > 1).any()
    ]
    rows = []
    for (row, col, site, _plane), site_images in images.groupby(["Row", "Col", "_site", "_plane"], sort=False):
        present = dict(zip(site_images["_channel"], site_images.to_dict("records")))
        if set(present) != set(by_stripped):
            continue  # pe2loaddata drops sites lacking a configured channel
        record: dict[str, str] = {}
        for channel in file_channels:
            record[f"FileName_{by_stripped[channel]}"] = present[channel]["URL"]
            record[f"PathName_{by_stripped[channel]}"] = path_name
        record["Metadata_Plate"] = plate
        record["Metadata_Well"] = well_from_row_col(int(row), int(col))
        record["Metadata_Site"] = str(site)
        last = present[file_channels[-1]]
        for field in sorted(metadata_fields):
            if field in per_channel:
                for channel in config_order:
                    record[f"Metadata_{field}_{by_stripped[channel]}"] = present[channel].get(field, "")
            else:
                record[f"Metadata_{field}"] = last.get(field, "")
        rows.append(((int(row), int(col), site), record))
    rows.sort(key=lambda item: item[0])
    return pd.DataFrame([record for _, record in rows])


def loaddata_from_raw_images(raw_images: pd.DataFrame, path_of: Mapping[str, str] | None = None) -> pd.DataFrame:
    """A LoadData table for any plate mdp inventoried: `FileName_<channel>` / `PathName_<channel>` per channel,
    Metadata_Plate, Metadata_Well, Metadata_Site (first z/t plane of each site)."""
    plate = str(raw_images["Metadata_Plate"].iloc[0])
    channels = sorted(raw_images["Metadata_Channel"].unique())
    rows = []
    for (well, site), paths in site_images(raw_images).items():
        record: dict[str, str] = {}
        for channel in channels:
            path = paths[channel]
            record[f"FileName_{channel}"] = path.name
            record[f"PathName_{channel}"] = (path_of or {}).get(str(path), str(path.parent))
        record.update({"Metadata_Plate": plate, "Metadata_Well": well, "Metadata_Site": str(site)})
        rows.append(record)
    return pd.DataFrame(rows)


def loaddata_for_analysis(raw_images: pd.DataFrame, illumination_dir: Path | None) -> pd.DataFrame:
    """LoadData rows for an analysis pipeline: Orig<channel> raw images, Illum<channel> functions (.npy),
    Metadata_Plate, Metadata_Well, Metadata_Site: the Cell Painting Gallery's names."""
    table = loaddata_from_raw_images(raw_images)
    table = table.rename(columns=lambda c: c.replace("FileName_", "FileName_Orig").replace("PathName_", "PathName_Orig")
                         if c.startswith(("FileName_", "PathName_")) else c)
    if illumination_dir is not None:
        for channel in sorted(raw_images["Metadata_Channel"].unique()):
            table[f"FileName_Illum{channel}"] = f"{channel}.npy"
            table[f"PathName_Illum{channel}"] = str(illumination_dir)
    return table
