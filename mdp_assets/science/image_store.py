"""Multi-channel image stacks on disk: OME-TIFF (C, Y, X) with channel names and pixel size.

Intensity stacks (CellProfiler's [0, 1] scale, e.g. corrected images) can be stored in the raw images' bit
depth: `write_stack(..., bit_depth=np.uint16)` stores round(value x 65535), clipped to [0, 65535] (the error is
at most half a grey level, 7.6e-6 of the range for 16 bits), and marks the file with a private TIFF tag;
`read_stack` returns such a stack as float32 intensities again (value / dtype max, CellProfiler's reading of
an integer image), so its readers see the same scale whatever depth it was stored in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from mdp_assets.errors import MdpError
from mdp_assets.plates.tiff_metadata import TiffInfo, parse_ome_xml


INTENSITY_TAG = 65000  # private TIFF tag: "intensities/<dtype max>" on an intensity stack stored as integers


def to_bit_depth(intensities: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
    """Intensities in [0, 1] as `dtype`: integers round(value x dtype max), clipped to the dtype's range;
    a float dtype keeps float32 values."""
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.integer):
        return intensities.astype(np.float32, copy=False)
    top = np.iinfo(dtype).max
    return np.clip(np.rint(intensities * np.float32(top)), 0, top).astype(dtype)


def write_stack(path: Path, stack: np.ndarray, channel_names: list[str], pixel_size_um: float | None,
                bit_depth: np.dtype | type | None = None) -> None:
    """Write a (C, Y, X) stack; `bit_depth` (an integer dtype): `stack` holds intensities in [0, 1], stored in
    that depth (see the module's docstring)."""
    if stack.ndim != 3 or stack.shape[0] != len(channel_names):
        raise MdpError(f"stack of shape {stack.shape} does not match channels {channel_names}", path=path)
    extratags = []
    if bit_depth is not None and np.issubdtype(np.dtype(bit_depth), np.integer):
        stack = to_bit_depth(stack, bit_depth)
        extratags = [(INTENSITY_TAG, "s", 0, f"intensities/{np.iinfo(stack.dtype).max}", True)]
    metadata: dict = {"axes": "CYX", "Channel": {"Name": list(channel_names)}}
    if pixel_size_um:
        metadata.update(PhysicalSizeX=pixel_size_um, PhysicalSizeY=pixel_size_um,
                        PhysicalSizeXUnit="µm", PhysicalSizeYUnit="µm")
    tifffile.imwrite(path, stack, metadata=metadata, ome=True, compression="zlib", extratags=extratags)


def read_stack(path: Path, as_stored: bool = False) -> tuple[np.ndarray, list[str]]:
    """The stack and its channel names; an intensity stack stored as integers comes back as float32 in [0, 1]
    unless `as_stored`."""
    try:
        with tifffile.TiffFile(path) as tif:
            stack = tif.series[0].asarray()
            tag = tif.pages[0].tags.get(INTENSITY_TAG)
            if tag is not None and not as_stored:
                stack = stack.astype(np.float32) / np.float32(int(str(tag.value).split("/")[1]))
            info = TiffInfo(width=0, height=0, dtype="", axes="", shape=(), is_ome=True)
            parse_ome_xml(tif.ome_metadata or "<OME/>", info)
    except Exception as exc:
        raise MdpError(f"cannot read image stack: {exc}", path=path) from exc
    if stack.ndim == 2:
        stack = stack[np.newaxis]
    return stack, info.channel_names
