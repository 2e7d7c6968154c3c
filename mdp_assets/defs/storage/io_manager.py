"""The IO manager that stores every level of every plate in its tier, atomically and checksummed.

An asset returns either a pandas DataFrame (stored as `table.parquet`) or `StagedFiles`, a folder it filled
through `MdpStorage.staging_dir`. Each partition is one folder, `<tier>/<asset>/<plate>/`, holding the
files and `_partition.json` (what it is, which run made it, every file's size and sha256). The folder
appears in one rename, so readers never see half a partition; a replaced partition is swapped whole.
Materialization metadata records tier, uri, bytes, sha256 (over the file list), files and rows.
"""


import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, get_args, get_origin

import dagster as dg
import pandas as pd

from mdp_assets.defs.storage.resources import MdpStorage
from mdp_assets.errors import MdpError
from mdp_assets.lib.checksums import FileRecord, atomic_path, record_files, tree_digest

PARTITION_RECORD = "_partition.json"
TABLE_FILE = "table.parquet"
UNPARTITIONED = "__all__"


@dataclass(frozen=True)
class StagedFiles:
    """A folder of files an asset produced, to be stored as one partition."""

    root: Path


@dataclass(frozen=True)
class StoredPartition:
    """A stored partition, as downstream assets see it: a read-only folder and its file records."""

    asset: str
    partition: str
    root: Path
    kind: str
    files: tuple[FileRecord, ...]

    def path(self, relpath: str) -> Path:
        target = self.root / relpath
        if not target.exists():
            raise MdpError(f"{self.asset} of {self.partition} has no file {relpath!r}", path=self.root)
        return target

    def read_table(self, relpath: str = TABLE_FILE) -> pd.DataFrame:
        return pd.read_parquet(self.path(relpath))

    @property
    def total_bytes(self) -> int:
        return sum(f.bytes for f in self.files)


def _preview(table: pd.DataFrame, rows: int = 5, columns: int = 8) -> str:
    meta = [c for c in table.columns if c.startswith("Metadata_")][: columns // 2]
    rest = [c for c in table.columns if c not in meta][: columns - len(meta)]
    head = table[meta + rest].head(rows)

    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value).replace("|", "/")

    lines = ["| " + " | ".join(head.columns) + " |", "|" + "---|" * len(head.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in head.itertuples(index=False)]
    return "\n".join(lines)


def _wants_dataframe(annotation: Any) -> bool:
    """True for inputs annotated `pd.DataFrame` or `dict[str, pd.DataFrame]` (one frame per plate)."""
    if get_origin(annotation) is dict:
        annotation = get_args(annotation)[1]
    return annotation is pd.DataFrame


class PlateLevelIOManager(dg.ConfigurableIOManager):
    """Stores each asset partition as a folder in one tier of the local data root."""

    storage: MdpStorage
    tier: str = "internal-drive"

    def partition_dir(self, asset_key: dg.AssetKey, partition: str | None) -> Path:
        return self.storage.tier_root(self.tier).joinpath(*asset_key.path, partition or UNPARTITIONED)

    # -- writing --------------------------------------------------------------------------------
    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        partition = context.asset_partition_key if context.has_asset_partitions else None
        final = self.partition_dir(context.asset_key, partition)
        rows = None
        with atomic_path(final) as staged:
            if isinstance(obj, pd.DataFrame):
                staged.mkdir(parents=True)
                obj.to_parquet(staged / TABLE_FILE, index=False)
                kind, rows = "table", len(obj)
            elif isinstance(obj, StagedFiles):
                shutil.move(str(obj.root), str(staged))
                kind = "files"
            else:
                raise MdpError(
                    f"{context.asset_key.to_user_string()} returned {type(obj).__name__}; "
                    "assets must return a pandas DataFrame or StagedFiles"
                )
            records = record_files(staged)
            record = {
                "asset": context.asset_key.to_user_string(),
                "partition": partition,
                "kind": kind,
                "rows": rows,
                "run_id": context.run_id,
                "written_at": datetime.now(timezone.utc).isoformat(),
                "files": [r.__dict__ for r in records],
            }
            (staged / PARTITION_RECORD).write_text(json.dumps(record, indent=1))
        metadata: dict[str, Any] = {
            "tier": self.tier,
            "uri": dg.MetadataValue.url(final.as_uri()),
            "path": dg.MetadataValue.path(str(final)),
            "bytes": sum(r.bytes for r in records),
            "sha256": tree_digest(records),
            "files": len(records),
        }
        if rows is not None:
            metadata["rows"] = rows
            metadata["columns"] = len(obj.columns)
            metadata["preview"] = dg.MetadataValue.md(_preview(obj))
        context.add_output_metadata(metadata)

    # -- reading --------------------------------------------------------------------------------
    def load_partition(self, asset_key: dg.AssetKey, partition: str | None) -> StoredPartition:
        root = self.partition_dir(asset_key, partition)
        record_path = root / PARTITION_RECORD
        if not record_path.exists():
            raise MdpError(
                f"{asset_key.to_user_string()} for {partition or 'all plates'} is not materialized "
                f"(expected it in tier {self.tier!r})",
                path=root,
            )
        record = json.loads(record_path.read_text())
        files = tuple(FileRecord(**f) for f in record["files"])
        return StoredPartition(asset_key.to_user_string(), partition or UNPARTITIONED, root, record["kind"], files)

    def _load_one(self, context: dg.InputContext, partition: str | None) -> Any:
        stored = self.load_partition(context.asset_key, partition)
        if _wants_dataframe(context.dagster_type.typing_type):
            if stored.kind != "table":
                raise MdpError(f"{stored.asset} holds files, not a table; annotate the input as StoredPartition")
            return stored.read_table()
        return stored

    def load_input(self, context: dg.InputContext) -> Any:
        if not context.has_asset_partitions:
            return self._load_one(context, None)
        keys = context.asset_partition_keys
        if context.has_partition_key and len(keys) == 1:
            return self._load_one(context, keys[0])
        return {key: self._load_one(context, key) for key in keys}
