"""The default CellProfiler illumination pipeline, for whatever channels a plate has.

One CorrectIlluminationCalculate per channel over all of the plate's images (Regular, median filter,
rescaled so the function is at least 1), saved as `Illum<Channel>.npy` on the last cycle, reading
`Orig<Channel>` images from LoadData. `pipelines/illumination.cppipe` is this for the five Cell Painting
channels; a plate with other channels gets the same pipeline for its own.
"""

from __future__ import annotations

import re
from pathlib import Path

from mdp_assets.errors import MdpError

CELL_PAINTING_CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")
_HEAD = ("{name}:[module_num:{n}|svn_version:'Unknown'|variable_revision_number:{v}|show_window:False|notes:{notes}|"
         "batch_state:array([], dtype=uint8)|enabled:True|wants_pause:False]")


def pipeline_input_channels(pipeline: Path) -> set[str]:
    """The channels a LoadData-driven pipeline reads: every `Orig<Channel>` image it names (the LoadData
    columns FileName_Orig<Channel> mdp writes). Pipelines that take their input otherwise name none here."""
    try:
        text = pipeline.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise MdpError(f"cannot read the CellProfiler pipeline: {exc}", path=pipeline) from None
    return set(re.findall(r"(?<![A-Za-z0-9_])Orig([A-Za-z][A-Za-z0-9_]*)", text))


def module(name: str, number: int, version: int, body: str, notes: str = "[]") -> str:
    """One module of a .cppipe: its header line, then `body` (setting lines, each starting with a newline)."""
    return _HEAD.format(name=name, n=number, v=version, notes=notes) + body


def loaddata_module(number: int, file_name: str, notes: str) -> str:
    """LoadData reading `file_name` (the CSV mdp writes) from the default input folder, images loaded from it."""
    return module("LoadData", number, 6, f"""
    Input data file location:Default Input Folder|
    Name of the file:{file_name}
    Load images based on this data?:Yes
    Base image location:None|
    Process just a range of rows?:No
    Rows to process:1,100000
    Group images by metadata?:No
    Select metadata tags for grouping:
    Rescale intensities?:Yes""", notes)


def illumination_pipeline(channels: tuple[str, ...] | list[str], filter_size: int = 50) -> str:
    modules = [loaddata_module(1, "load_data.csv",
                               "['mdp writes the LoadData CSV from raw_images (Orig<channel>), one group per plate']")]
    number = 2
    for channel in channels:
        modules.append(module("CorrectIlluminationCalculate", number, 2, f"""
    Select the input image:Orig{channel}
    Name the output image:Illum{channel}
    Select how the illumination function is calculated:Regular
    Dilate objects in the final averaged image?:No
    Dilation radius:1
    Block size:60
    Rescale the illumination function?:Yes
    Calculate function for each image individually, or based on all images?:All: Across cycles
    Smoothing method:Median Filter
    Method to calculate smoothing filter size:Manually
    Approximate object diameter:10
    Smoothing filter size:{filter_size}
    Retain the averaged image?:No
    Name the averaged image:Illum{channel}Avg
    Retain the dilated image?:No
    Name the dilated image:Illum{channel}Dilated
    Automatically calculate spline parameters?:Yes
    Background mode:auto
    Number of spline points:5
    Background threshold:2.0
    Image resampling factor:2.0
    Maximum number of iterations:40
    Residual value for convergence:0.001""", "['One function per channel from all of the plate\\'s images (CorrectIlluminationCalculate, All)']"))
        number += 1
    for channel in channels:
        modules.append(module("SaveImages", number, 16, f"""
    Select the type of image to save:Image
    Select the image to save:Illum{channel}
    Select method for constructing file names:Single name
    Select image name for file prefix:Orig{channel}
    Enter single file name:Illum{channel}
    Number of digits:4
    Append a suffix to the image file name?:No
    Text to append to the image name:
    Saved file format:npy
    Output file location:Default Output Folder|
    Image bit depth:32-bit floating point
    Overwrite existing files without warning?:Yes
    When to save:Last cycle
    Record the file and path information to the saved image?:No
    Create subfolders in the output folder?:No
    Base image folder:Elsewhere...|
    How to save the series:T (Time)
    Save with lossless compression?:No"""))
        number += 1
    header = ("CellProfiler Pipeline: http://www.cellprofiler.org\nVersion:5\nDateRevision:400\nGitHash:\n"
              f"ModuleCount:{len(modules)}\nHasImagePlaneDetails:False\n")
    return header + "\n" + "\n".join(module + "\n" for module in modules)


def missing_pipeline_channels(pipeline: Path, channels: set[str]) -> list[str]:
    """The channels the analysis pipeline reads that a plate does not have."""
    return sorted(pipeline_input_channels(pipeline) - channels)
