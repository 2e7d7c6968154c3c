"""The IO manager: the thin adapter between Dagster and the partition store.

`handle_output` stores what an asset staged (`PartitionStore.write`: policy, tier, checksums, catalog) and
reports where it went; `load_input` reads a partition from wherever it lives now. Provenance names what
was actually loaded: every input partition this step read (its run, data version and the Dagster event
that recorded it), not whatever is newest when the output is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args, get_origin

import dagster as dg
import pandas as pd
from pydantic import PrivateAttr

from mdp_assets.config import StepSettings
from mdp_assets.errors import MdpError
from mdp_assets.plates.registry import PlateAccess
from mdp_assets.storage.partitions import StagedFiles, StoredPartition
from mdp_assets.storage.resource import MdpStorage
from mdp_assets.storage.store import MadeBy
from mdp_assets.storage.tiers import FilesystemTier


def _wants_dataframe(annotation: Any) -> bool:
    """True for inputs annotated `pd.DataFrame` or `dict[str, pd.DataFrame]` (one frame per plate)."""
    if get_origin(annotation) is dict:
        annotation = get_args(annotation)[1]
    return annotation is pd.DataFrame


def _plain(value: Any) -> Any:
    return getattr(value, "value", getattr(value, "path", value))


def materialization_of(instance: dg.DagsterInstance, asset: str, partition: str | None, run_id: str) -> int | None:
    """The storage id of the materialization event a run recorded for an asset partition."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey.from_user_string(asset),
                              asset_partitions=[partition] if partition else None), limit=20).records
    return next((r.storage_id for r in records if r.run_id == run_id), None)


class PlateLevelIOManager(dg.ConfigurableIOManager):
    """Stores each asset partition in the tier its storage policy calls for, and reads it from wherever the
    lifecycle has moved it since."""

    storage: MdpStorage
    settings: StepSettings
    # What each step (op) of this run loaded, for its output's provenance; a run's resources are its own.
    _loaded: dict[str, list[StoredPartition]] = PrivateAttr(default_factory=dict)

    # -- reading --------------------------------------------------------------------------------------
    def _load_one(self, context: dg.InputContext, partition: str | None) -> Any:
        stored = self.storage.store().read(context.asset_key.to_user_string(), partition)
        self._loaded.setdefault(context.op_def.name, []).append(stored)
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

    def _inputs(self, context: dg.OutputContext) -> tuple[list[dict[str, Any]], list[StoredPartition]]:
        loaded = self._loaded.pop(context.op_def.name, [])
        instance = context.step_context.instance
        inputs = []
        for stored in loaded:
            partition = None if stored.partition == "__all__" else stored.partition
            inputs.append({
                "asset": stored.asset,
                "partition": partition,
                "run_id": stored.record.get("run_id"),
                "data_version": stored.record.get("data_version"),
                "storage_id": materialization_of(instance, stored.asset, partition, stored.record.get("run_id", "")),
                "sha256": stored.record.get("data_version"),
                "uri": stored.record.get("provenance", {}).get("outputs", {}).get("uri"),
            })
        return inputs, loaded

    # -- writing --------------------------------------------------------------------------------------
    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        partition = context.asset_partition_key if context.has_asset_partitions else None
        asset = context.asset_key.to_user_string()
        if isinstance(obj, pd.DataFrame):
            obj = self.storage.table_output(asset, obj).value
        if not isinstance(obj, StagedFiles):
            raise MdpError(f"{asset} returned {type(obj).__name__}; assets must return StagedFiles "
                           "(see table_output / staged_output) or a pandas DataFrame")
        declared = context.output_metadata or {}
        inputs, loaded = self._inputs(context)
        if "landing_folder" in declared:
            inputs.insert(0, {"asset": "landing_zone", "partition": partition,
                              "data_version": _plain(declared.get("input_fingerprint")), "sha256": None,
                              "uri": Path(str(_plain(declared["landing_folder"]))).as_uri()})
        software = {"cellprofiler": str(_plain(declared["cellprofiler_version"]))} \
            if "cellprofiler_version" in declared else {}
        made_by = MadeBy(context.run_id, context.asset_spec.code_version,
                         self.settings.parameters(context.asset_key.path[-1]), inputs, software)
        store = self.storage.store()
        record = store.write(obj, asset, partition, self._plates(partition, loaded), made_by)
        tier = self.storage.tier(record["tier"])
        metadata: dict[str, Any] = {
            "tier": record["tier"],
            "uri": dg.MetadataValue.url(record["provenance"]["outputs"]["uri"]),
            "bytes": record["provenance"]["outputs"]["bytes"],
            "sha256": record["data_version"],
            "files": len(record["files"]),
            "provenance": dg.MetadataValue.json(record["provenance"]),
            # The same provenance as fields a person reads on the asset's page without opening the JSON.
            "made_from": dg.MetadataValue.md(_inputs_markdown(record["provenance"]["inputs"])),
            "code_version": record["code_version"] or "none",
            "made_by_run": record["run_id"],
            "origin": record["provenance"].get("origin") or "not a plate's data",
            "software": ", ".join(f"{k} {v}" for k, v in sorted(record["provenance"]["software"].items())),
        }
        if isinstance(tier, FilesystemTier):
            metadata["path"] = dg.MetadataValue.path(str(tier.folder(f"{asset}/{partition or '__all__'}")))
        if obj.kind == "table":
            metadata["rows"] = obj.table_summary["rows"]
            metadata["columns"] = obj.table_summary["columns"]
            metadata["preview"] = dg.MetadataValue.md(obj.table_summary["preview"])
        context.add_output_metadata(metadata)

    def _plates(self, partition: str | None, loaded: list[StoredPartition]) -> list[PlateAccess | None]:
        """The plates whose data an output holds: its own plate, or every plate its inputs came from."""
        registry = self.storage.registry()
        barcodes = [partition] if partition else sorted({s.partition for s in loaded if s.partition != "__all__"})
        plates = [registry.get(b) for b in barcodes]
        return [p.access if p is not None else None for p in plates] or [None]


def _inputs_markdown(inputs: list[dict[str, Any]]) -> str:
    """One line per input a step loaded: which level of which plate, its data version and where it was."""
    lines = [f"- {i.get('asset')} of {i.get('partition') or 'all plates'}: data version "
             f"{str(i.get('data_version') or '-')[:12]}, {i.get('uri') or 'no stored location'}" for i in inputs]
    return "\n".join(lines) or "no inputs (the first level)"
