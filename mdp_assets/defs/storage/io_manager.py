"""The IO manager that stores every level of every plate in its tier, atomically, checksummed, with provenance.

Assets hand it `StagedFiles`: a folder filled through `MdpStorage.staging_dir`, usually made by
`table_output` (a DataFrame as `table.parquet`) or `staged_output`, which also give the Output a
content-hash DataVersion. Each partition is one folder, `<tier>/<asset>/<plate>/`, holding the files,
`_partition.json` (what it is, every file's size and sha256, code and data version, provenance) and
`ro-crate-metadata.json` (the same provenance as JSON-LD). The folder appears in one rename, so readers
never see half a partition. Materialization metadata records tier, uri, bytes, sha256 (over the file
list), files, rows and `provenance`; the catalog gets one row per stored file.
"""

import json
import shutil
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, get_args, get_origin

import dagster as dg
import pandas as pd

from mdp_assets.defs.parameters import PipelineParameters
from mdp_assets.defs.storage.resources import MdpStorage
from mdp_assets.errors import MdpError
from mdp_assets.lib import catalog
from mdp_assets.lib.checksums import FileRecord, atomic_path, record_files, tree_digest
from mdp_assets.lib.provenance import RO_CRATE_FILE, provenance_record, ro_crate

PARTITION_RECORD = catalog.PARTITION_RECORD
TABLE_FILE = "table.parquet"
UNPARTITIONED = catalog.UNPARTITIONED
BOOKKEEPING = {PARTITION_RECORD, RO_CRATE_FILE}


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


def staged_output(staged: Path, metadata: dict[str, Any] | None = None, table: pd.DataFrame | None = None) -> dg.Output:
    """An Output for a filled staging folder, versioned by the sha256 of its content."""
    records = tuple(record_files(staged))
    summary = {}
    if table is not None:
        summary = {"rows": len(table), "columns": len(table.columns), "preview": _preview(table)}
    value = StagedFiles(staged, "table" if table is not None else "files", records, summary)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)  # Output(data_version=...) is beta; we rely on it knowingly
        return dg.Output(value, metadata=metadata or {}, data_version=dg.DataVersion(tree_digest(records)))


def table_output(storage: MdpStorage, label: str, table: pd.DataFrame, metadata: dict[str, Any] | None = None) -> dg.Output:
    """A DataFrame as `table.parquet` in a staging folder (pandas attrs travel in the Parquet metadata)."""
    with storage.staging_dir(label) as staged:
        table.to_parquet(staged / TABLE_FILE, index=False)
        return staged_output(staged, metadata, table)


def _wants_dataframe(annotation: Any) -> bool:
    """True for inputs annotated `pd.DataFrame` or `dict[str, pd.DataFrame]` (one frame per plate)."""
    if get_origin(annotation) is dict:
        annotation = get_args(annotation)[1]
    return annotation is pd.DataFrame


def _latest(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None) -> dg.AssetMaterialization | None:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None), limit=1
    ).records
    return records[0].asset_materialization if records else None


def _value(materialization: dg.AssetMaterialization, key: str) -> Any:
    entry = materialization.metadata.get(key)
    return getattr(entry, "value", entry)


