"""The playbook's "isolated single-cell images": a fixed-size multi-channel crop around every cell.

Crops are centred on the nucleus, zero-padded at the image edge, and carry one extra channel,
`CellMask`, that is 1 inside the cell and 0 elsewhere (neighbours are visible but not masked out).
They are stored in the raw images' bit depth (uint16 for uint16 images): corrected pixels, on CellProfiler's
[0, 1] scale, are scaled back by the type's maximum. A plate is cropped site by site: a site's masks and
images and the features of that site's cells only (`tables.SiteRows`), so memory follows a site, not the plate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from mdp_assets.errors import MdpError
from mdp_assets.plates.tiff_metadata import read_plane
from mdp_assets.science.image_store import read_stack
from mdp_assets.science.tables import BatchWriter, SiteRows


def to_bit_depth(stack: np.ndarray, dtype: np.dtype | str) -> np.ndarray:
    """Pixels in the raw images' type: integer stacks as they are; float (corrected, on CellProfiler's [0, 1]
    scale) ones times the type's maximum, rounded (illumination functions are >= 1, so they stay in range).
    Float raw images give float32."""
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.integer):
        return stack.astype(np.float32, copy=False)
    if np.issubdtype(stack.dtype, np.integer):
        return stack.astype(dtype, copy=False)
    top = np.iinfo(dtype).max
    return np.clip(np.rint(stack * np.float32(top)), 0, top).astype(dtype)


def raw_dtype(raw_images: pd.DataFrame) -> np.dtype:
    """The bit depth of a plate's raw images (the widest, should they differ), from their `dtype` column."""
    kinds = [np.dtype(d) for d in raw_images["dtype"].dropna().unique()] if "dtype" in raw_images else []
    return np.result_type(*kinds) if kinds else np.dtype(np.uint16)


def crop_cells(
    stack: np.ndarray, cells: np.ndarray, object_numbers: np.ndarray, centers_xy: np.ndarray, size: int
) -> np.ndarray:
    """stack (C, Y, X) -> crops (N, C + 1, size, size), in the stack's type."""
    channels, height, width = stack.shape
    half = size // 2
    padded = np.pad(stack, ((0, 0), (half, half), (half, half)))
    padded_cells = np.pad(cells, ((half, half), (half, half)))
    crops = np.zeros((len(object_numbers), channels + 1, size, size), dtype=stack.dtype)
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


@dataclass
class CropStore:
    """What `write_crop_store` wrote: crops made, their channels, cells without masks, and the crop indices of
    the first cells single-cell QC flagged and kept (in crop order), for `example_crops`."""

    cells: int
    channels: list[str]
    crop_size: int
    cells_without_masks: int
    flagged: list[int] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)


