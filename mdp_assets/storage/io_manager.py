"""The IO manager that stores every level of every plate in the tier its storage policy calls for,
atomically, checksummed, with provenance.

Assets hand it `StagedFiles`: a folder filled through `MdpStorage.staging_dir`, usually made by
`table_output` (a DataFrame as `table.parquet`) or `staged_output`, which also give the Output a
content-hash DataVersion. The level's first lifecycle stage names the tier; the plate's origin must allow
that tier's access and the tier's size limits must hold, or nothing is written. Each partition is stored
under `<asset>/<plate>/` in its tier, holding the files,
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
import pyarrow.parquet as pq

from mdp_assets.defs.parameters import PipelineParameters
from mdp_assets.storage.resource import MdpStorage
from mdp_assets.errors import MdpError
from mdp_assets.storage import catalog
from mdp_assets.science.parquet_profiles import ROW_GROUP_ROWS
from mdp_assets.checksums import FileRecord, record_files, tree_digest
from mdp_assets.storage.policy import StoragePolicy
from mdp_assets.storage.tiers import PARTITION_RECORD, FilesystemTier
from mdp_assets.storage.provenance import RO_CRATE_FILE, provenance_record, ro_crate, software_versions

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


def _preview(table: pd.DataFrame, rows: int = 5, columns: int = 8) -> str:
    meta = [c for c in table.columns if c.startswith("Metadata_")][: columns // 2]
    rest = [c for c in table.columns if c not in meta][: columns - len(meta)]
    head = table[meta + rest].head(rows)

    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value).replace("|", "/")

    lines = ["| " + " | ".join(head.columns) + " |", "|" + "---|" * len(head.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in head.itertuples(index=False)]
    return "\n".join(lines)


def staged_output(
    staged: Path, metadata: dict[str, Any] | None = None, table_summary: dict[str, Any] | None = None
) -> dg.Output:
    """An Output for a filled staging folder, versioned by the sha256 of its content. With a
    `table_summary` (rows, columns, preview) the folder is a table: its `table.parquet` is the data."""
    records = tuple(record_files(staged))
    value = StagedFiles(staged, "table" if table_summary else "files", records, table_summary or {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)  # Output(data_version=...) is beta; we rely on it knowingly
        return dg.Output(value, metadata=metadata or {}, data_version=dg.DataVersion(tree_digest(records)))


def table_output(storage: MdpStorage, label: str, table: pd.DataFrame, metadata: dict[str, Any] | None = None) -> dg.Output:
    """A DataFrame as `table.parquet` in a staging folder (pandas attrs travel in the Parquet metadata)."""
    with storage.staging_dir(label) as staged:
        # Row groups of ROW_GROUP_ROWS, so the streaming profile steps read a bounded slice at a time.
        table.to_parquet(staged / TABLE_FILE, index=False, row_group_size=ROW_GROUP_ROWS)
        return staged_output(staged, metadata, summarize_table(table))


def summarize_table(table: pd.DataFrame) -> dict[str, Any]:
    """What the IO manager shows of a table: its size and a preview of its first rows."""
    return {"rows": len(table), "columns": len(table.columns), "preview": _preview(table)}


def parquet_output(staged: Path, metadata: dict[str, Any] | None = None) -> dg.Output:
    """An Output for a staging folder whose `table.parquet` a streaming step wrote: summarized from the file's
    footer and first rows, never read whole."""
    parquet = pq.ParquetFile(staged / TABLE_FILE)
    first = next(parquet.iter_batches(batch_size=5), None)
    head = first.to_pandas() if first is not None else parquet.schema_arrow.empty_table().to_pandas()
    return staged_output(staged, metadata, {**summarize_table(head), "rows": parquet.metadata.num_rows})


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


@dataclass(frozen=True)
class PlateAccess:
    """What the storage policy needs to know about a plate to decide where its data may go."""

    plate: str
    origin: str
    identifiable_patient_data: bool
    released: bool


def plate_access(instance: dg.DagsterInstance, plate: str) -> PlateAccess | None:
    found = _latest(instance, dg.AssetKey("raw_images"), plate)
    if found is None or _value(found, "origin") is None:
        return None
    return PlateAccess(plate, str(_value(found, "origin")), bool(_value(found, "identifiable_patient_data")),
                       bool(_value(found, "released")))


def read_stored_table(storage: MdpStorage, asset: str, partition: str | None) -> pd.DataFrame:
    """A stored table level, read from wherever its partition lives now."""
    found = locate(storage, asset, partition)
    if found is None:
        raise MdpError(f"{asset} for {partition or 'all plates'} is not stored in any tier of its lifecycle")
    store = storage.tier(found[0])
    key = partition_key(dg.AssetKey.from_user_string(asset), partition)
    return pd.read_parquet(store.local_folder(key, storage.cache_root) / TABLE_FILE)


def partition_key(asset_key: dg.AssetKey, partition: str | None) -> str:
    return "/".join([*asset_key.path, partition or UNPARTITIONED])


def locate(storage: MdpStorage, asset: str, partition: str | None) -> tuple[str, dict[str, Any]] | None:
    """(tier, partition record) of where a stored partition is now, trying the tiers of its level's lifecycle."""
    policy = storage.policy()
    key = partition_key(dg.AssetKey.from_user_string(asset), partition)
    for stage in policy.stages(asset):
        record = storage.tier(stage.tier, policy).read_record(key)
        if record is not None:
            return stage.tier, record
    return None


