"""Real single cells of the NF1 Schwann cell screen (WayScience): CellProfiler's SQLite output of plate 1
(8 wells, 4 sites each; 433 nuclei, 242 cells), from CytoTable's test data, with the lab's platemap
(genotype WT in column 6, Null in column 7: four replicate wells each)."""

from __future__ import annotations

import sqlite3

import pandas as pd

from mdp_assets_tests.conftest import REALDATA

DATABASE = REALDATA / "cytotable-cp-outputs" / "tests" / "data" / "cellprofiler" / "NF1_SchwannCell_data" / "all_cellprofiler.sqlite"
PLATEMAP = REALDATA / "nf1-schwann-metadata" / "0.download_data" / "metadata" / "platemap_NF1_plate1.csv"
WT = "Metadata_genotype == 'WT'"


def _read(table: str) -> pd.DataFrame:
    with sqlite3.connect(f"file:{DATABASE}?mode=ro", uri=True) as connection:
        return pd.read_sql(f"select * from {table}", connection)  # noqa: S608 (fixed table names)


def nuclei() -> pd.DataFrame:
    """Per_Nuclei as CellProfiler wrote it (ImageNumber and Nuclei_Number_Object_Number identify a nucleus)."""
    return _read("Per_Nuclei")


def single_cells() -> pd.DataFrame:
    """One row per cell, its cytoplasm and its nucleus joined as pycytominer/CytoTable join them, with the
    plate, well and site and the platemap's genotype as Metadata_ columns; object ids dropped."""
    image = _read("Per_Image")[["ImageNumber", "Image_Metadata_Plate", "Image_Metadata_Well", "Image_Metadata_Site"]]
    image.columns = ["ImageNumber", "Metadata_Plate", "Metadata_Well", "Metadata_Site"]
    cells = _read("Per_Cells").merge(
        _read("Per_Cytoplasm"), left_on=["ImageNumber", "Cells_Number_Object_Number"],
        right_on=["ImageNumber", "Cytoplasm_Parent_Cells"],
    ).merge(nuclei(), left_on=["ImageNumber", "Cells_Parent_Nuclei"], right_on=["ImageNumber", "Nuclei_Number_Object_Number"])
    cells = cells.merge(image, on="ImageNumber")
    platemap = pd.read_csv(PLATEMAP).rename(columns={"well_position": "Metadata_Well", "genotype": "Metadata_genotype"})
    cells = cells.merge(platemap[["Metadata_Well", "Metadata_genotype"]], on="Metadata_Well")
    ids = [c for c in cells.columns if "Number" in c or "Parent" in c or "Children" in c]
    cells = cells.drop(columns=ids)
    meta = [c for c in cells.columns if c.startswith("Metadata_")]
    return cells[meta + [c for c in cells.columns if c not in meta]]
