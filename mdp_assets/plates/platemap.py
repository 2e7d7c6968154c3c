"""Platemaps: which well holds which perturbation, as Metadata_ columns (pycytominer's convention)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mdp_assets.errors import MdpError
from mdp_assets.plates.naming import normalize_well

_WELL_COLUMN_CANDIDATES = ("well_position", "Well", "well", "WellName", "Metadata_Well", "Metadata_well_position")


def metadata_name(column: str) -> str:
    """pycytominer's rule: platemap columns get a Metadata_ prefix unless they already carry one."""
    return column if column.startswith("Metadata_") else f"Metadata_{column}"


def read_platemap(path: Path, well_column: str | None = None) -> pd.DataFrame:
    """Read a platemap CSV/TSV (a leading byte-order mark is tolerated) into Metadata_ columns.

    The result has one row per well, `Metadata_Well` in the zero-padded form (B07), and every other
    platemap column prefixed with Metadata_ (so `genotype` becomes `Metadata_genotype`).
    """
    try:
        separator = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
        table = pd.read_csv(path, sep=separator, dtype=str, encoding="utf-8-sig", keep_default_na=False)
    except FileNotFoundError:
        raise MdpError("platemap not found", path=path) from None
    except Exception as exc:
        raise MdpError(f"platemap cannot be read as CSV: {exc}", path=path) from exc
    table.columns = [c.strip() for c in table.columns]
    if well_column is None:
        well_column = next((c for c in _WELL_COLUMN_CANDIDATES if c in table.columns), None)
        if well_column is None:
            raise MdpError(
                f"platemap has no well column (looked for {list(_WELL_COLUMN_CANDIDATES)}; "
                f"found {list(table.columns)}); set platemap_well_column in the manifest",
                path=path,
            )
    elif well_column not in table.columns:
        raise MdpError(f"platemap has no column {well_column!r}; found {list(table.columns)}", path=path)
    if table.empty:
        raise MdpError("platemap has no rows", path=path)
    try:
        wells = table[well_column].map(normalize_well)
    except MdpError as exc:
        raise MdpError(f"column {well_column!r}: {exc}", path=path) from None
    if wells.duplicated().any():
        raise MdpError(f"wells listed twice: {sorted(set(wells[wells.duplicated()]))}", path=path)
    annotations = table.drop(columns=[well_column])
    # Row/column helper columns duplicate the well; keep them, prefixed, as pycytominer does.
    annotations.columns = [metadata_name(c) for c in annotations.columns]
    annotations.insert(0, "Metadata_Well", wells.to_numpy())
    return annotations.reset_index(drop=True)
