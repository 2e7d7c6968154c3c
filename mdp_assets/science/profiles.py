"""Profile operations with pycytominer's semantics: annotate, normalize, feature_select, aggregate, consensus.

Tables follow pycytominer's conventions: `Metadata_` columns describe, every other column is a numeric
feature. These functions work on pandas frames; outputs put the Metadata_ columns first.
`parquet_profiles` runs the same operations over Parquet files, for plates that do not fit in memory.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Literal

import numpy as np
import pandas as pd

from mdp_assets.errors import MdpError

NormalizeMethod = Literal["standardize", "robustize", "mad_robustize"]
FeatureSelectOperation = Literal[
    "variance_threshold", "frequency_threshold", "correlation_threshold", "drop_na_columns", "blocklist",
    "drop_outliers",
]
DEFAULT_SELECT_OPERATIONS: tuple[FeatureSelectOperation, ...] = (
    "variance_threshold",
    "correlation_threshold",
    "drop_na_columns",
    "blocklist",
)
MAD_SCALE = 1.4826  # makes the median absolute deviation a consistent estimator of the standard deviation
EPSILON = 1e-18  # pycytominer's guard against dividing by a zero spread


def metadata_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith("Metadata_")]


def infer_features(table: pd.DataFrame, what: str = "profiles") -> list[str]:
    """Every non-Metadata_ column is a feature; each must be numeric."""
    if not metadata_columns(table):
        raise MdpError(f"{what}: no Metadata_ columns, so wells and plates cannot be told apart")
    features = [c for c in table.columns if not c.startswith("Metadata_")]
    non_numeric = [c for c in features if not pd.api.types.is_numeric_dtype(table[c])]
    if non_numeric:
        raise MdpError(f"{what}: feature columns must be numeric, these are not: {non_numeric[:10]}")
    return features


def _require_rows(table: pd.DataFrame, what: str) -> None:
    if table.empty:
        raise MdpError(f"{what}: the table has no rows (an empty plate?)")


def metadata_first(table: pd.DataFrame) -> pd.DataFrame:
    meta = metadata_columns(table)
    return table[meta + [c for c in table.columns if c not in meta]]


def annotate(profiles: pd.DataFrame, platemap: pd.DataFrame, join_on: str = "Metadata_Well") -> pd.DataFrame:
    """Join platemap annotations (already Metadata_-prefixed) onto profiles; profile columns win."""
    extra = [c for c in platemap.columns if c not in profiles.columns or c == join_on]
    return metadata_first(profiles.merge(platemap[extra], on=join_on, how="left"))


def normalize(
    profiles: pd.DataFrame,
    features: Sequence[str] | None = None,
    samples: str = "all",
    method: NormalizeMethod = "standardize",
) -> pd.DataFrame:
    """Centre and scale every feature by statistics of the `samples` rows (a pandas query, or 'all')."""
    _require_rows(profiles, "normalize")
    features = list(features) if features is not None else infer_features(profiles, "normalize")
    reference = profiles if samples == "all" else profiles.query(samples)
    if reference.empty:
        raise MdpError(f"normalize: no rows match samples={samples!r}")
    values = reference[features].to_numpy(dtype=np.float64)
    with warnings.catch_warnings():
        # A feature missing in every reference row gets a NaN centre and stays NaN; drop_na_columns removes it.
        warnings.simplefilter("ignore", RuntimeWarning)
        center, scale = center_and_scale(values, method)
    out = profiles.copy()
    out[features] = (profiles[features].to_numpy(dtype=np.float64) - center) / scale
    return metadata_first(out)


def center_and_scale(values: np.ndarray, method: NormalizeMethod) -> tuple[np.ndarray, np.ndarray]:
    if method == "standardize":
        center = np.nanmean(values, axis=0)
        scale = np.nanstd(values, axis=0)
        scale = np.where(scale == 0, 1.0, scale)  # scikit-learn's StandardScaler leaves constant features unscaled
    elif method == "robustize":
        center = np.nanmedian(values, axis=0)
        q75, q25 = np.nanpercentile(values, [75, 25], axis=0)
        scale = q75 - q25
        scale = np.where(scale == 0, 1.0, scale)
    elif method == "mad_robustize":
        center = np.nanmedian(values, axis=0)
        scale = MAD_SCALE * np.nanmedian(np.abs(values - center), axis=0) + EPSILON
    else:
        raise MdpError(f"normalize: unknown method {method!r}")
    return center, scale


def variance_threshold(table: pd.DataFrame, features: Sequence[str], min_variance: float = 1e-6) -> list[str]:
    """Features whose population variance is not above `min_variance` (pycytominer 1.7's rule, which is
    scikit-learn's VarianceThreshold; a feature missing everywhere has no variance and is excluded)."""
    values = table[list(features)].to_numpy(dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        variances = np.nanvar(values, axis=0)
    keep = variances > min_variance
    return [f for f, kept in zip(features, keep) if not kept]


def frequency_threshold(table: pd.DataFrame, features: Sequence[str], freq_cut: float = 0.05, unique_cut: float = 0.01) -> list[str]:
    """Features of near-zero variance by caret's nearZeroVar rule, as pycytominer applies it: the second most
    common value is rarer than `freq_cut` times the most common, or unique values are fewer than
    `unique_cut` of the rows."""
    excluded = []
    n_rows = len(table)
    for name in features:
        counts = table[name].value_counts()
        low_frequency = len(counts) < 2 or counts.iloc[1] / counts.iloc[0] < freq_cut
        low_uniqueness = table[name].nunique() / n_rows < unique_cut
        if low_frequency or low_uniqueness:
            excluded.append(name)
    return excluded


def correlation_threshold(table: pd.DataFrame, features: Sequence[str], threshold: float = 0.9) -> list[str]:
    """Of every pair whose (signed) Pearson correlation is above `threshold`, drop the one with the larger
    total absolute correlation to all features. Ties are ranked exactly as pycytominer ranks them."""
    if len(features) < 2:
        return []
    values = table[list(features)]
    if np.isfinite(values.to_numpy(dtype=np.float64)).all():
        correlation = pd.DataFrame(np.corrcoef(values.to_numpy(dtype=np.float64).T), index=values.columns,
                                   columns=values.columns)
    else:
        correlation = values.corr(method="pearson")
    return drop_correlated(correlation, threshold)


def drop_correlated(correlation: pd.DataFrame, threshold: float = 0.9) -> list[str]:
    """pycytominer's choice from a correlation matrix: for every pair above `threshold`, the feature with the
    larger sum of absolute correlations (NaN counted as 0).

    Sums are compared to 12 significant digits: beyond that they are floating-point noise, which differs
    between any two ways of computing the same correlations (the streamed path and pandas), and would
    break true ties differently. Ties then fall to pandas' default sort, as in pycytominer."""
    sums = correlation.abs().sum().map(lambda total: float(f"{total:.12g}"))
    order = sums.sort_values().index
    rank = {name: position for position, name in enumerate(order)}
    rows, cols = np.nonzero(np.tril(correlation.to_numpy() > threshold, k=-1))
    excluded = set()
    for row, col in zip(rows, cols):
        a, b = correlation.index[row], correlation.columns[col]
        excluded.add(a if rank[a] > rank[b] else b)
    return [f for f in correlation.columns if f in excluded]


def drop_outliers(table: pd.DataFrame, features: Sequence[str], outlier_cutoff: float = 500) -> list[str]:
    """Features whose largest or smallest value is beyond +-`outlier_cutoff` (after normalization, such
    values usually mean a broken measurement)."""
    values = table[list(features)]
    largest, smallest = values.max().abs(), values.min().abs()
    return largest[(largest > outlier_cutoff) | (smallest > outlier_cutoff)].index.tolist()


def drop_na_columns(table: pd.DataFrame, features: Sequence[str], cutoff: float = 0.05) -> list[str]:
    proportion = table[list(features)].isna().mean()
    return proportion[proportion > cutoff].index.tolist()


@dataclass(frozen=True)
class ProfileParameters:
    normalize_method: NormalizeMethod = "standardize"
    operations: tuple[FeatureSelectOperation, ...] = DEFAULT_SELECT_OPERATIONS
    corr_threshold: float = 0.9
    na_cutoff: float = 0.05
    freq_cut: float = 0.05
    unique_cut: float = 0.01
    min_variance: float = 1e-6
    outlier_cutoff: float = 500


def feature_select(
    profiles: pd.DataFrame,
    operations: Sequence[FeatureSelectOperation] = DEFAULT_SELECT_OPERATIONS,
    blocklist: Sequence[str] | None = None,
    corr_threshold: float = 0.9,
    na_cutoff: float = 0.05,
    freq_cut: float = 0.05,
    unique_cut: float = 0.01,
    min_variance: float = 1e-6,
    outlier_cutoff: float = 500,
) -> pd.DataFrame:
    """Drop the features each operation excludes. As in pycytominer, operations run in the order given and
    each sees only the features the previous ones kept. `blocklist` defaults to the standard blocklist."""
    _require_rows(profiles, "feature_select")
    settings = ProfileParameters(operations=tuple(operations), corr_threshold=corr_threshold, na_cutoff=na_cutoff,
                                 freq_cut=freq_cut, unique_cut=unique_cut, min_variance=min_variance,
                                 outlier_cutoff=outlier_cutoff)
    blocked = set(standard_blocklist() if blocklist is None else blocklist)
    all_features = infer_features(profiles, "feature_select")
    features = list(all_features)
    for operation in operations:
        if operation == "correlation_threshold":
            excluded = set(correlation_threshold(profiles, features, corr_threshold))
        else:
            excluded = set(excluded_by(operation, profiles, features, settings, blocked))
        features = [f for f in features if f not in excluded]
    return profiles.drop(columns=[f for f in all_features if f not in set(features)])


def excluded_by(
    operation: FeatureSelectOperation, table: pd.DataFrame, features: Sequence[str], settings: ProfileParameters,
    blocked: set[str],
) -> list[str]:
    """The features one per-feature operation excludes (every operation but correlation_threshold judges each
    feature on its own values, so it can run on any batch of columns)."""
    if operation == "variance_threshold":
        return variance_threshold(table, features, settings.min_variance)
    if operation == "frequency_threshold":
        return frequency_threshold(table, features, settings.freq_cut, settings.unique_cut)
    if operation == "drop_na_columns":
        return drop_na_columns(table, features, settings.na_cutoff)
    if operation == "blocklist":
        return [f for f in features if f in blocked]
    if operation == "drop_outliers":
        return drop_outliers(table, features, settings.outlier_cutoff)
    raise MdpError(f"feature_select: unknown operation {operation!r}")


def aggregate(
    profiles: pd.DataFrame,
    strata: Sequence[str] = ("Metadata_Plate", "Metadata_Well"),
    operation: Literal["median", "mean"] = "median",
) -> pd.DataFrame:
    """One row per stratum: the median (or mean) of every feature, the metadata constant within the
    stratum carried along, and `Metadata_Object_Count`."""
    _require_rows(profiles, "aggregate")
    features = infer_features(profiles, "aggregate")
    strata = list(strata)
    missing = [s for s in strata if s not in profiles.columns]
    if missing:
        raise MdpError(f"aggregate: strata columns {missing} are not in the table")
    grouped = profiles.groupby(strata, sort=True, dropna=False)
    # In float64, as pycytominer does: float32 medians would differ from its results in the 8th digit.
    as_float64 = profiles[features].astype(np.float64).groupby([profiles[s] for s in strata], sort=True, dropna=False)
    values = as_float64.median() if operation == "median" else as_float64.mean()
    constant = [
        c for c in metadata_columns(profiles)
        if c not in strata and (grouped[c].nunique(dropna=False) <= 1).all()
    ]
    carried = grouped[constant].first()
    counts = grouped.size().rename("Metadata_Object_Count")
    return metadata_first(pd.concat([carried, counts, values], axis=1).reset_index())


def modz_weights(replicates: pd.DataFrame, min_weight: float = 0.01, precision: int = 4) -> pd.Series:
    """pycytominer's moderated z-score weights: each replicate's mean Spearman correlation with the others
    (negative ones counted as 0), at least `min_weight`, normalized to sum to 1, rounded to `precision`."""
    correlation = replicates.transpose().corr(method="spearman").to_numpy(copy=True)
    np.fill_diagonal(correlation, np.nan)
    raw = pd.DataFrame(correlation, index=replicates.index).clip(lower=0).mean(axis=1).clip(lower=min_weight)
    total = raw.sum()
    weights = pd.Series(1 / len(raw), index=raw.index) if total == 0 else raw / total
    return weights.round(precision)


def modz(replicates: pd.DataFrame, min_weight: float = 0.01, precision: int = 4) -> pd.Series:
    """One consensus signature from replicate profiles (rows), weighted by how well each agrees with the rest."""
    if len(replicates) == 1:
        return replicates.sum(axis=0)
    return replicates.mul(modz_weights(replicates, min_weight, precision), axis="index").sum(axis=0)


def consensus(
    profiles: pd.DataFrame, replicate_columns: Sequence[str], operation: Literal["median", "mean", "modz"] = "median"
) -> pd.DataFrame:
    """One profile per perturbation: the median, mean or modz (pycytominer's weighting) of its replicates."""
    _require_rows(profiles, "consensus")
    features = infer_features(profiles, "consensus")
    grouped = profiles.groupby(list(replicate_columns), sort=True, dropna=False)
    if operation == "modz":
        values = pd.DataFrame({key: modz(group[features]) for key, group in grouped}).transpose()
        values.index = grouped[features].median().index
    else:
        values = grouped[features].median() if operation == "median" else grouped[features].mean()
    replicates = grouped.size().rename("Metadata_Replicate_Count")
    return metadata_first(pd.concat([replicates, values], axis=1).reset_index())


def standard_blocklist() -> list[str]:
    """pycytominer's standard blocklist of features known to be uninformative (shipped with mdp, BSD-3)."""
    text = resources.files("mdp_assets").joinpath("data/blocklist_features.txt").read_text()
    return [line.strip() for line in text.splitlines()[1:] if line.strip()]


def normalize_and_select(
    profiles: pd.DataFrame, negative_controls: str | None, params: ProfileParameters
) -> tuple[pd.DataFrame, dict[str, object]]:
    """Normalize to negative controls (all rows when the platemap names none, or none survived QC),
    then feature-select. Returns the table and a summary for the materialization metadata."""
    samples = "all"
    if negative_controls is not None and not profiles.query(negative_controls).empty:
        samples = negative_controls
    normalized = normalize(profiles, samples=samples, method=params.normalize_method)
    selected = feature_select(
        normalized,
        operations=params.operations,
        corr_threshold=params.corr_threshold,
        na_cutoff=params.na_cutoff,
        freq_cut=params.freq_cut,
        unique_cut=params.unique_cut,
        min_variance=params.min_variance,
        outlier_cutoff=params.outlier_cutoff,
    )
    features_in = len(infer_features(profiles))
    features_out = len(infer_features(selected))
    summary = {
        "normalized_to": "all rows" if samples == "all" else samples,
        "normalize_method": params.normalize_method,
        "features_in": features_in,
        "features_selected": features_out,
    }
    return selected, summary


def replicate_correlations(profiles: pd.DataFrame, group: str) -> pd.Series:
    """Per group (treatment): the median Pearson correlation over all pairs of its replicate profiles, on the
    features every row has; groups with one profile are left out."""
    features = [f for f in infer_features(profiles) if profiles[f].notna().all()]
    medians = {}
    for name, rows in profiles.groupby(group, dropna=True):
        if len(rows) < 2 or not features:
            continue
        matrix = np.corrcoef(rows[features].to_numpy(dtype=np.float64))
        medians[name] = float(np.nanmedian(matrix[np.triu_indices(len(rows), k=1)]))
    return pd.Series(medians, dtype=float).sort_index()
