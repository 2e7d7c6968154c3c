"""The summary table: every level of every plate, its size and where it is stored."""

from __future__ import annotations

import dagster as dg
import pandas as pd

from mdp_assets.services.instance_status import LevelStatus, latest_status
from mdp_assets.storage.partitions import TABLE_FILE
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


PROFILE_QUALITY = dg.AssetKey("profile_quality")
CELL_QC = dg.AssetKey("single_cell_qc")


def quality_rows(instance: dg.DagsterInstance, plates: list[str], storage: MdpStorage) -> list[list[str]]:
    """Per plate: cells QC flagged, then each treatment's mAP against the negative controls, its corrected p-value
    and whether it is retrieved, and the controls' null check (their two halves) beside its chance level."""
    rows = []
    for plate in plates:
        cells = latest_status(instance, CELL_QC, plate)
        if cells is not None:
            rows.append([plate, "(cells flagged by QC)", f"{cells.value('flagged_cells')} of {cells.value('cells')}",
                         f"{cells.value('flagged_fraction'):.1%}", str(cells.value("flagged_cells_in_profiles"))])
        status = latest_status(instance, PROFILE_QUALITY, plate)
        if status is None:
            rows.append([plate, "-", "not materialized", "-", "-"])
            continue
        if status.value("quality") != "computed":
            rows.append([plate, "-", str(status.value("quality")), "-", "-"])
            continue
        table = pd.read_parquet(storage.store().read(PROFILE_QUALITY.path[-1], plate).path(TABLE_FILE))
        for row in table.itertuples(index=False):
            rows.append([plate, str(row[0]), f"{row.mean_average_precision:.3f}", f"{row.corrected_p_value:.3g}",
                         "yes" if row.below_corrected_p else "no"])
        control = status.value("control_map")
        if control is not None:
            rows.append([plate, "(negative controls, two halves)", f"{control:.3f}",
                         f"{status.value('control_p_value'):.3g}", f"chance {status.value('control_chance'):.3f}"])
    return rows


def quality_table(instance: dg.DagsterInstance, plates: list[str], storage: MdpStorage) -> str:
    header = ["plate", "treatment", "mAP", "corrected p", "retrieved"]
    return ("profile quality: replicate-retrieval mAP against the negative controls (copairs); retrieved: "
            "corrected p below the significance level\n" + format_table(header, quality_rows(instance, plates, storage)))