class PlateLevelIOManager(dg.ConfigurableIOManager):
    """Stores each asset partition as a folder in one tier of the local data root."""

    storage: MdpStorage
    parameters: PipelineParameters
    tier: str = "internal-drive"

    def partition_dir(self, asset_key: dg.AssetKey, partition: str | None) -> Path:
        return self.storage.tier_root(self.tier).joinpath(*asset_key.path, partition or UNPARTITIONED)

    # -- provenance -----------------------------------------------------------------------------
    def _inputs(self, context: dg.OutputContext, partition: str | None) -> tuple[list[dict[str, Any]], set[str]]:
        instance = context.step_context.instance
        inputs, origins = [], set()
        for dep in context.asset_spec.deps:
            if partition is not None:
                partitions: list[str | None] = [partition]
            else:
                partitions = sorted(instance.get_materialized_partitions(dep.asset_key)) or [None]
            for upstream_partition in partitions:
                found = _latest(instance, dep.asset_key, upstream_partition)
                if found is None:
                    continue
                inputs.append({
                    "asset": dep.asset_key.to_user_string(),
                    "partition": upstream_partition,
                    "data_version": (found.tags or {}).get("dagster/data_version"),
                    "sha256": _value(found, "sha256"),
                    "uri": _value(found, "uri"),
                })
                origin = _value(found, "origin") or (_value(found, "provenance") or {}).get("origin")
                if origin:
                    origins.update(origin.split(", "))
        return inputs, origins

    def _provenance(self, context: dg.OutputContext, partition: str | None, outputs: dict[str, Any]) -> dict[str, Any]:
        inputs, origins = self._inputs(context, partition)
        declared = context.output_metadata or {}
        if "landing_folder" in declared:
            inputs.insert(0, {
                "asset": "landing_zone",
                "partition": partition,
                "data_version": _plain(declared.get("input_fingerprint")),
                "sha256": None,
                "uri": Path(str(_plain(declared["landing_folder"]))).as_uri(),
            })
        if "origin" in declared:
            origins.add(str(_plain(declared["origin"])))
        name = context.asset_key.path[-1]
        return provenance_record(
            asset=context.asset_key.to_user_string(),
            partition=partition,
            code_version=context.asset_spec.code_version,
            parameters=self.parameters.for_step(name),
            run_id=context.run_id,
            inputs=inputs,
            outputs=outputs,
            origin=", ".join(sorted(origins)) or None,
        )

    # -- writing --------------------------------------------------------------------------------
    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        partition = context.asset_partition_key if context.has_asset_partitions else None
        if isinstance(obj, pd.DataFrame):
            obj = table_output(self.storage, context.asset_key.path[-1], obj).value
        if not isinstance(obj, StagedFiles):
            raise MdpError(
                f"{context.asset_key.to_user_string()} returned {type(obj).__name__}; "
                "assets must return StagedFiles (see table_output / staged_output) or a pandas DataFrame"
            )
        final = self.partition_dir(context.asset_key, partition)
        records = list(obj.records) or record_files(obj.root)
        digest = tree_digest(records)
        written_at = datetime.now(timezone.utc).isoformat()
        with atomic_path(final) as staged:
            self._move_verified(obj.root, staged, records)
            outputs = {"uri": final.as_uri(), "sha256": digest, "bytes": sum(r.bytes for r in records), "files": len(records)}
            provenance = self._provenance(context, partition, outputs)
            record = {
                "asset": context.asset_key.to_user_string(),
                "partition": partition,
                "level": context.asset_spec.group_name,
                "tier": self.tier,
                "kind": obj.kind,
                "rows": obj.table_summary.get("rows"),
                "run_id": context.run_id,
                "written_at": written_at,
                "code_version": context.asset_spec.code_version,
                "data_version": digest,
                "files": [r.__dict__ for r in records],
                "provenance": provenance,
            }
            (staged / PARTITION_RECORD).write_text(json.dumps(record, indent=1, default=str))
            (staged / RO_CRATE_FILE).write_text(json.dumps(ro_crate(provenance, record["files"]), indent=1))
        catalog.replace_partition(
            self.storage.catalog_path,
            record["asset"],
            partition or UNPARTITIONED,
            catalog.rows_for_partition(final, self.tier, record["level"], record["code_version"], digest),
        )
        metadata: dict[str, Any] = {
            "tier": self.tier,
            "uri": dg.MetadataValue.url(final.as_uri()),
            "path": dg.MetadataValue.path(str(final)),
            "bytes": outputs["bytes"],
            "sha256": digest,
            "files": len(records),
            "provenance": dg.MetadataValue.json(provenance),
        }
        if obj.kind == "table":
            metadata["rows"] = obj.table_summary["rows"]
            metadata["columns"] = obj.table_summary["columns"]
            metadata["preview"] = dg.MetadataValue.md(obj.table_summary["preview"])
        context.add_output_metadata(metadata)

    @staticmethod
    def _move_verified(source: Path, target: Path, records: list[FileRecord]) -> None:
        """Rename within a filesystem; across filesystems copy, then check every checksum before use."""
        try:
            source.rename(target)
            return
        except OSError:
            shutil.copytree(source, target)
        copied = {r.relpath: r for r in record_files(target)}
        bad = [r.relpath for r in records if copied.get(r.relpath) != r]
        if bad:
            raise MdpError(f"copy does not match its source for {bad[:5]}; nothing was stored", path=target)
        shutil.rmtree(source)

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
        return StoredPartition(asset_key.to_user_string(), partition or UNPARTITIONED, root, record["kind"], files, record)

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


def _plain(value: Any) -> Any:
    return getattr(value, "value", getattr(value, "path", value))
