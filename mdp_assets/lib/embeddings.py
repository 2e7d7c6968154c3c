"""Deterministic embeddings of profiles: principal components fitted per plate.

The representation is PCA on the normalized, feature-selected profiles of one plate: missing values are
set to 0 (the normalized centre), the data are centred, and components come from a full SVD. The sign of
every component is fixed so that its largest-magnitude loading is positive, which makes the embedding
identical on every run and machine for the same input. Components are named `Embedding_PC<k>`.
Per-plate PCA spaces are not comparable across plates; consensus-level analysis uses the profiles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mdp_assets.lib.profiles import infer_features, metadata_columns


@dataclass(frozen=True)
class Embedding:
    table: pd.DataFrame
    explained_variance_ratio: list[float]


def pca_embedding(profiles: pd.DataFrame, n_components: int = 8) -> Embedding:
    features = infer_features(profiles, "embedding")
    values = np.nan_to_num(profiles[features].to_numpy(dtype=np.float64), nan=0.0)
    values = values - values.mean(axis=0)
    k = max(0, min(n_components, values.shape[0], values.shape[1]))
    _, singular, components = np.linalg.svd(values, full_matrices=False)
    components = components[:k]
    signs = np.sign(components[np.arange(k), np.abs(components).argmax(axis=1)])
    components = components * np.where(signs == 0, 1.0, signs)[:, None]
    scores = values @ components.T
    total = float((singular**2).sum())
    ratio = [float(s**2 / total) if total > 0 else 0.0 for s in singular[:k]]
    embedding = pd.DataFrame(scores, columns=[f"Embedding_PC{i + 1}" for i in range(k)], index=profiles.index)
    table = pd.concat([profiles[metadata_columns(profiles)], embedding], axis=1)
    return Embedding(table=table.reset_index(drop=True), explained_variance_ratio=ratio)