def write_crop_store(
    features: Path,
    masks: pd.DataFrame,
    masks_dir: Path,
    read_site: Callable[[str, int], np.ndarray],
    image_channels: list[str],
    out_dir: Path,
    size: int,
    dtype: np.dtype | str = np.uint16,
    channels: list[str] | None = None,
    flags: np.ndarray | None = None,
    examples: int = 6,
) -> CropStore:
    """A zarr v3 store `crops.zarr` (array `images`, N x (C + 1) x size x size in `dtype`, chunked by cells) and
    `index.parquet` (the Metadata_ columns of every crop, row i = crop i), cells in (well, site, object) order.
    `features` is the stored single-cell table; `read_site` gives a site's stack in `image_channels`' order, of
    which `channels` (default all) are cropped. Crops come from the saved masks: cells of sites without masks
    get no crop (and are not in the index); the centre is the mask's first object's (nucleus-like) centre, the
    CellMask its second (cell-like) object. `flags` (single-cell QC's outlier flags, in `features`' row order)
    picks the example crops."""
    channels = list(channels or image_channels)
    unknown = [c for c in channels if c not in image_channels]
    if unknown:
        raise MdpError(f"crops.channels names {unknown}, which the plate does not have (it has {image_channels})")
    positions = [image_channels.index(c) for c in channels]
    rows = SiteRows(features)
    if flags is not None and len(flags) != rows.rows:
        raise MdpError(f"cell QC lists {len(flags)} cells but the single cells hold {rows.rows}; single_cell_qc must be "
                       "made again from these single_cell_features", path=features)
    with_masks = sorted((r.Metadata_Well, int(r.Metadata_Site), r.file_name) for r in masks.itertuples(index=False)
                        if isinstance(r.file_name, str))
    total = sum(rows.count(well, site) for well, site, _ in with_masks)
    channel_names = [*channels, "CellMask"]
    chunk = max(1, min(256, total))
    images = zarr.create_array(
        store=str(out_dir / "crops.zarr"),
        shape=(total, len(channel_names), size, size),
        chunks=(chunk, len(channel_names), size, size),
        dtype=np.dtype(dtype),
        fill_value=0,
        attributes={"channel_names": channel_names, "crop_size": size, "index": "index.parquet"},
    )
    names = rows.file.schema_arrow.names
    metadata = [c for c in names if c.startswith("Metadata_")]
    store = CropStore(0, channel_names, size, rows.rows - total)
    pending: list[np.ndarray] = []  # crops not written yet: the store is written a whole chunk at a time
    written = 0
    with BatchWriter(out_dir / "index.parquet") as index:
        for well, site, file_name in with_masks:
            if not rows.count(well, site):
                continue  # no cells in this site
            labels, objects = read_stack(masks_dir / file_name)
            center = objects[0] if objects else "Nuclei"
            centre = [f"{center}_AreaShape_Center_X", f"{center}_AreaShape_Center_Y"]
            if centre[0] not in names:
                raise MdpError(f"single cells have no {centre[0]}/Y (the centre of the mask's first object)")
            site_cells = rows.read(well, site, list(dict.fromkeys([*metadata, *centre])))
            order = np.argsort(site_cells["Metadata_ObjectNumber"].to_numpy(), kind="stable")
            site_cells = site_cells.iloc[order].reset_index(drop=True)
            stack = to_bit_depth(read_site(well, site)[positions], dtype)
            pending.append(crop_cells(stack, labels[1], site_cells["Metadata_ObjectNumber"].to_numpy(),
                                      site_cells[centre].to_numpy(), size))
            cells = site_cells[metadata]
            cells.insert(0, "crop_index", np.arange(store.cells, store.cells + len(cells)))
            index.write(cells)
            if flags is not None:
                flagged = flags[rows.sites[(well, site)][order]]
                for number, is_flagged in zip(cells["crop_index"], flagged):
                    chosen = store.flagged if is_flagged else store.kept
                    if len(chosen) < examples:
                        chosen.append(int(number))
            store.cells += len(cells)
            if store.cells - written >= chunk:
                written = _write_chunks(images, pending, written, chunk, final=False)
        _write_chunks(images, pending, written, chunk, final=True)
        if not store.cells:
            empty = rows.file.schema_arrow.empty_table().select(metadata).to_pandas()
            empty.insert(0, "crop_index", pd.Series(dtype="int64"))
            index.write(empty)
    return store


def _write_chunks(images: zarr.Array, pending: list[np.ndarray], written: int, chunk: int, final: bool) -> int:
    """Write the pending crops' whole chunks (all of them when `final`); what is left stays pending."""
    if not pending:
        return written
    crops = np.concatenate(pending)
    count = len(crops) if final else len(crops) // chunk * chunk
    images[written : written + count] = crops[:count]
    pending[:] = [crops[count:]] if count < len(crops) else []
    return written + count


def example_crops(store_dir: Path, flagged: list[int], kept: list[int], channel: str) -> tuple[np.ndarray, np.ndarray]:
    """Crops (one channel) of cells single-cell QC flagged and of cells it kept, read from a crop store by
    their crop indices: what a person looks at to see what the QC removes."""
    images = zarr.open_array(str(store_dir / "crops.zarr"), mode="r")
    names = list(images.attrs["channel_names"])
    if channel not in names:
        channel = names[0]
    position = names.index(channel)

    def crops(chosen: list[int]) -> np.ndarray:
        size = images.shape[-1]
        return np.stack([images[i, position] for i in sorted(chosen)]) if chosen else np.zeros((0, size, size), images.dtype)

    return crops(flagged), crops(kept)
