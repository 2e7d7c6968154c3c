"""A plate's single-cell levels run with a memory limit below the size of the plate's single-cell table.

A synthetic plate (tools/synthetic_single_cells.py: 160 sites of 1,024 cells, CellProfiler-style object tables
of 300 features per compartment) is written; then each level runs in its own process under RLIMIT_DATA:
single_cell_features (from the object tables), single_cell_qc, single_cell_crops, single_cell_profiles and the
well aggregates, with the functions the assets call. The limit is below the table's float64 size, and the old
way (the plate's table in pandas at once) fails under it. Outputs are checked against small reference
computations: one site's cells through the whole-table code, the QC flags from the scored columns alone, a
site's crops cut directly, one well's medians.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import tifffile
import zarr

from mdp_assets.engines.cellprofiler.outputs import CellProfilerOutput, features_from_cellprofiler
from mdp_assets.science.cell_qc import DEFAULT_CONDITIONS, OUTLIER, label_outliers
from mdp_assets.science.crops import crop_cells
from mdp_assets.science.features import annotate_cells
from mdp_assets.science.image_store import read_stack
from tools.synthetic_single_cells import CHANNELS, SyntheticPlate, write_plate

pytestmark = pytest.mark.slow

LIMIT = 900 << 20  # RLIMIT_DATA of every level's process
ROOT = Path(__file__).resolve().parents[1]


def _level(root: Path, level: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "tools.synthetic_single_cells", str(root), level,
                           "--limit-bytes", str(LIMIT), "--memory-bytes", str(128 << 20)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:  # killed by the limit outside Python's reach
        return {"ok": False, "level": level, "error": f"exit {done.returncode}: {done.stderr[-2000:]}"}
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    plate = SyntheticPlate(tmp_path_factory.mktemp("bounded") / "plate", sites=160, grid=32, features=300)
    write_plate(plate)
    return plate


def test_single_cell_levels_run_under_a_limit_below_the_plates_table(plate):
    out = plate.root / "out"
    columns = sum(len(pq.read_schema(plate.tables / f"{n}.parquet")) for n in ("Cells", "Cytoplasm", "Nuclei"))
    table_bytes = plate.cells * columns * 8
    assert LIMIT < table_bytes / 1.25, (LIMIT, table_bytes)

    features = _level(plate.root, "single_cell_features")
    assert features["ok"], features
    stored = pq.ParquetFile(out / "features" / "table.parquet")
    assert features["cells"] == stored.metadata.num_rows == plate.cells
    assert stored.metadata.num_rows * len(stored.schema_arrow) * 8 > LIMIT * 1.25
    # One site through the whole-table code (every object table in pandas): the same rows and values.
    image = pd.read_parquet(plate.tables / "Image.parquet")
    number = int(image["ImageNumber"].iloc[77])
    objects = {n: pd.read_parquet(plate.tables / f"{n}.parquet", filters=[("ImageNumber", "==", number)])
               for n in ("Cells", "Cytoplasm", "Nuclei")}
    site_image = image[image["ImageNumber"] == number].rename(
        columns={"Metadata_Well": "Image_Metadata_Well", "Metadata_Site": "Image_Metadata_Site"})
    expected = annotate_cells(features_from_cellprofiler(CellProfilerOutput(site_image, objects)), plate.wells(),
                              plate.acquisition())
    well, site = site_image["Image_Metadata_Well"].iloc[0], int(site_image["Image_Metadata_Site"].iloc[0])
    ours = pd.read_parquet(out / "features" / "table.parquet",
                           filters=[("Metadata_Well", "==", well), ("Metadata_Site", "==", site)])
    pd.testing.assert_frame_equal(ours.reset_index(drop=True), expected.reset_index(drop=True), check_dtype=False)

    qc = _level(plate.root, "single_cell_qc")
    assert qc["ok"] and qc["cells"] == plate.cells, qc
    scored = pq.read_table(out / "features" / "table.parquet",
                           columns=["Nuclei_AreaShape_Area", "Nuclei_AreaShape_FormFactor",
                                    "Nuclei_AreaShape_Eccentricity"]).to_pandas()
    flags = pq.read_table(out / "cell_qc.parquet", columns=[OUTLIER]).column(0).to_numpy()
    np.testing.assert_array_equal(flags, label_outliers(scored, DEFAULT_CONDITIONS)[OUTLIER].to_numpy())
    assert qc["flagged_cells"] == flags.sum() > 0

    crops = _level(plate.root, "single_cell_crops")
    assert crops["ok"] and crops["cells"] == plate.cells, crops
    store = zarr.open_array(str(out / "crops" / "crops.zarr"), mode="r")
    assert store.dtype == np.uint16 and store.shape == (plate.cells, len(CHANNELS) + 1, 16, 16)
    index = pd.read_parquet(out / "crops" / "index.parquet", columns=["crop_index", "Metadata_Well", "Metadata_Site",
                                                                       "Metadata_ObjectNumber"])
    assert index["crop_index"].tolist() == list(range(plate.cells))
    first = index.iloc[0]
    labels, _ = read_stack(plate.masks_dir / f"{first.Metadata_Well}_s{int(first.Metadata_Site):02d}_masks.tiff")
    raw = np.stack([tifffile.imread(plate.root / "raw" / f"{first.Metadata_Well}_s{int(first.Metadata_Site):02d}_{c}.tiff")
                    for c in CHANNELS])
    site_cells = ours if (first.Metadata_Well, int(first.Metadata_Site)) == (well, site) else pd.read_parquet(
        out / "features" / "table.parquet",
        filters=[("Metadata_Well", "==", first.Metadata_Well), ("Metadata_Site", "==", int(first.Metadata_Site))])
    site_cells = site_cells.sort_values("Metadata_ObjectNumber")
    direct = crop_cells(raw, labels[1], site_cells["Metadata_ObjectNumber"].to_numpy(),
                        site_cells[["Nuclei_AreaShape_Center_X", "Nuclei_AreaShape_Center_Y"]].to_numpy(), 16)
    np.testing.assert_array_equal(store[: len(direct)], direct)

    profiles = _level(plate.root, "single_cell_profiles")
    assert profiles["ok"] and profiles["rows"] == plate.cells - flags.sum() and profiles["left_out"] == flags.sum()

    wells = _level(plate.root, "well_profiles")
    assert wells["ok"] and wells["wells"] == len(plate.wells()), wells
    aggregates = pd.read_parquet(out / "well_aggregates.parquet").set_index("Metadata_Well")
    kept = pq.read_table(out / "features" / "table.parquet", columns=["Metadata_Well", "Cells_Texture_Synthetic_0007"]
                         ).to_pandas()[~flags]
    medians = kept.groupby("Metadata_Well")["Cells_Texture_Synthetic_0007"].median()
    pd.testing.assert_series_equal(aggregates.loc[medians.index, "Cells_Texture_Synthetic_0007"], medians)
    assert (aggregates["Metadata_Object_Count"] == kept.groupby("Metadata_Well").size()).all()

    # The old way, the whole table in pandas, does not fit under the same limit.
    whole = _level(plate.root, "whole_table_in_pandas")
    assert not whole["ok"] and ("MemoryError" in whole["error"] or "exit" in whole["error"]), whole
    peaks = {r["level"]: r["peak_rss_mb"] for r in (features, qc, crops, profiles, wells)}
    print(f"limit {LIMIT >> 20} MB, table {table_bytes >> 20} MB, peak RSS per level (MB): {peaks}")
