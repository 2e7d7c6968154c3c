"""Run coSMicQC (in its own environment: it requires pyarrow < 23, mdp pins newer) on real NF1 cells and record
which cells each condition flags, as `mdp_assets_tests/data/cosmicqc_nf1_reference.json` for test_cell_qc.py.

    python3.11 -m venv /tmp/cosmicqc && /tmp/cosmicqc/bin/pip install cosmicqc==1.1.2
    /tmp/cosmicqc/bin/python tools/cosmicqc_reference.py
"""

import json
import sqlite3
from pathlib import Path

import cosmicqc
import pandas as pd

REPOSITORY = Path(__file__).resolve().parents[1]
REAL = REPOSITORY.parent / "shared" / "realdata"
OUTPUT = REPOSITORY / "mdp_assets_tests" / "data" / "cosmicqc_nf1_reference.json"
DB = REAL / "cytotable-cp-outputs/tests/data/cellprofiler/NF1_SchwannCell_data/all_cellprofiler.sqlite"
PLATE2 = REAL / "nf1-plate2-cytodataframe/NF1_cellpainting_data_shrunken/Plate_2_with_image_data_shrunken.parquet"
CUSTOM = {"bright_small_nuclei": {"Nuclei_Intensity_MeanIntensity_DAPI": 1.5, "Nuclei_AreaShape_Area": -0.5},
          "elongated_nuclei_loose": {"Nuclei_AreaShape_Eccentricity": 1.5},
          "dim_gfp_nuclei": {"Nuclei_Intensity_MeanIntensity_GFP": -1}}


def flagged(result, ids):
    return {c.removeprefix("Metadata_cqc_").removesuffix("_is_outlier"): sorted(ids(result[result[c]]))
            for c in result.columns if c.startswith("Metadata_cqc_") and c.endswith("_is_outlier")}


def main() -> None:
    with sqlite3.connect(f"file:{DB}?mode=ro", uri=True) as connection:
        nuclei = pd.read_sql("select * from Per_Nuclei", connection)
    nucleus_ids = lambda f: [[int(a), int(b)] for a, b in zip(f.ImageNumber, f.Nuclei_Number_Object_Number)]  # noqa: E731
    default = flagged(cosmicqc.label_outliers(nuclei), nucleus_ids)
    custom = flagged(cosmicqc.label_outliers(nuclei, feature_thresholds=CUSTOM), nucleus_ids)
    plate2 = pd.read_parquet(PLATE2)
    plate2_flags = flagged(cosmicqc.label_outliers(plate2), lambda f: [int(i) for i in f.index])
    out = {
        "tool": f"coSMicQC {cosmicqc.__version__}",
        "made_by": "cosmicqc.label_outliers(cells) and label_outliers(cells, feature_thresholds=custom_conditions)",
        "nf1_schwann_nuclei": {
            "source": "cytotable-cp-outputs/tests/data/cellprofiler/NF1_SchwannCell_data/all_cellprofiler.sqlite, "
                      "table Per_Nuclei",
            "cells": len(nuclei), "cell_id": ["ImageNumber", "Nuclei_Number_Object_Number"],
            "default_conditions": default, "custom_conditions": CUSTOM, "custom": custom},
        "nf1_plate2_cells": {
            "source": "nf1-plate2-cytodataframe/NF1_cellpainting_data_shrunken/Plate_2_with_image_data_shrunken.parquet",
            "cells": len(plate2), "cell_id": "row position", "default_conditions": plate2_flags},
    }
    OUTPUT.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