class PlateLevelIOManager(dg.ConfigurableIOManager):
    """Stores each asset partition in the tier its storage policy calls for, and reads it from wherever the
    lifecycle has moved it since."""

    storage: MdpStorage
    parameters: PipelineParameters

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
        extra_software = {"cellprofiler": str(_plain(declared["cellprofiler_version"]))} if "cellprofiler_version" in declared else {}
        return provenance_record(
            asset=context.asset_key.to_user_string(),
            partition=partition,
            code_version=context.asset_spec.code_version,
            parameters=self.parameters.for_step(name),
            run_id=context.run_id,
            inputs=inputs,
            outputs=outputs,
            origin=", ".join(sorted(origins)) or None,
            software=software_versions(extra_software),
        )

    # -- the storage policy ---------------------------------------------------------------------
    def _plates_of(self, context: dg.OutputContext, partition: str | None) -> list[PlateAccess | None]:
        declared = context.output_metadata or {}
        if partition is not None and "origin" in declared:
            return [PlateAccess(partition, str(_plain(declared["origin"])),
                                bool(_plain(declared.get("identifiable_patient_data", False))),
                                bool(_plain(declared.get("released", False))))]
        instance = context.step_context.instance
        plates = [partition] if partition else sorted(instance.get_materialized_partitions(dg.AssetKey("raw_images")))
        return [plate_access(instance, p) for p in plates] or [None]

    def _check_policy(self, policy: StoragePolicy, tier: str, plates: list[PlateAccess | None], sizes: list[int], what: str) -> None:
        for plate in plates:
            if plate is None:
                if policy.tiers[tier].access != "private":
                    raise MdpError(f"{what}: the plate's origin is unknown, so it may only go to a private tier, not {tier!r}")
                continue
            policy.check_origin(tier, plate.origin, plate.identifiable_patient_data, plate.released, what)
        policy.check_limits(tier, sizes, lambda: catalog.tier_bytes(self.storage.catalog_path, tier), what)

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
        asset, level = context.asset_key.to_user_string(), context.asset_key.path[-1]
        what = f"{asset} of {partition or 'all plates'}"
        policy = self.storage.policy()
        tier = policy.stages(level)[0].tier
        records = list(obj.records) or record_files(obj.root)
        plates = self._plates_of(context, partition)
        try:
            self._check_policy(policy, tier, plates, [r.bytes for r in records], what)
        except MdpError:
            shutil.rmtree(obj.root, ignore_errors=True)  # refused: nothing is written anywhere
            raise
        store = self.storage.tier(tier, policy)
        key = partition_key(context.asset_key, partition)
        digest = tree_digest(records)
        written_at = datetime.now(timezone.utc).isoformat()
        outputs = {"uri": store.uri(key), "sha256": digest, "bytes": sum(r.bytes for r in records), "files": len(records)}
        provenance = self._provenance(context, partition, outputs)
        record = {
            "asset": asset,
            "partition": partition,
            "level": context.asset_spec.group_name,
            "tier": tier,
            "kind": obj.kind,
            "rows": obj.table_summary.get("rows"),
            "run_id": context.run_id,
            "written_at": written_at,
            "stage_entered_at": written_at,
            "moves": [],
            "code_version": context.asset_spec.code_version,
            "data_version": digest,
            "files": [r.__dict__ for r in records],
            "access": [p.__dict__ for p in plates if p is not None],
            "provenance": provenance,
        }
        (obj.root / RO_CRATE_FILE).write_text(json.dumps(ro_crate(provenance, record["files"]), indent=1))
        (obj.root / PARTITION_RECORD).write_text(json.dumps(record, indent=1, default=str))
        bookkeeping = catalog.bookkeeping_in(obj.root)
        store.write(obj.root, key, records, move=True,
                    message=f"mdp: {level} of {partition or 'all plates'}, code version {record['code_version']}")
        for stage in policy.stages(level)[1:]:
            older = self.storage.tier(stage.tier, policy)
            if older.read_record(key) is not None:
                older.delete(key, message=f"mdp: {level} of {partition or 'all plates'} replaced by a new version")
        catalog.replace_partition(
            self.storage.catalog_path,
            asset,
            partition or UNPARTITIONED,
            catalog.rows_for_record(record, lambda relpath: store.uri(key, relpath), bookkeeping, tier,
                                    record["level"], record["code_version"], digest),
        )
        metadata: dict[str, Any] = {
            "tier": tier,
            "uri": dg.MetadataValue.url(store.uri(key)),
            "bytes": outputs["bytes"],
            "sha256": digest,
            "files": len(records),
            "provenance": dg.MetadataValue.json(provenance),
        }
        if isinstance(store, FilesystemTier):
            metadata["path"] = dg.MetadataValue.path(str(store.folder(key)))
        if obj.kind == "table":
            metadata["rows"] = obj.table_summary["rows"]
            metadata["columns"] = obj.table_summary["columns"]
            metadata["preview"] = dg.MetadataValue.md(obj.table_summary["preview"])
        context.add_output_metadata(metadata)

    # -- reading --------------------------------------------------------------------------------
    def load_partition(self, asset_key: dg.AssetKey, partition: str | None) -> StoredPartition:
        asset = asset_key.to_user_string()
        found = locate(self.storage, asset, partition)
        if found is None:
            raise MdpError(f"{asset} for {partition or 'all plates'} is not materialized in any tier of its lifecycle")
        tier, record = found
        if record.get("released_at"):
            raise MdpError(
                f"{asset} for {partition or 'all plates'} was released from tier {tier!r} on {record['released_at']} "
                "(a transient level); materialize it again to read it"
            )
        store = self.storage.tier(tier)
        folder = store.local_folder(partition_key(asset_key, partition), self.storage.cache_root)
        files = tuple(FileRecord(**f) for f in record["files"])
        return StoredPartition(asset, partition or UNPARTITIONED, folder, record["kind"], files, record)

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
