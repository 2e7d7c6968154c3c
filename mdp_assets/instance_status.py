"""What the Dagster instance knows about each plate and level: the latest materialization, and
which levels must be made again (never made, made by another code version, or raw input changed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dagster as dg

CODE_VERSION_TAG = "dagster/code_version"


@dataclass(frozen=True)
class LevelStatus:
    plate: str
    asset: str
    metadata: dict[str, Any]
    code_version: str | None

    def value(self, key: str) -> Any:
        entry = self.metadata.get(key)
        return getattr(entry, "value", entry)


def latest_status(instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition: str | None) -> LevelStatus | None:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition] if partition else None), limit=1
    ).records
    if not records:
        return None
    materialization = records[0].asset_materialization
    assert materialization is not None
    return LevelStatus(
        plate=partition or "(all plates)",
        asset=asset_key.to_user_string(),
        metadata=dict(materialization.metadata),
        code_version=(materialization.tags or {}).get(CODE_VERSION_TAG),
    )


def stale_assets(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    asset_keys: list[dg.AssetKey],
    partition: str | None,
    current_input_fingerprint: str | None = None,
) -> list[dg.AssetKey]:
    """Assets (of `asset_keys`) that need a new materialization, with everything downstream of them."""
    graph = defs.resolve_asset_graph()
    stale: list[dg.AssetKey] = []
    for key in asset_keys:
        status = latest_status(instance, key, partition)
        current = graph.get(key).code_version
        if status is None or status.code_version != current:
            stale.append(key)
        elif key == dg.AssetKey("raw_images") and current_input_fingerprint is not None:
            if status.value("input_fingerprint") != current_input_fingerprint:
                stale.append(key)
    if not stale:
        return []
    downstream = dg.AssetSelection.assets(*stale).downstream().resolve(graph)
    return [key for key in asset_keys if key in downstream]
