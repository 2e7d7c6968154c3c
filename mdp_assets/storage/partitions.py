"""A stored partition as assets see it, and the outputs assets hand the IO manager.

Assets fill a staging folder (`MdpStorage.staging_dir`) and return it as `StagedFiles`, usually through
`table_output` (a DataFrame as `table.parquet`), `parquet_output` (a Parquet file a streaming step wrote)
or `staged_output`; each gives the Output a content-hash DataVersion. Downstream assets receive a
read-only `StoredPartition`, or a DataFrame when their input is annotated so.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pyarrow.parquet as pq

from mdp_assets.checksums import FileRecord, HashingWriter, record_files, tree_digest
from mdp_assets.errors import MdpError
# A table column naming a file stored in the same partition (raw_images: `images/<file name>`): read back,
# the row's `uri` is where that file is now (the tier's folder, or the verified local cache of a remote tier).
from mdp_assets.plates.inventory import STORED_FILE_COLUMN
from mdp_assets.science.parquet_profiles import ROW_GROUP_ROWS

TABLE_FILE = "table.parquet"
UNPARTITIONED = "__all__"


def partition_key(asset: str, partition: str | None) -> str:
    """Where a partition lives inside any tier: `<asset>/<plate>` (`__all__` for unpartitioned levels)."""
    return f"{asset}/{partition or UNPARTITIONED}"


@dataclass(frozen=True)
class StagedFiles:
    """A folder of files an asset produced, to be stored as one partition."""

    root: Path
    kind: str = "files"
    records: tuple[FileRecord, ...] = ()
    table_summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredPartition:
    """A stored partition, as downstream assets see it: a read-only folder and its file records."""

    asset: str
    partition: str
    root: Path
    kind: str
    files: tuple[FileRecord, ...]
    record: dict[str, Any] = field(default_factory=dict, compare=False)

    def path(self, relpath: str) -> Path:
        target = self.root / relpath
        if not target.exists():
            raise MdpError(f"{self.asset} of {self.partition} has no file {relpath!r}", path=self.root)
        return target

    def read_table(self, relpath: str = TABLE_FILE) -> pd.DataFrame:
        table = pd.read_parquet(self.path(relpath))
        if STORED_FILE_COLUMN in table.columns and "uri" in table.columns:
            table["uri"] = [(self.root / stored).as_uri() if isinstance(stored, str) and stored else uri
                            for stored, uri in zip(table[STORED_FILE_COLUMN], table["uri"])]
        return table


def _preview(table: pd.DataFrame, rows: int = 5, columns: int = 8) -> str:
    meta = [c for c in table.columns if c.startswith("Metadata_")][: columns // 2]
    rest = [c for c in table.columns if c not in meta][: columns - len(meta)]
    head = table[meta + rest].head(rows)

    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value).replace("|", "/")

    lines = ["| " + " | ".join(head.columns) + " |", "|" + "---|" * len(head.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in head.itertuples(index=False)]
    return "\n".join(lines)


def summarize_table(table: pd.DataFrame) -> dict[str, Any]:
    """What the IO manager shows of a table: its size and a preview of its first rows."""
    return {"rows": len(table), "columns": len(table.columns), "preview": _preview(table)}


def staged_output(
    staged: Path, metadata: dict[str, Any] | None = None, table_summary: dict[str, Any] | None = None,
    hashed: tuple[FileRecord, ...] = (),
) -> dg.Output:
    """An Output for a filled staging folder, versioned by the sha256 of its content. With a
    `table_summary` (rows, columns, preview) the folder is a table: its `table.parquet` is the data.
    `hashed`: files hashed while they were written or copied (not read again)."""
    records = tuple(record_files(staged, hashed))
    value = StagedFiles(staged, "table" if table_summary else "files", records, table_summary or {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)  # Output(data_version=...) is beta; we rely on it knowingly
        return dg.Output(value, metadata=metadata or {}, data_version=dg.DataVersion(tree_digest(records)))


def write_table(table: pd.DataFrame, path: Path) -> FileRecord:
    """A DataFrame as Parquet in row groups the streaming steps read one at a time; returns its record (path
    relative to its folder), hashed as it was written."""
    with HashingWriter(path) as writer:
        table.to_parquet(writer, index=False, row_group_size=ROW_GROUP_ROWS)
    return writer.record(path.parent)


def table_output(staged: Path, table: pd.DataFrame, metadata: dict[str, Any] | None = None,
                 hashed: tuple[FileRecord, ...] = ()) -> dg.Output:
    """A DataFrame as `table.parquet` in a filled-in staging folder (`hashed`: its other files hashed as they
    were written)."""
    record = write_table(table, staged / TABLE_FILE)
    return staged_output(staged, metadata, summarize_table(table), (*hashed, record))


def parquet_output(staged: Path, metadata: dict[str, Any] | None = None) -> dg.Output:
    """An Output for a staging folder whose `table.parquet` a streaming step wrote: summarized from the file's
    footer and first rows, never read whole."""
    parquet = pq.ParquetFile(staged / TABLE_FILE)
    first = next(parquet.iter_batches(batch_size=5), None)
    head = first.to_pandas() if first is not None else parquet.schema_arrow.empty_table().to_pandas()
    return staged_output(staged, metadata, {**summarize_table(head), "rows": parquet.metadata.num_rows})
