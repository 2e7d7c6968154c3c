"""Deterministic embeddings of profiles: principal components fitted per plate.

The representation is PCA on the normalized, feature-selected profiles of one plate: missing values are
set to 0 (the normalized centre), the data are centred, and the components are the leading eigenvectors of
the features' covariance (the same vectors a full SVD gives). The covariance is a sum over rows, so a plate
of any size is embedded a batch of rows at a time (`pca_embedding_parquet`); a table in memory goes through
the same arithmetic (`pca_embedding`). The sign of every component is fixed so that its largest-magnitude
loading is positive, which makes the embedding identical on every run for the same input. Components are
named `Embedding_PC<k>`; a plate gives at most one component fewer than its rows, and none when no feature
survived selection (the metadata then say why). Per-plate PCA spaces are not comparable across plates; consensus-level analysis uses
the profiles.

`write_h5ad` writes the same embedding as AnnData for the single-cell tools (scanpy and the scverse): X the
`Embedding_` columns, obs the `Metadata_` columns, a column at a time, so memory holds the embedding and
one metadata column, never the plate's whole table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from anndata.io import write_elem

from mdp_assets.science.parquet_profiles import DEFAULT_MEMORY_BUDGET, ParquetProfiles
from mdp_assets.science.profiles import infer_features, metadata_columns

H5AD_FILE = "embeddings.h5ad"
EMBEDDING_PREFIX = "Embedding_"
CELL_ID = ("Metadata_Well", "Metadata_Site", "Metadata_ObjectNumber")


@dataclass(frozen=True)
class Embedding:
    table: pd.DataFrame
    explained_variance_ratio: list[float]


@dataclass(frozen=True)
class PrincipalComponents:
    mean: np.ndarray
    components: np.ndarray  # k x features, sign-fixed
    explained_variance_ratio: list[float]

    @property
    def names(self) -> list[str]:
        return [f"Embedding_PC{i + 1}" for i in range(len(self.components))]

    def scores(self, values: np.ndarray) -> np.ndarray:
        return (np.nan_to_num(values, nan=0.0) - self.mean) @ self.components.T


class CovarianceAccumulator:
    """Column sums and the cross-product of rows (missing values as 0), added a batch of rows at a time.

    Rows are shifted by the first batch's column means before they are summed, so the covariance keeps its
    precision when the means are large next to the spread."""

    def __init__(self, width: int) -> None:
        self.rows = 0
        self.shift: np.ndarray | None = None
        self.sums = np.zeros(width)
        self.products = np.zeros((width, width))

    def add(self, values: np.ndarray) -> None:
        values = np.nan_to_num(values, nan=0.0)
        if self.shift is None:
            self.shift = values.mean(axis=0) if len(values) else np.zeros(values.shape[1])
        shifted = values - self.shift
        self.rows += len(values)
        self.sums += shifted.sum(axis=0)
        self.products += shifted.T @ shifted

    def fit(self, n_components: int) -> PrincipalComponents:
        width = len(self.sums)
        shift = self.shift if self.shift is not None else np.zeros(width)
        offset = self.sums / max(self.rows, 1)
        scatter = self.products - self.rows * np.outer(offset, offset)  # sum of squared deviations
        scatter = (scatter + scatter.T) / 2
        eigenvalues, eigenvectors = np.linalg.eigh(scatter)
        order = np.argsort(eigenvalues, kind="stable")[::-1]
        # n rows span at most n - 1 directions: one well (or none) has no principal component to give.
        k = max(0, min(n_components, self.rows - 1, width))
        components = eigenvectors[:, order[:k]].T.reshape(k, width)
        if k == 0:
            return PrincipalComponents(mean=shift + offset, components=components, explained_variance_ratio=[])
        signs = np.sign(components[np.arange(k), np.abs(components).argmax(axis=1)])
        components = components * np.where(signs == 0, 1.0, signs)[:, None]
        total = float(np.trace(scatter))
        leading = np.clip(eigenvalues[order[:k]], 0.0, None)
        ratio = [float(v / total) if total > 0 else 0.0 for v in leading]
        return PrincipalComponents(mean=shift + offset, components=components, explained_variance_ratio=ratio)


def pca_embedding(profiles: pd.DataFrame, n_components: int = 8) -> Embedding:
    features = infer_features(profiles, "embedding")
    values = profiles[features].to_numpy(dtype=np.float64)
    accumulator = CovarianceAccumulator(len(features))
    accumulator.add(values)
    pca = accumulator.fit(n_components)
    embedding = pd.DataFrame(pca.scores(values), columns=pca.names, index=profiles.index)
    table = pd.concat([profiles[metadata_columns(profiles)], embedding], axis=1)
    return Embedding(table=table.reset_index(drop=True), explained_variance_ratio=pca.explained_variance_ratio)


def pca_embedding_parquet(
    source: Path, target: Path, n_components: int = 8, memory_budget: int = DEFAULT_MEMORY_BUDGET
) -> list[float]:
    """`pca_embedding` from one Parquet file to another, a batch of rows at a time: one pass for the
    covariance, one to write the Metadata_ columns and the scores. Returns the explained variance ratios."""
    plate = ParquetProfiles.open(source, "embedding")
    batch_rows = plate.rows_per_batch(memory_budget, len(plate.features))
    accumulator = CovarianceAccumulator(len(plate.features))
    for _, values in plate.row_batches(plate.features, batch_rows):
        accumulator.add(values)
    pca = accumulator.fit(n_components)
    plate.write_transformed(target, plate.features, pca.names, pca.scores, batch_rows)
    return pca.explained_variance_ratio


def _obs_column(values: pd.Series) -> np.ndarray | pd.Categorical:
    """A Parquet column as AnnData keeps obs: numbers and booleans as they are, anything else as categories
    of its text (AnnData turns strings into categories itself), missing values kept missing."""
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return values.to_numpy()
    return pd.Categorical([str(v) if present else None for v, present in zip(values, values.notna())])


def write_h5ad(table: Path, target: Path, uns: dict | None = None) -> tuple[int, int]:
    """An embeddings Parquet table (`Metadata_` and `Embedding_` columns) as an AnnData `.h5ad` file:
    X = the embedding (cells x components, float64 as stored), var = the component names, obs = the
    `Metadata_` columns (obs names `<well>_s<site>_<object>` where the table has them, else the row number).
    Returns (observations, variables)."""
    schema = pq.read_schema(table)
    embedding = [c for c in schema.names if c.startswith(EMBEDDING_PREFIX)]
    metadata = [c for c in schema.names if c.startswith("Metadata_")]
    x = pq.read_table(table, columns=embedding).to_pandas().to_numpy(dtype=np.float64) if embedding else None
    rows = pq.read_metadata(table).num_rows
    if set(CELL_ID) <= set(metadata):
        ids = pq.read_table(table, columns=list(CELL_ID)).to_pandas()
        names = (ids[CELL_ID[0]].astype(str) + "_s" + ids[CELL_ID[1]].astype(str) + "_"
                 + ids[CELL_ID[2]].astype(str))
        obs_names = names if names.is_unique else pd.Series(range(rows)).astype(str)
    else:
        obs_names = pd.Series(range(rows)).astype(str)
    adata = ad.AnnData(X=x if x is not None else np.zeros((rows, 0)), obs=pd.DataFrame(index=obs_names.to_numpy()),
                       var=pd.DataFrame(index=embedding), uns=uns or {})
    adata.write_h5ad(target)
    del adata, x
    with h5py.File(target, "a") as file:
        obs = file["obs"]
        for column in metadata:
            write_elem(obs, column, _obs_column(pq.read_table(table, columns=[column]).column(0).to_pandas()))
        obs.attrs["column-order"] = np.array(metadata, dtype=object) if metadata else np.array([], dtype="S")
    return rows, len(embedding)
