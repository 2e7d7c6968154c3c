"""Profile operations with pycytominer's semantics: annotate, normalize, feature_select, aggregate, consensus.

Tables follow pycytominer's conventions: `Metadata_` columns describe, every other column is a numeric
feature. These functions work on pandas frames; outputs put the Metadata_ columns first.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
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
        center, scale = _center_and_scale(values, method)
    out = profiles.copy()
    out[features] = (profiles[features].to_numpy(dtype=np.float64) - center) / scale
    return metadata_first(out)


def _center_and_scale(values: np.ndarray, method: NormalizeMethod) -> tuple[np.ndarray, np.ndarray]:
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
    order = correlation.abs().sum().sort_values().index  # pandas' default sort, as pycytominer uses it
    rank = {name: position for position, name in enumerate(order)}
    rows, cols = np.nonzero(np.tril(correlation.to_numpy() > threshold, k=-1))
    excluded = set()
    for row, col in zip(rows, cols):
        a, b = correlation.index[row], correlation.columns[col]
        excluded.add(a if rank[a] > rank[b] else b)
    return [f for f in features if f in excluded]


def drop_outliers(table: pd.DataFrame, features: Sequence[str], outlier_cutoff: float = 500) -> list[str]:
    """Features whose largest or smallest value is beyond +-`outlier_cutoff` (after normalization, such
    values usually mean a broken measurement)."""
    values = table[list(features)]
    largest, smallest = values.max().abs(), values.min().abs()
    return largest[(largest > outlier_cutoff) | (smallest > outlier_cutoff)].index.tolist()


def drop_na_columns(table: pd.DataFrame, features: Sequence[str], cutoff: float = 0.05) -> list[str]:
    proportion = table[list(features)].isna().mean()
    return proportion[proportion > cutoff].index.tolist()


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
    blocked = set(standard_blocklist() if blocklist is None else blocklist)
    all_features = infer_features(profiles, "feature_select")
    features = list(all_features)
    for operation in operations:
        if operation == "variance_threshold":
            excluded = variance_threshold(profiles, features, min_variance)
        elif operation == "frequency_threshold":
            excluded = frequency_threshold(profiles, features, freq_cut, unique_cut)
        elif operation == "correlation_threshold":
            excluded = correlation_threshold(profiles, features, corr_threshold)
        elif operation == "drop_na_columns":
            excluded = drop_na_columns(profiles, features, na_cutoff)
        elif operation == "blocklist":
            excluded = [f for f in features if f in blocked]
        elif operation == "drop_outliers":
            excluded = drop_outliers(profiles, features, outlier_cutoff)
        else:
            raise MdpError(f"feature_select: unknown operation {operation!r}")
        features = [f for f in features if f not in set(excluded)]
    return profiles.drop(columns=[f for f in all_features if f not in set(features)])


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


def _reduce(segment: np.ndarray, operation: str) -> np.ndarray:
    """Median or mean of every row of `segment` (features x cells), in float64, skipping missing values.

    The median of n values is the middle value, or the float64 mean of the two middle ones, exactly as
    pandas computes it; selecting them in the stored precision halves the memory traffic."""
    count = segment.shape[1]
    if count == 0:
        return np.full(segment.shape[0], np.nan)
    if operation == "mean" or np.isnan(segment).any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing group gives NaN, as pandas does
            as_float64 = segment.astype(np.float64)
            return np.nanmean(as_float64, axis=1) if operation == "mean" else np.nanmedian(as_float64, axis=1)
    middle = count // 2
    if count % 2:
        return np.partition(segment, middle, axis=1)[:, middle].astype(np.float64)
    part = np.partition(segment, [middle - 1, middle], axis=1)
    return (part[:, middle - 1].astype(np.float64) + part[:, middle].astype(np.float64)) / 2


def aggregate_parquet(
    path: Path,
    strata: Sequence[str] = ("Metadata_Plate", "Metadata_Well"),
    operation: Literal["median", "mean"] = "median",
    batch_columns: int = 64,
) -> pd.DataFrame:
    """`aggregate` over a Parquet file without holding the plate in memory: the Metadata_ columns are read
    once, then the features a batch of columns at a time (memory about rows x batch_columns x 8 bytes).
    Results equal `aggregate` (medians of float32 features are taken in float64, as pandas does)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    meta = [n for n in schema.names if n.startswith("Metadata_")]
    features = [n for n in schema.names if not n.startswith("Metadata_")]
    if not meta:
        raise MdpError(f"aggregate: {path} has no Metadata_ columns")
    non_numeric = [n for n in features if not (pa.types.is_floating(schema.field(n).type) or pa.types.is_integer(schema.field(n).type))]
    if non_numeric:
        raise MdpError(f"aggregate: feature columns must be numeric, these are not: {non_numeric[:10]}")
    strata = list(strata)
    missing = [s for s in strata if s not in meta]
    if missing:
        raise MdpError(f"aggregate: strata columns {missing} are not in {path}")
    keys = pq.read_table(path, columns=meta).to_pandas()
    if keys.empty:
        raise MdpError(f"aggregate: {path} has no rows (an empty plate?)")
    grouped = keys.groupby(strata, sort=True, dropna=False)
    codes = grouped.ngroup().to_numpy()
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(grouped.ngroups + 1))
    constant = [c for c in meta if c not in strata and (grouped[c].nunique(dropna=False) <= 1).all()]
    result = pd.concat([grouped[constant].first(), grouped.size().rename("Metadata_Object_Count")], axis=1)
    values_out = np.empty((grouped.ngroups, len(features)), dtype=np.float64)

    def one_batch(start: int) -> None:
        names = features[start : start + batch_columns]
        table = pq.read_table(path, columns=names)
        # Columns laid out contiguously, rows in group order, in the stored precision (float32 stays float32).
        block = np.stack([column.to_numpy(zero_copy_only=False)[order] for column in table.columns])
        del table
        for group in range(grouped.ngroups):
            values_out[group, start : start + len(names)] = _reduce(block[:, bounds[group] : bounds[group + 1]], operation)

    workers = min(os.cpu_count() or 1, max(1, -(-len(features) // batch_columns)))
    with ThreadPoolExecutor(max_workers=workers) as pool:  # pyarrow and numpy release the GIL
        list(pool.map(one_batch, range(0, len(features), batch_columns)))
    values = pd.DataFrame(values_out, columns=features, index=result.index)
    return metadata_first(pd.concat([result, values], axis=1).reset_index())
