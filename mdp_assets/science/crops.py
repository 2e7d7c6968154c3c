"""The playbook's "isolated single-cell images": a fixed-size multi-channel crop around every cell.

Crops are centred on the nucleus, zero-padded at the image edge, and carry one extra channel,
`CellMask`, that is 1 inside the cell and 0 elsewhere (neighbours are visible but not masked out).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from mdp_assets.errors import MdpError
from mdp_assets.plates.tiff_metadata import read_plane
from mdp_assets.science.cell_qc import OUTLIER
from mdp_assets.science.image_store import read_stack


def crop_cells(
    stack: np.ndarray, cells: np.ndarray, object_numbers: np.ndarray, centers_xy: np.ndarray, size: int
) -> np.ndarray:
    """stack (C, Y, X) -> crops (N, C + 1, size, size), float32."""
    channels, height, width = stack.shape
    half = size // 2
    padded = np.pad(stack, ((0, 0), (half, half), (half, half)))
    padded_cells = np.pad(cells, ((half, half), (half, half)))
    crops = np.zeros((len(object_numbers), channels + 1, size, size), dtype=np.float32)
    for index, (number, (x, y)) in enumerate(zip(object_numbers, centers_xy)):
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        row, col = int(round(y)), int(round(x))
        # In padded coordinates the window [row, row + size) is centred on the original (row, col).
        window = (slice(row, row + size), slice(col, col + size))
        crops[index, :channels] = padded[(slice(None), *window)]
        crops[index, channels] = padded_cells[window] == number
    return crops


def site_images_reader(masks: pd.DataFrame, corrected_dir: Path, corrected: pd.DataFrame,
                       raw_paths: dict[tuple[str, int], dict[str, Path]]) -> Callable[[str, int], np.ndarray]:
    """The images a site's crops are cut from: the corrected stack the analysis read, or, where none was
    written (CellProfiler read the raw images), the raw images in channel order."""
    written = {(r.Metadata_Well, int(r.Metadata_Site)): r.file_name for r in corrected.itertuples(index=False)
               if isinstance(r.file_name, str)}

    def read(well: str, site: int) -> np.ndarray:
        if (well, site) in written:
            return read_stack(corrected_dir / written[(well, site)])[0]
        paths = raw_paths[(well, site)]
        return np.stack([read_plane(paths[c]) for c in sorted(paths)])

    return read


def write_crop_store(
    features: pd.DataFrame,
    masks: pd.DataFrame,
    masks_dir: Path,
    read_site: Callable[[str, int], np.ndarray],
    image_channels: list[str],
    out_dir: Path,
    size: int,
) -> dict:
    """A zarr v3 store `crops.zarr` (array `images`, N x (C + 1) x size x size, chunked by cells) and
    `index.parquet` (the Metadata_ columns of every crop, row i = crop i). Crops come from the saved masks:
    cells of sites without masks get no crop (and are not in the index); the centre is the mask's first
    object's (nucleus-like) centre, the CellMask its second (cell-like) object."""
    order = ["Metadata_Well", "Metadata_Site", "Metadata_ObjectNumber"]
    with_masks = {(r.Metadata_Well, int(r.Metadata_Site)) for r in masks.itertuples(index=False)
                  if isinstance(r.file_name, str)}
    keep = [(w, int(s)) in with_masks for w, s in zip(features["Metadata_Well"], features["Metadata_Site"])]
    skipped = len(features) - sum(keep)
    cells = features[keep].sort_values(order).reset_index(drop=True)
    channel_names = [*image_channels, "CellMask"]
    chunk = max(1, min(256, len(cells)))
    images = zarr.create_array(
        store=str(out_dir / "crops.zarr"),
        shape=(len(cells), len(channel_names), size, size),
        chunks=(chunk, len(channel_names), size, size),
        dtype="float32",
        fill_value=0.0,
        attributes={"channel_names": channel_names, "crop_size": size, "index": "index.parquet"},
    )
    offset = 0
    for site in masks.itertuples(index=False):
        site_cells = cells[(cells["Metadata_Well"] == site.Metadata_Well) & (cells["Metadata_Site"] == site.Metadata_Site)]
        if site_cells.empty or not isinstance(site.file_name, str):
            continue  # no cells, or the engine's pipeline saved no label images for this site
        labels, objects = read_stack(masks_dir / site.file_name)
        stack = read_site(site.Metadata_Well, int(site.Metadata_Site))
        center = objects[0] if objects else "Nuclei"
        if f"{center}_AreaShape_Center_X" not in site_cells.columns:
            raise MdpError(f"single cells have no {center}_AreaShape_Center_X/Y (the centre of the mask's first object)")
        centers = site_cells[[f"{center}_AreaShape_Center_X", f"{center}_AreaShape_Center_Y"]].to_numpy()
        crops = crop_cells(stack, labels[1], site_cells["Metadata_ObjectNumber"].to_numpy(), centers, size)
        start = int(site_cells.index[0])
        images[start : start + len(crops)] = crops
        offset += len(crops)
    index = cells[[c for c in cells.columns if c.startswith("Metadata_")]].copy()
    index.insert(0, "crop_index", np.arange(len(index)))
    index.to_parquet(out_dir / "index.parquet", index=False)
    return {"cells": offset, "channels": channel_names, "crop_size": size, "cells_without_masks": skipped}


def example_crops(store_dir: Path, cell_qc: pd.DataFrame, channel: str, per_group: int = 6,
                  flag: str = OUTLIER) -> tuple[np.ndarray, np.ndarray]:
    """Up to `per_group` crops (one channel) of cells single-cell QC flagged and of cells it kept, read from a
    crop store: what a person looks at to see what the QC removes. The first cells of each group, in plate order."""
    index = pd.read_parquet(store_dir / "index.parquet")
    keys = ["Metadata_Well", "Metadata_Site", "Metadata_ObjectNumber"]
    flags = cell_qc[[*keys, flag]].astype({"Metadata_Site": int, "Metadata_ObjectNumber": int})
    joined = index.astype({"Metadata_Site": int, "Metadata_ObjectNumber": int}).merge(flags, on=keys, how="inner")
    images = zarr.open_array(str(store_dir / "crops.zarr"), mode="r")
    names = list(images.attrs["channel_names"])
    if channel not in names:
        channel = names[0]
    position = names.index(channel)

    def crops(rows: pd.DataFrame) -> np.ndarray:
        chosen = sorted(rows["crop_index"].head(per_group).tolist())
        size = images.shape[-1]
        return np.stack([images[i, position] for i in chosen]) if chosen else np.zeros((0, size, size), np.float32)

    return crops(joined[joined[flag].astype(bool)]), crops(joined[~joined[flag].astype(bool)])
