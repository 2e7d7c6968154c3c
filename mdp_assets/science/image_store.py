"""Multi-channel image stacks on disk: OME-TIFF (C, Y, X) with channel names and pixel size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from mdp_assets.errors import MdpError
from mdp_assets.plates.tiff_metadata import TiffInfo, parse_ome_xml


def write_stack(path: Path, stack: np.ndarray, channel_names: list[str], pixel_size_um: float | None) -> None:
    if stack.ndim != 3 or stack.shape[0] != len(channel_names):
        raise MdpError(f"stack of shape {stack.shape} does not match channels {channel_names}", path=path)
    metadata: dict = {"axes": "CYX", "Channel": {"Name": list(channel_names)}}
    if pixel_size_um:
        metadata.update(PhysicalSizeX=pixel_size_um, PhysicalSizeY=pixel_size_um,
                        PhysicalSizeXUnit="µm", PhysicalSizeYUnit="µm")
    tifffile.imwrite(path, stack, metadata=metadata, ome=True, compression="zlib")


def read_stack(path: Path) -> tuple[np.ndarray, list[str]]:
    try:
        with tifffile.TiffFile(path) as tif:
            stack = tif.series[0].asarray()
            info = TiffInfo(width=0, height=0, dtype="", axes="", shape=(), is_ome=True)
            parse_ome_xml(tif.ome_metadata or "<OME/>", info)
    except Exception as exc:
        raise MdpError(f"cannot read image stack: {exc}", path=path) from exc
    if stack.ndim == 2:
        stack = stack[np.newaxis]
    return stack, info.channel_names
