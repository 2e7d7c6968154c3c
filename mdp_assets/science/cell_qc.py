"""Single-cell QC by coSMicQC's method (WayScience/coSMicQC, `label_outliers`): outlier cells flagged per plate.

A *condition* names CellProfiler features and a threshold for each, in standard deviations from the plate's
mean (z-scores as scipy's `zscore` computes them, population spread): a positive threshold flags cells above it, a negative one
cells below it, and a cell is an outlier of the condition when it is beyond every threshold the condition names.
coSMicQC's default conditions (its `qc_nuclei_thresholds_default.yml`) find small, misshapen nuclei
(debris, fragments), very elongated nuclei and large misshapen ones (merged nuclei).

Flags are `Metadata_` columns named as coSMicQC names them: `Metadata_cqc_<condition>_is_outlier`, with each
feature's z-score as `Metadata_cqc_<condition>_<feature>_zscore`, and `Metadata_cqc_is_outlier` for a cell
flagged by any condition. One difference from coSMicQC: a cell missing a feature is not scored on it (scipy's
nan_policy="omit"); coSMicQC's `label_outliers` then scores no cell of the plate at all. On complete features
the two agree cell for cell.

coSMicQC itself cannot be installed beside mdp's pins (it requires pyarrow < 23), so this is its documented
method; `mdp_assets_tests/test_cell_qc.py` checks it against coSMicQC 1.1.2's own output on real NF1 cells.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mdp_assets.errors import MdpError
from mdp_assets.science.parquet_profiles import ROW_GROUP_ROWS
from mdp_assets.science.tables import BatchWriter

# coSMicQC 1.1.2, src/cosmicqc/data/qc_nuclei_thresholds_default.yml (BSD-3-Clause).
DEFAULT_CONDITIONS: dict[str, dict[str, float]] = {
    "small_and_low_formfactor_nuclei": {"Nuclei_AreaShape_Area": -1.0, "Nuclei_AreaShape_FormFactor": -1.0},
    "elongated_nuclei": {"Nuclei_AreaShape_Eccentricity": 2.0},
    "large_nuclei": {"Nuclei_AreaShape_Area": 2.0, "Nuclei_AreaShape_FormFactor": -2.0},
}
OUTLIER = "Metadata_cqc_is_outlier"
CELL_KEYS = ("Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_ObjectNumber")


def outlier_column(condition: str) -> str:
    return f"Metadata_cqc_{condition}_is_outlier"


def zscore_column(condition: str, feature: str) -> str:
    return f"Metadata_cqc_{condition}_{feature}_zscore"


def condition_features(conditions: dict[str, dict[str, float]]) -> list[str]:
    return list(dict.fromkeys(f for thresholds in conditions.values() for f in thresholds))


def check_conditions(conditions: dict[str, dict[str, float]]) -> None:
    for name, thresholds in conditions.items():
        if not thresholds:
            raise MdpError(f"cell QC condition {name!r} names no feature")
        zero = [f for f, t in thresholds.items() if t == 0]
        if zero:
            raise MdpError(f"cell QC condition {name!r}: a threshold of 0 would flag half the cells ({zero})")


def label_outliers(cells: pd.DataFrame, conditions: dict[str, dict[str, float]]) -> pd.DataFrame:
    """One row per cell (same index as `cells`): every condition's z-scores and outlier flag, and OUTLIER."""
    check_conditions(conditions)
    missing = [f for f in condition_features(conditions) if f not in cells.columns]
    if missing:
        raise MdpError(f"cell QC: the cells have no feature {missing} (set cell_qc.conditions in mdp.yaml to "
                       "features the engine measures)")
    scores = {f: _zscores(cells[f]) for f in condition_features(conditions)}
    out = pd.DataFrame(index=cells.index)
    for name, thresholds in conditions.items():
        flagged = np.ones(len(cells), dtype=bool)
        for feature, threshold in thresholds.items():
            z = scores[feature]
            out[zscore_column(name, feature)] = z
            with np.errstate(invalid="ignore"):
                flagged &= (z > threshold) if threshold > 0 else (z < threshold)
        out[outlier_column(name)] = flagged
    flags = [outlier_column(name) for name in conditions]
    out[OUTLIER] = out[flags].any(axis=1) if flags else False
    return out


def _zscores(values: pd.Series) -> np.ndarray:
    array = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    if len(array) == 0:
        return array
    # scipy.stats.zscore(array, nan_policy="omit"), without importing scipy.stats (0.7 s in every process).
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # every value missing: NaN, as scipy gives
        return (array - np.nanmean(array)) / np.nanstd(array)


