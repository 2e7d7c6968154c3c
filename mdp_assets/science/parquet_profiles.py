"""Profile operations over Parquet files, for plates that do not fit in pandas memory.

A plate of 800,000 cells x 1,000 features is 6.4 GB in float64, and pycytominer holds several copies of it.
Here the table is never loaded whole. Only the Metadata_ columns an operation needs are read (the strata, the
columns a negative-control query names, one column at a time for those carried per well); features are read a batch of
columns at a time for what is computed per feature (medians, spreads, variances, missing values, outliers),
and a batch of rows at a time for what couples features (correlations, principal components) and for writing
results. Memory follows rows x batch columns and batch rows x features, bounded by `memory_budget`.

Results equal the pandas operations in `mdp_assets.science.profiles`, and so pycytominer's: the same arithmetic on
the same values. The one exception is the correlation matrix, accumulated over row batches instead of
computed in one piece: it agrees with pandas to about 1e-12, which can change a selection only for a pair
whose correlation lies that close to the threshold.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mdp_assets.errors import MdpError
from mdp_assets.science.profiles import (
    ProfileParameters,
    center_and_scale,
    drop_correlated,
    excluded_by,
    metadata_first,
    standard_blocklist,
)

DEFAULT_MEMORY_BUDGET = 2 << 30  # bytes of feature values held at once, over all worker threads
# A value read as float64 costs about this many times 8 bytes at the peak: the Arrow buffer it came from, the
# array, and the temporaries numpy and pandas make (measured with bench/profiles.py).
COPIES_PER_VALUE = 8
ROW_GROUP_ROWS = 65_536  # rows per Parquet row group mdp writes: a row-batched pass holds one group at a time


@dataclass(frozen=True)
class ParquetProfiles:
    """A profile table on disk: its Metadata_ columns, its numeric feature columns and its row count."""

    path: Path
    metadata: list[str]
    features: list[str]
    rows: int
    schema: pa.Schema = field(repr=False)

    @classmethod
    def open(cls, path: Path, what: str) -> ParquetProfiles:
        try:
            parquet = pq.ParquetFile(path)
        except (OSError, pa.ArrowException) as exc:
            raise MdpError(f"{what}: not a readable Parquet file ({exc})", path=path) from exc
        schema = parquet.schema_arrow
        metadata = [n for n in schema.names if n.startswith("Metadata_")]
        features = [n for n in schema.names if not n.startswith("Metadata_")]
        if not metadata:
            raise MdpError(f"{what}: no Metadata_ columns, so wells and plates cannot be told apart", path=path)
        non_numeric = [n for n in features if not _is_number(schema.field(n).type)]
        if non_numeric:
            raise MdpError(f"{what}: feature columns must be numeric, these are not: {non_numeric[:10]}", path=path)
        if parquet.metadata.num_rows == 0:
            raise MdpError(f"{what}: the table has no rows (an empty plate?)", path=path)
        return cls(Path(path), metadata, features, parquet.metadata.num_rows, schema)

    def positions(self, names: Sequence[str]) -> np.ndarray:
        """Where the named features are among all of them (to index per-feature statistics)."""
        position = {name: i for i, name in enumerate(self.features)}
        return np.array([position[name] for name in names], dtype=int)

    def read_columns(self, names: Sequence[str]) -> np.ndarray:
        """Every row of the named features, as float64 (rows x names)."""
        return _as_float64_matrix(pq.read_table(self.path, columns=list(names)).columns)

    def row_batches(self, names: Sequence[str], batch_rows: int, with_metadata: bool = False) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
        """Batches of rows: the Arrow batch (Metadata_ columns only when asked) and the named features as float64."""
        columns = [*self.metadata, *names] if with_metadata else list(names)
        parquet = pq.ParquetFile(self.path)
        # A row group at a time: ParquetFile.iter_batches reads far ahead (3 GB for a 1.6 GB plate), so
        # memory follows the file's row-group size (mdp writes 65,536 rows per group) and batch_rows.
        for group in range(parquet.metadata.num_row_groups):
            for batch in parquet.read_row_group(group, columns=columns).to_batches(max_chunksize=batch_rows):
                yield batch, _as_float64_matrix([batch.column(n) for n in names], batch.num_rows)

    def write_transformed(
        self, target: Path, features: Sequence[str], outputs: Sequence[str],
        transform: Callable[[np.ndarray], np.ndarray], batch_rows: int,
    ) -> None:
        """Write the Metadata_ columns and `transform` of the named features (a batch of rows at a time, float64
        columns `outputs`) to `target`, atomically: a partial file is renamed only once complete."""
        schema = pa.schema([self.schema.field(m) for m in self.metadata] + [pa.field(n, pa.float64()) for n in outputs])
        partial = target.with_name(f".{target.name}.partial")
        try:
            with pq.ParquetWriter(partial, schema) as writer:
                for batch, values in self.row_batches(features, batch_rows, with_metadata=True):
                    result = transform(values)
                    arrays = [batch.column(m) for m in self.metadata] + [pa.array(result[:, i]) for i in range(len(outputs))]
                    writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema), row_group_size=ROW_GROUP_ROWS)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)

    def columns_per_batch(self, memory_budget: int, workers: int) -> int:
        return int(np.clip(memory_budget // (workers * self.rows * 8 * COPIES_PER_VALUE), 1, 512))

    def rows_per_batch(self, memory_budget: int, features: int) -> int:
        return int(np.clip(memory_budget // (max(features, 1) * 8 * COPIES_PER_VALUE), 1, 1 << 20))


def _is_number(kind: pa.DataType) -> bool:
    return pa.types.is_floating(kind) or pa.types.is_integer(kind)


def _as_float64_matrix(columns: Sequence[pa.Array | pa.ChunkedArray], rows: int | None = None) -> np.ndarray:
    """Arrow columns as one float64 matrix (rows x columns), filled a column at a time into column-major
    memory, so that no second full-size copy is made. Nulls become NaN, as when pandas reads the file."""
    rows = len(columns[0]) if columns else (rows or 0)
    matrix = np.empty((rows, len(columns)), dtype=np.float64, order="F")
    for index, column in enumerate(columns):
        matrix[:, index] = column.to_numpy(zero_copy_only=False)
    return matrix


def _workers() -> int:
    return min(os.cpu_count() or 1, 4)


# -- aggregate ------------------------------------------------------------------------------------------


def _reduce(segment: np.ndarray, operation: str) -> np.ndarray:
    """Median or mean of every row of `segment` (features x cells), in float64, skipping missing values.

    The median of n values is the middle value, or the float64 mean of the two middle ones, exactly as
    pandas computes it; selecting them in the stored precision halves the memory traffic."""
    count = segment.shape[1]
    if count == 0:
        return np.full(segment.shape[0], np.nan)
    if operation == "mean" or np.isnan(segment).any():
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
    batch_columns: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> pd.DataFrame:
    """`profiles.aggregate` over a Parquet file: the strata columns are read once, every other Metadata_ column
    one at a time (to carry those constant within a stratum), then the features a batch of columns at a time
    (`batch_columns`, default what `memory_budget` allows). Results equal `aggregate` (medians of float32
    features are taken in float64, as pandas does)."""
    plate = ParquetProfiles.open(path, "aggregate")
    strata = list(strata)
    missing = [s for s in strata if s not in plate.metadata]
    if missing:
        raise MdpError(f"aggregate: strata columns {missing} are not in the table", path=path)
    features = plate.features
    keys = pq.read_table(path, columns=strata).to_pandas()
    grouped = keys.groupby(strata, sort=True, dropna=False)
    codes = grouped.ngroup().to_numpy()
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(grouped.ngroups + 1))
    counts = grouped.size().rename("Metadata_Object_Count")
    carried = pd.DataFrame(index=counts.index)
    for column in [c for c in plate.metadata if c not in strata]:
        by_group = pq.read_table(path, columns=[column]).column(0).to_pandas().groupby(codes, sort=True, dropna=False)
        if (by_group.nunique(dropna=False) <= 1).all():
            carried[column] = by_group.first().set_axis(counts.index)
    del keys
    result = pd.concat([carried, counts], axis=1)
    workers = _workers()
    batch_columns = batch_columns or plate.columns_per_batch(memory_budget, workers)
    values_out = np.empty((grouped.ngroups, len(features)), dtype=np.float64)

    def one_batch(start: int) -> None:
        names = features[start : start + batch_columns]
        table = pq.read_table(path, columns=names)
        # Columns laid out contiguously, rows in group order, in the stored precision (float32 stays float32).
        block = np.stack([column.to_numpy(zero_copy_only=False)[order] for column in table.columns])
        del table
        for group in range(grouped.ngroups):
            values_out[group, start : start + len(names)] = _reduce(block[:, bounds[group] : bounds[group + 1]], operation)

    workers = min(workers, max(1, -(-len(features) // batch_columns)))
    # pyarrow and numpy release the GIL. An all-missing group gives NaN, as in pandas, without a warning;
    # warning filters are process-wide, so they are set around the threads.
    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=workers) as pool:
        warnings.simplefilter("ignore", RuntimeWarning)
        list(pool.map(one_batch, range(0, len(features), batch_columns)))
    values = pd.DataFrame(values_out, columns=features, index=result.index)
    return metadata_first(pd.concat([result, values], axis=1).reset_index())


# -- correlation ----------------------------------------------------------------------------------------


class PairwiseCorrelation:
    """Pearson correlation of every pair of columns over the rows where both are present, as pandas'
    `DataFrame.corr` computes it, accumulated over batches of rows: memory is columns squared, not rows.

    Values are shifted by `shift` (the columns' means) before the sums, so that the one-pass formula keeps
    its precision. Columns known to be complete (`complete`) need only the plain cross-product; each
    column with missing values adds one matrix product per batch for its pairwise counts and sums."""

    def __init__(self, shift: np.ndarray, complete: np.ndarray) -> None:
        width = len(shift)
        self.shift = np.nan_to_num(np.asarray(shift, dtype=np.float64))
        self.incomplete = np.flatnonzero(~np.asarray(complete, dtype=bool))
        self.products = np.zeros((width, width))
        self.sums = np.zeros(width)
        self.squares = np.zeros(width)
        self.present = np.zeros(width)
        # Sums of column i over the rows where incomplete column j is present.
        missing_width = len(self.incomplete)
        self.sums_where = np.zeros((width, missing_width))
        self.squares_where = np.zeros((width, missing_width))
        self.present_where = np.zeros((width, missing_width))

    def add(self, block: np.ndarray) -> None:
        """Add a batch of rows (rows x columns, float64). The batch is overwritten: no copy is made of it."""
        block -= self.shift
        present = ~np.isnan(block)
        np.copyto(block, 0.0, where=~present)
        self.products += block.T @ block
        self.sums += block.sum(axis=0)
        self.squares += np.einsum("ij,ij->j", block, block)
        self.present += present.sum(axis=0)
        if len(self.incomplete):
            where = present[:, self.incomplete]
            self.sums_where += block.T @ where.astype(np.float64)
            self.squares_where += np.square(block).T @ where.astype(np.float64)
            # Counts of one batch are exact in float32 (below 2**24 rows), at half the memory.
            self.present_where += present.T.astype(np.float32) @ where.astype(np.float32)

    def correlation(self) -> np.ndarray:
        width = len(self.sums)
        count = np.repeat(self.present[:, None], width, axis=1)  # rows where i is present (j is complete)
        sums = np.repeat(self.sums[:, None], width, axis=1)
        squares = np.repeat(self.squares[:, None], width, axis=1)
        count[:, self.incomplete] = self.present_where
        sums[:, self.incomplete] = self.sums_where
        squares[:, self.incomplete] = self.squares_where
        spread = count * squares - sums**2  # n^2 times the variance of i over the rows where j is present
        with np.errstate(divide="ignore", invalid="ignore"):
            correlation = (count * self.products - sums * sums.T) / np.sqrt(spread * spread.T)
        correlation[~((spread > 0) & (spread.T > 0))] = np.nan
        return np.clip(correlation, -1.0, 1.0)


# -- normalize and feature-select single cells ----------------------------------------------------------


@dataclass
class FeatureStatistics:
    """What one pass over the feature columns learns: how to normalize each feature, and what the
    per-feature selection operations exclude."""

    center: np.ndarray
    scale: np.ndarray
    mean: np.ndarray  # of the normalized values, to shift correlations by
    complete: np.ndarray
    constant: np.ndarray
    excluded: dict[str, set[str]]


def _feature_statistics(
    plate: ParquetProfiles, reference: np.ndarray, params: ProfileParameters, blocked: set[str], memory_budget: int
) -> FeatureStatistics:
    count = len(plate.features)
    stats = FeatureStatistics(
        center=np.empty(count), scale=np.empty(count), mean=np.empty(count),
        complete=np.empty(count, dtype=bool), constant=np.empty(count, dtype=bool),
        excluded={op: set() for op in params.operations if op != "correlation_threshold"},
    )
    workers = _workers()
    batch = plate.columns_per_batch(memory_budget, workers)

    def one_batch(start: int) -> None:
        names = plate.features[start : start + batch]
        columns = slice(start, start + len(names))
        normalized = plate.read_columns(names)
        center, scale = center_and_scale(normalized[reference], params.normalize_method)
        normalized -= center  # in place: the same arithmetic as (raw - center) / scale, one array fewer
        normalized /= scale
        stats.mean[columns] = np.nanmean(normalized, axis=0)
        stats.constant[columns] = ~(np.nanmax(normalized, axis=0) > np.nanmin(normalized, axis=0))
        stats.center[columns], stats.scale[columns] = center, scale
        stats.complete[columns] = ~np.isnan(normalized).any(axis=0)
        table = pd.DataFrame(normalized, columns=names, copy=False)
        for operation, excluded in stats.excluded.items():
            excluded.update(excluded_by(operation, table, names, params, blocked))

    # Warning filters are process-wide, so they are set here, around the threads, not inside them. A feature
    # missing in every reference row gets a NaN centre and stays NaN; drop_na_columns removes it.
    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=workers) as pool:
        warnings.simplefilter("ignore", RuntimeWarning)
        list(pool.map(one_batch, range(0, count, batch)))
    return stats


def _correlated(
    plate: ParquetProfiles, features: list[str], stats: FeatureStatistics, threshold: float, memory_budget: int
) -> list[str]:
    if len(features) < 2:
        return []
    index = plate.positions(features)
    center, scale = stats.center[index], stats.scale[index]
    accumulator = PairwiseCorrelation(shift=stats.mean[index], complete=stats.complete[index])
    for _, values in plate.row_batches(features, plate.rows_per_batch(memory_budget, len(features))):
        values -= center
        values /= scale
        accumulator.add(values)
    correlation = accumulator.correlation()
    # A constant column has no correlation (pandas and numpy give NaN, or noise from rounding); say so exactly.
    constant = stats.constant[index]
    correlation[constant, :] = np.nan
    correlation[:, constant] = np.nan
    return drop_correlated(pd.DataFrame(correlation, index=features, columns=features), threshold)


def normalize_and_select_parquet(
    source: Path,
    target: Path,
    negative_controls: str | None,
    params: ProfileParameters,
    blocklist: Sequence[str] | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> dict[str, object]:
    """`profiles.normalize_and_select` from one Parquet file to another, in bounded memory.

    Normalizes every row by statistics of the negative controls (all rows when there are none), runs the
    feature-selection operations in order on the normalized values, and writes the Metadata_ columns and
    the kept features (float64) to `target`, atomically. Returns the summary `normalize_and_select` returns."""
    plate = ParquetProfiles.open(source, "single-cell profiles")
    reference, samples = np.ones(plate.rows, dtype=bool), "all"
    if negative_controls is not None:
        named = [c for c in plate.metadata if c in negative_controls] or plate.metadata[:1]  # what the query reads
        try:
            chosen = pq.read_table(source, columns=named).to_pandas().query(negative_controls).index.to_numpy()
        except Exception as exc:  # pandas raises many kinds for a bad query; name the query and the file
            raise MdpError(f"normalize: cannot evaluate samples={negative_controls!r}: {exc}", path=source) from exc
        if len(chosen):
            reference, samples = np.zeros(plate.rows, dtype=bool), negative_controls
            reference[chosen] = True
    blocked = set(standard_blocklist() if blocklist is None else blocklist)
    stats = _feature_statistics(plate, reference, params, blocked, memory_budget)
    features = list(plate.features)
    for operation in params.operations:
        if operation == "correlation_threshold":
            excluded = set(_correlated(plate, features, stats, params.corr_threshold, memory_budget))
        else:
            excluded = stats.excluded[operation]
        features = [f for f in features if f not in excluded]
    _write_normalized(plate, target, features, stats, memory_budget)
    return {
        "normalized_to": "all rows" if samples == "all" else samples,
        "normalize_method": params.normalize_method,
        "features_in": len(plate.features),
        "features_selected": len(features),
    }


def _write_normalized(
    plate: ParquetProfiles, target: Path, features: list[str], stats: FeatureStatistics, memory_budget: int
) -> None:
    index = plate.positions(features)
    center, scale = stats.center[index], stats.scale[index]
    plate.write_transformed(target, features, features, lambda values: (values - center) / scale,
                            plate.rows_per_batch(memory_budget, len(features)))
