"""Writes mdp_assets/pipelines/examples/NF1_analysis_3channel_loaddata.cppipe: the NF1 Schwann cell lab's analysis
pipeline (WayScience/nf1_schwann_cell_painting_data @ c83ad2ad, BSD-3, `2.cellprofiler_analysis/
NF1_analysis_3channel.cppipe`) taking its input the Broad / JUMP way instead of through NamesAndTypes.

Its four input modules (Images, Metadata, NamesAndTypes, Groups) become LoadData (`FileName_Orig<Channel>`,
`PathName_Orig<Channel>`, `FileName_Illum<Channel>`, `PathName_Illum<Channel>`, Metadata_ columns, as in the Cell
Painting Gallery's `load_data_with_illum.csv`) and CorrectIlluminationApply (each raw channel divided by the
illumination function LoadData loads, as the JUMP analysis pipelines do), so the lab's modules after them read
the DAPI, GFP and RFP images they always read. Nuclei and Cells label images are saved as 16-bit TIFFs named from
the Batch, Plate, Well and Site metadata. Every other module is the lab's, byte for byte.

Beside it, NF1_illum_3channel_loaddata.cppipe: mdp's default illumination pipeline for DAPI, GFP and RFP (LoadData,
CorrectIlluminationCalculate "All: Across cycles" per channel) smoothing by a polynomial fit and saving the
functions under the gallery's names, `\g<Plate>_Illum<Channel>.npy`.

    python tools/nf1_loaddata_pipeline.py [NF1_analysis_3channel.cppipe]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from mdp_assets.engines.cellprofiler.pipelines import illumination_pipeline, loaddata_module, module  # noqa: E402
SOURCE = ROOT.parent / "shared" / "realdata" / "nf1-schwann-metadata" / "2.cellprofiler_analysis" / "NF1_analysis_3channel.cppipe"
TARGET = ROOT / "mdp_assets" / "pipelines" / "examples" / "NF1_analysis_3channel_loaddata.cppipe"
ILLUM_TARGET = TARGET.with_name("NF1_illum_3channel_loaddata.cppipe")
CHANNELS = ("DAPI", "GFP", "RFP")
INPUT_MODULES = ("Images", "Metadata", "NamesAndTypes", "Groups")


def _correct() -> str:
    body = "".join(f"""
    Select the input image:Orig{c}
    Name the output image:{c}
    Select the illumination function:Illum{c}
    Select how the illumination function is applied:Divide""" for c in CHANNELS) + (
        "\n    Set output image values less than 0 equal to 0?:No\n    Set output image values greater than 1 equal to 1?:No")
    return body


def _labels(objects: str) -> list[tuple[str, int, str]]:
    convert = f"""
    Select the input objects:{objects}
    Name the output image:{objects}Labels
    Select the color format:uint16
    Select the colormap:Default"""
    save = f"""
    Select the type of image to save:Image
    Select the image to save:{objects}Labels
    Select method for constructing file names:Single name
    Select image name for file prefix:DAPI
    Enter single file name:\\g<Batch>_\\g<Plate>_\\g<Well>_\\g<Site>_{objects}
    Number of digits:4
    Append a suffix to the image file name?:No
    Text to append to the image name:
    Saved file format:tiff
    Output file location:Default Output Folder|
    Image bit depth:16-bit integer
    Overwrite existing files without warning?:Yes
    When to save:Every cycle
    Record the file and path information to the saved image?:No
    Create subfolders in the output folder?:No
    Base image folder:Elsewhere...|
    How to save the series:T (Time)
    Save with lossless compression?:No"""
    return [("ConvertObjectsToImage", 1, convert), ("SaveImages", 16, save)]


def build(source_text: str) -> str:
    header, _, body = source_text.partition("\n\n")
    blocks = [b for b in re.split(r"\n(?=[A-Za-z]+:\[module_num:)", body.strip("\n")) if b.strip()]
    lab = [b for b in blocks if b.split(":", 1)[0] not in INPUT_MODULES]
    export = [b for b in lab if b.startswith("ExportToDatabase:")]
    measured = [b for b in lab if not b.startswith("ExportToDatabase:")]
    out = [loaddata_module(1, "load_data_with_illum.csv",
                           "['mdp (or the lab) writes load_data_with_illum.csv: Orig and Illum images, Metadata_ columns']") + "\n",
           module("CorrectIlluminationApply", 2, 5, _correct(),
                  "['Each raw channel divided by its plate illumination function (LoadData Illum)']") + "\n"]
    number = 3
    for block in measured:  # the lab's modules, renumbered only
        out.append(re.sub(r"module_num:\d+", f"module_num:{number}", block, count=1).rstrip("\n") + "\n")
        number += 1
    for name, version, text in _labels("Nuclei") + _labels("Cells"):
        out.append(module(name, number, version, text) + "\n")
        number += 1
    for block in export:
        out.append(re.sub(r"module_num:\d+", f"module_num:{number}", block, count=1).rstrip("\n") + "\n")
        number += 1
    header = re.sub(r"ModuleCount:\d+", f"ModuleCount:{len(out)}", header)
    return header + "\n\n" + "\n".join(out)


def build_illumination() -> str:
    """The JUMP way to the functions: one per channel over all of the plate's images, smoothed by a polynomial fit
    (a few images hold too few nuclei for a median filter to see past them), saved as <Plate>_Illum<Channel>.npy."""
    text = illumination_pipeline(CHANNELS).replace("Smoothing method:Median Filter", "Smoothing method:Fit Polynomial")
    for channel in CHANNELS:
        text = text.replace(f"Enter single file name:Illum{channel}\n", f"Enter single file name:\\g<Plate>_Illum{channel}\n")
    return text


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else SOURCE
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_text(build(source.read_text()))
    ILLUM_TARGET.write_text(build_illumination())
    print(TARGET, ILLUM_TARGET)


if __name__ == "__main__":
    main()