def write_cell_qc(features: Path, conditions: dict[str, dict[str, float]], target: Path) -> dict[str, object]:
    """The QC table of a plate's stored single cells, in their stored order, written to `target`: the cell's
    identifying Metadata_ columns, then the flags. Only the named features are read whole (8 bytes a cell each,
    the z-scores need the plate's spread); the identifying columns a row group at a time. Returns the figures:
    cells, flagged cells, flagged per condition."""
    check_conditions(conditions)
    parquet = pq.ParquetFile(features)
    schema = parquet.schema_arrow
    keys = [k for k in CELL_KEYS if k in schema.names]
    for feature in condition_features(conditions):
        if feature not in schema.names:
            raise MdpError(f"cell QC: the plate's single cells have no feature {feature!r} (set cell_qc.conditions "
                           "in mdp.yaml to features the engine measures)", path=features)
    scored = pq.read_table(features, columns=condition_features(conditions)).to_pandas()
    flags = label_outliers(scored, conditions)
    del scored
    start = 0
    with BatchWriter(target) as writer:
        for group in range(parquet.metadata.num_row_groups):
            cells = parquet.read_row_group(group, columns=keys).to_pandas()
            part = flags.iloc[start : start + len(cells)].reset_index(drop=True)
            start += len(cells)
            writer.write(pd.concat([cells, part], axis=1))
        if not parquet.metadata.num_row_groups:
            writer.write(pd.concat([schema.empty_table().select(keys).to_pandas(), flags], axis=1))
    return {"cells": len(flags), "flagged_cells": int(flags[OUTLIER].sum()),
            **{f"flagged_{name}": int(flags[outlier_column(name)].sum()) for name in conditions}}


def outlier_flags(qc: Path) -> np.ndarray:
    """The stored QC table's OUTLIER flags (one byte a cell), in the single cells' order."""
    return pq.read_table(qc, columns=[OUTLIER]).column(0).to_numpy(zero_copy_only=False).astype(bool)


def well_flags(qc: Path) -> pd.DataFrame:
    """Metadata_Well and OUTLIER of every cell of a stored QC table (what `flagged_by_well` needs)."""
    return pq.read_table(qc, columns=["Metadata_Well", OUTLIER]).to_pandas()


def _keys_digest(path: Path, keys: list[str]) -> str:
    """A digest of the identifying columns' values, row by row, read a row group at a time."""
    parquet = pq.ParquetFile(path)
    digest = hashlib.sha256()
    for group in range(parquet.metadata.num_row_groups):
        frame = parquet.read_row_group(group, columns=keys).to_pandas()
        digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def flagged_by_well(qc: pd.DataFrame) -> pd.DataFrame:
    """Per well: cells, flagged cells and the flagged fraction, the worst wells first."""
    if qc.empty:
        return pd.DataFrame(columns=["Metadata_Well", "cells", "flagged", "flagged_fraction"])
    table = qc.groupby("Metadata_Well", observed=True)[OUTLIER].agg(cells="size", flagged="sum").reset_index()
    table["flagged_fraction"] = table["flagged"] / table["cells"]
    return table.sort_values(["flagged_fraction", "Metadata_Well"], ascending=[False, True], ignore_index=True)


def write_kept_cells(features: Path, qc: Path, target: Path) -> int:
    """Copy the stored single cells to `target` without the cells QC flagged, a row group at a time (memory
    follows the row-group size), atomically. The stored QC table `qc` must list the same cells in the same order
    (checked on the identifying columns, a row group at a time). Returns how many cells were left out."""
    parquet = pq.ParquetFile(features)
    listed = pq.ParquetFile(qc)
    if parquet.metadata.num_rows != listed.metadata.num_rows:
        raise MdpError(f"cell QC lists {listed.metadata.num_rows} cells but the single cells hold "
                       f"{parquet.metadata.num_rows}; single_cell_qc must be made again from these single_cell_features",
                       path=features)
    keys = [k for k in CELL_KEYS if k in listed.schema_arrow.names and k in parquet.schema_arrow.names]
    if _keys_digest(features, keys) != _keys_digest(qc, keys):
        raise MdpError("cell QC lists other cells than the single cells (or in another order); single_cell_qc "
                       "must be made again from these single_cell_features", path=features)
    flagged = outlier_flags(qc)
    partial = target.with_name(f".{target.name}.partial")
    start = 0
    try:
        with pq.ParquetWriter(partial, parquet.schema_arrow) as writer:
            for group in range(parquet.metadata.num_row_groups):
                table = parquet.read_row_group(group)
                keep = ~flagged[start : start + table.num_rows]
                start += table.num_rows
                writer.write_table(table.filter(pa.array(keep)), row_group_size=ROW_GROUP_ROWS)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return int(flagged.sum())


@contextmanager
def cells_for_profiles(features: Path, qc: Path, exclude_flagged: bool, scratch: Path) -> Iterator[tuple[Path, int]]:
    """The single cells profiles are made from, and how many flagged cells were left out: the stored file itself
    when nothing is to be left out, else a copy without the flagged cells in a scratch folder under `scratch`
    (removed afterwards). `qc` is the stored QC table."""
    if not exclude_flagged or not outlier_flags(qc).any():
        yield features, 0
        return
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cells-after-qc-", dir=scratch) as folder:
        target = Path(folder) / features.name
        left_out = write_kept_cells(features, qc, target)
        yield target, left_out
