"""The summary table: every level of every plate, its size and where it is stored."""

from __future__ import annotations

import dagster as dg

from mdp_assets.services.instance_status import LevelStatus, latest_status
from mdp_assets.storage.resource import MdpStorage

ALL_PLATES = "(all plates)"


def human_bytes(count: int | None) -> str:
    if count is None:
        return "-"
    size = float(count)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(count)


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def summary_rows(instance: dg.DagsterInstance, defs: dg.Definitions, plates: list[str],
                 storage: MdpStorage) -> list[list[str]]:
    graph = defs.resolve_asset_graph()
    keys = [k for k in graph.toposorted_asset_keys if k.path[-1] != "storage_costs"]
    rows = []
    for plate in plates:
        for key in keys:
            if graph.get(key).partitions_def is not None:
                rows.append(_row(latest_status(instance, key, plate), plate, key, storage))
    for key in keys:
        if graph.get(key).partitions_def is None:
            rows.append(_row(latest_status(instance, key, None), ALL_PLATES, key, storage))
    return rows


def summary_table(instance: dg.DagsterInstance, defs: dg.Definitions, plates: list[str], storage: MdpStorage) -> str:
    return format_table(["plate", "level", "rows or files", "bytes", "where stored"],
                        summary_rows(instance, defs, plates, storage))


def _row(status: LevelStatus | None, plate: str, key: dg.AssetKey, storage: MdpStorage) -> list[str]:
    if status is None:
        return [plate, key.to_user_string(), "not materialized", "-", "-"]
    rows = status.value("rows")
    count = f"{rows} rows" if rows is not None else f"{status.value('files')} files"
    partition = None if plate == ALL_PLATES else plate
    store = storage.store()
    found = store.locate(key.path[-1], partition)
    if found is None:
        where = "missing from every tier of its lifecycle (mdp verify)"
    elif found.released:
        where = f"{found.tier}: released (transient level; provenance kept)"
    else:
        where = f"{found.tier}: {store.uri(key.path[-1], partition, found.tier)}"
    return [plate, key.to_user_string(), count, human_bytes(status.value("bytes")), where]
