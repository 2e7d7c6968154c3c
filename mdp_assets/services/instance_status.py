"""What the Dagster instance knows about each plate and level: the latest materialization, and which
levels must be made again.

A level of a plate is stale when it was never made; when its code version (engine revision plus
parameters) differs from the one that made it; when an input it used has a newer data version than
the one it recorded; when the plate's files changed (raw_images); or when a level it reads is stale.
This is Dagster's own notion of staleness, computed from public instance records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dagster as dg

CODE_VERSION_TAG = "dagster/code_version"
DATA_VERSION_TAG = "dagster/data_version"
INPUT_EVENT_POINTER_TAG = "dagster/input_event_pointer/"


@dataclass(frozen=True)
class LevelStatus:
    plate: str
    asset: str
    metadata: dict[str, Any]
    tags: dict[str, str]
    storage_id: int

    @property
    def code_version(self) -> str | None:
        return self.tags.get(CODE_VERSION_TAG)

    @property
    def data_version(self) -> str | None:
        return self.tags.get(DATA_VERSION_TAG)

    def value(self, key: str) -> Any:
        entry = self.metadata.get(key)
        return getattr(entry, "value", entry)


def _one_record(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None, at: int | None = None):
    """The latest materialization record of an asset (partition), or the one with storage id `at`."""
    bounds = {"after_storage_id": at - 1, "before_storage_id": at + 1} if at is not None else {}
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None, **bounds), limit=1
    ).records
    return records[0] if records else None


def latest_status(instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition: str | None) -> LevelStatus | None:
    record = _one_record(instance, asset_key, partition)
    if record is None:
        return None
    materialization = record.asset_materialization
    assert materialization is not None
    return LevelStatus(
        plate=partition or "(all plates)",
        asset=asset_key.to_user_string(),
        metadata=dict(materialization.metadata),
        tags=dict(materialization.tags or {}),
        storage_id=record.storage_id,
    )


def _data_version_at(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None, storage_id: int) -> str | None:
    record = _one_record(instance, key, partition, at=storage_id)
    if record is None or record.asset_materialization is None:
        return None
    return (record.asset_materialization.tags or {}).get(DATA_VERSION_TAG)


def asset_graph_of(defs: dg.Definitions | dg.RepositoryDefinition):
    """The asset graph of a Definitions or of the repository a sensor evaluates in (its code versions)."""
    return defs.resolve_asset_graph() if isinstance(defs, dg.Definitions) else defs.asset_graph


def stale_reasons(
    instance: dg.DagsterInstance,
    defs: dg.Definitions | dg.RepositoryDefinition,
    asset_keys: list[dg.AssetKey],
    partition: str | None,
    current_input_fingerprint: str | None = None,
) -> dict[dg.AssetKey, str]:
    """For each stale asset of `asset_keys` (in the order given, upstream first): why it is stale."""
    graph = asset_graph_of(defs)
    reasons: dict[dg.AssetKey, str] = {}
    latest: dict[dg.AssetKey, LevelStatus | None] = {}
    for key in asset_keys:
        node = graph.get(key)
        status = latest_status(instance, key, partition if node.partitions_def is not None else None)
        latest[key] = status
        parents = sorted(node.parent_keys)
        if status is None:
            reasons[key] = "never materialized"
        elif status.code_version != node.code_version:
            reasons[key] = f"code version changed ({status.code_version} -> {node.code_version})"
        elif any(p in reasons for p in parents):
            reasons[key] = "a level it reads is stale: " + ", ".join(p.to_user_string() for p in parents if p in reasons)
        elif key == dg.AssetKey("raw_images") and current_input_fingerprint is not None and \
                status.value("input_fingerprint") != current_input_fingerprint:
            reasons[key] = "the plate's files changed"
        else:
            for parent in parents:
                if parent not in latest:
                    partitioned_parent = graph.get(parent).partitions_def is not None
                    latest[parent] = latest_status(instance, parent, partition if partitioned_parent else None)
                parent_status = latest[parent]
                if parent_status is None:
                    continue
                if graph.get(parent).partitions_def is not None and node.partitions_def is None:
                    newer = parent_status.storage_id > status.storage_id  # consensus reads every plate
                else:
                    # The materialization this level read, by its event pointer; stale only if the content
                    # (data version) differs, so re-making an upstream level identically changes nothing.
                    pointer = status.tags.get(INPUT_EVENT_POINTER_TAG + parent.to_user_string())
                    used = _data_version_at(instance, parent, partition, int(pointer)) if pointer else None
                    newer = used is not None and used != parent_status.data_version
                if newer:
                    reasons[key] = f"{parent.to_user_string()} has a newer data version"
                    break
    return reasons


def stale_assets(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    asset_keys: list[dg.AssetKey],
    partition: str | None,
    current_input_fingerprint: str | None = None,
) -> list[dg.AssetKey]:
    reasons = stale_reasons(instance, defs, asset_keys, partition, current_input_fingerprint)
    return [key for key in asset_keys if key in reasons]
