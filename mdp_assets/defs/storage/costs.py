"""`storage_costs`: what is stored where and what it costs, refreshed daily."""

import base64
from datetime import datetime, timezone

import dagster as dg
import pandas as pd

from mdp_assets.storage import catalog
from mdp_assets.storage.costs import current_costs, plot, projection, published_by_target, with_deposits
from mdp_assets.storage.partitions import staged_output, summarize_table
from mdp_assets.storage.resource import MdpStorage

STORAGE_COSTS = dg.AssetKey("storage_costs")


@dg.asset(
    group_name="storage",
    kinds={"duckdb", "parquet"},
    description="Bytes and cost per tier, level and plate from the policy's prices, a 12-month projection under the "
    "lifecycle, and a plot; published deposits count as level published:<target>. Reads the catalog.",
)
def storage_costs(storage: MdpStorage) -> dg.Output:
    policy = storage.policy()
    files = _catalog_frame(storage, "SELECT tier, level, plate, bytes FROM stored_files")
    now = datetime.now(timezone.utc)
    partitions = _catalog_frame(
        storage,
        "SELECT asset_key AS level, tier, sum(bytes) AS bytes, max(coalesce(last_moved, created)) AS stage_entered_at "
        "FROM stored_files GROUP BY asset_key, partition, tier",
    )
    deposits = _catalog_frame(storage, "SELECT tier, target, plates, bytes, created FROM deposits") \
        if catalog.has_deposits(storage.catalog_path) else pd.DataFrame()
    files, partitions = with_deposits(files, partitions, deposits)
    costs = current_costs(files, policy)
    projected = projection(partitions, policy, now)
    png = plot(projected)
    with storage.staging_dir("storage_costs") as staged:
        costs.to_parquet(staged / "table.parquet", index=False)
        projected.to_parquet(staged / "projection.parquet", index=False)
        (staged / "storage_costs.png").write_bytes(png)
        by_tier = costs.groupby("tier")[["bytes", "monthly_cost_usd", "one_time_cost_usd"]].sum().reset_index()
        return staged_output(
            staged,
            {
                "total_bytes": int(costs["bytes"].sum()),
                "monthly_cost_usd": float(costs["monthly_cost_usd"].sum()),
                "one_time_cost_usd": float(costs["one_time_cost_usd"].sum()),
                "cost_in_12_months_usd": float(projected.loc[projected["month"] == 12, "monthly_cost_usd"].sum()),
                "by_tier": dg.MetadataValue.md(_markdown(by_tier)),
                "published_bytes_by_target": dg.MetadataValue.json(published_by_target(costs)),
                "plot": dg.MetadataValue.md(f"![storage costs](data:image/png;base64,{base64.b64encode(png).decode()})"),
                "policy": policy.name,
            },
            summarize_table(costs),
        )


def _catalog_frame(storage: MdpStorage, sql: str) -> pd.DataFrame:
    if not storage.catalog_path.exists():
        return pd.DataFrame(columns=["tier", "level", "plate", "bytes", "stage_entered_at"])
    columns, rows = catalog.query(storage.catalog_path, sql)
    return pd.DataFrame(rows, columns=columns)


def _markdown(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines)


def build_storage_costs_job(excluded_checks: dg.AssetChecksDefinition) -> tuple[object, dg.ScheduleDefinition]:
    job = dg.define_asset_job(
        "storage_costs_job",
        selection=dg.AssetSelection.assets(STORAGE_COSTS) - dg.AssetSelection.checks(excluded_checks),
        description="Refresh storage_costs from the catalog.",
    )
    schedule = dg.ScheduleDefinition(name="storage_costs_schedule", job=job, cron_schedule="30 2 * * *",
                                     default_status=dg.DefaultScheduleStatus.RUNNING,
                                     description="Daily (02:30): refresh storage_costs (bytes, cost, 12-month "
                                     "projection) from the catalog.")
    return job, schedule
