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
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mdp_assets.science.parquet_profiles import DEFAULT_MEMORY_BUDGET, ParquetProfiles
from mdp_assets.science.profiles import infer_features, metadata_columns


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
