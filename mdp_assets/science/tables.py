"""Tables larger than memory: a plate's single cells written and read as Parquet, a batch of rows at a time.

`BatchWriter` writes pandas batches (a site's cells, a chunk of CellProfiler's object tables) as row groups of one
Parquet file, atomically. The stored column types are those pandas' `concat` of every batch would give, so a
streamed table equals the whole-plate table it replaces: when a later batch needs a wider type (an integer
column that gets missing values becomes float64, a column missing so far appears), the rows written so far are
rewritten in the wider types, a row group at a time (rare: it needs a site whose cells lack a compartment).

`SiteRows` finds the rows of one site in a stored table from its key columns alone and reads only the row groups
that hold them (and only the columns asked for), so a level working site by site never scans the plate per site.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mdp_assets.science.parquet_profiles import ROW_GROUP_ROWS

# A row group holds at most ROW_GROUP_ROWS rows and about this many bytes: a wide table (3,000 CellProfiler
# features, 24 KB a cell) gets smaller groups, so that writing or reading one group stays a bounded batch.
ROW_GROUP_BYTES = 32 << 20
SITE_KEYS = ("Metadata_Well", "Metadata_Site")


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` in `schema`'s columns and types (columns it lacks are null, as in a pandas concat)."""
    columns = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
               for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def _concat_schema(first: pa.Schema, second: pa.Schema) -> pa.Schema:
    """The types pandas' concat gives two tables: the wider of each column's, and float64 for an integer column
    one of them lacks (pandas fills it with NaN there, even for a table without rows)."""
    wider = pa.unify_schemas([first, second], promote_options="permissive")
    partial = set(first.names) ^ set(second.names)
    for name in partial:
        index = wider.get_field_index(name)
        if pa.types.is_integer(wider.field(index).type):
            wider = wider.set(index, pa.field(name, pa.float64()))
    return wider


class BatchWriter:
    """Pandas batches into one Parquet file, `target`, complete or not at all (a partial file is renamed on
    `close`, removed on error). Use as a context manager; `rows` counts what was written."""

    def __init__(self, target: Path, row_group_bytes: int = ROW_GROUP_BYTES) -> None:
        self.target = Path(target)
        self.row_group_bytes = row_group_bytes
        self.partial = self.target.with_name(f".{self.target.name}.partial")
        self.schema: pa.Schema | None = None
        self.writer: pq.ParquetWriter | None = None
        self.pending: list[pa.Table] = []
        self.pending_bytes = 0
        self.rows = 0
        self.rewrites = 0

    def __enter__(self) -> BatchWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def write(self, frame: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        # A batch without rows counts too, as in pandas' concat (an empty site's int64 object numbers widen
        # the int32 ones of the others).
        if self.schema is None:
            self.schema = table.schema
        elif not table.schema.equals(self.schema, check_metadata=False):
            wider = _concat_schema(self.schema, table.schema)
            if not wider.equals(self.schema, check_metadata=False):
                # The batch's pandas metadata describes the wider types when it has every column.
                metadata = table.schema.metadata if set(table.column_names) == set(wider.names) else self.schema.metadata
                self._widen(wider.with_metadata(metadata))
            table = _conform(table, self.schema)
        if table.num_rows == 0:
            return
        self.pending.append(table)
        self.pending_bytes += table.nbytes
        if self.pending_bytes >= self.row_group_bytes or sum(t.num_rows for t in self.pending) >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        table = pa.concat_tables(self.pending)
        self.pending, self.pending_bytes = [], 0
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.partial, self.schema)
        self.writer.write_table(table, row_group_size=table.num_rows)
        self.rows += table.num_rows

    def _widen(self, schema: pa.Schema) -> None:
        """Rewrite what was written in `schema`'s types, a row group at a time, into a new partial file whose
        writer goes on with the rows to come."""
        self.pending = [_conform(t, schema) for t in self.pending]
        if self.writer is not None:
            self.writer.close()
            self.rewrites += 1
            wider = self.target.with_name(f".{self.target.name}.partial{self.rewrites}")
            source = pq.ParquetFile(self.partial)
            self.writer = pq.ParquetWriter(wider, schema)
            for group in range(source.metadata.num_row_groups):
                table = _conform(source.read_row_group(group), schema)
                self.writer.write_table(table, row_group_size=table.num_rows)
            self.partial.unlink()
            self.partial = wider
        self.schema = schema

    def close(self) -> int:
        self._flush()
        if self.writer is None:  # no rows: the columns of the batches without rows, as pandas would store them
            pq.write_table((self.schema or pa.schema([])).empty_table(), self.partial)
        else:
            self.writer.close()
            self.writer = None
        os.replace(self.partial, self.target)
        return self.rows

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self.partial.unlink(missing_ok=True)


class SiteRows:
    """Where each site's rows are in a stored table (from its key columns only), and those rows read back."""

    def __init__(self, path: Path, keys: Sequence[str] = SITE_KEYS) -> None:
        self.path = Path(path)
        self.file = pq.ParquetFile(self.path)
        self.keys = list(keys)
        sizes = [self.file.metadata.row_group(g).num_rows for g in range(self.file.metadata.num_row_groups)]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.rows = int(self.starts[-1])
        self._cached: tuple[int, tuple[str, ...], pa.Table] | None = None
        self.sites: dict[tuple[str, int], np.ndarray] = {}
        if self.rows == 0:
            return
        table = self.file.read(columns=self.keys)
        # Rows without a well or site (none are expected) belong to no site.
        wells = pc.fill_null(table.column(self.keys[0]).combine_chunks(), "").dictionary_encode()
        codes = wells.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        sites = pc.fill_null(table.column(self.keys[1]), -1).to_numpy(zero_copy_only=False).astype(np.int64)
        del table
        combined = codes * (int(sites.max()) + 2) + sites + 1
        order = np.argsort(combined, kind="stable")  # each site's rows in the table's order
        bounds = np.flatnonzero(np.diff(combined[order])) + 1
        names = wells.dictionary.to_pylist()
        for chunk in np.split(order, bounds):
            first = int(chunk[0])
            self.sites[(names[codes[first]], int(sites[first]))] = chunk

    def count(self, well: str, site: int) -> int:
        return len(self.sites.get((well, int(site)), ()))

    def read(self, well: str, site: int, columns: Sequence[str]) -> pd.DataFrame:
        """The site's rows (in the table's order), only `columns`; one row group in memory at a time."""
        positions = self.sites.get((well, int(site)))
        if positions is None:
            return self.file.schema_arrow.empty_table().select(list(columns)).to_pandas()
        groups = np.searchsorted(self.starts, positions, side="right") - 1
        parts = []
        for group in np.unique(groups):
            table = self._row_group(int(group), tuple(columns))
            parts.append(table.take(pa.array(positions[groups == group] - self.starts[group])))
        return pa.concat_tables(parts).to_pandas()

    def _row_group(self, group: int, columns: tuple[str, ...]) -> pa.Table:
        if self._cached is None or self._cached[:2] != (group, columns):
            self._cached = (group, columns, self.file.read_row_group(group, columns=list(columns)))
        return self._cached[2]
