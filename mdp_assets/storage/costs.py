"""What storage costs: now, per tier, level and plate, and over the next 12 months under the lifecycle.

Prices come from the policy (per GB-month for cloud-like tiers, one time per TB for drives, per 1000
requests where it applies); they are configuration, not code. The projection walks every stored
partition through its level's stages month by month: a partition due to move counts in its next tier.
Published deposits (`mdp publish`) count in the publication tier as level `published:<target>`, for good.
"""

from __future__ import annotations

import io
from datetime import datetime, timedelta

import pandas as pd
from matplotlib.figure import Figure

from mdp_assets.storage.policy import StoragePolicy

GB, TB = 1e9, 1e12
MONTH = timedelta(days=30.44)


def current_costs(stored: pd.DataFrame, policy: StoragePolicy) -> pd.DataFrame:
    """stored: tier, level, plate, bytes (one row per file or partition) -> one row per tier, level, plate."""
    table = stored.groupby(["tier", "level", "plate"], dropna=False, as_index=False)["bytes"].sum()
    per_gb_month = table["tier"].map(lambda t: policy.tiers[t].cost.per_gb_month if t in policy.tiers else 0.0)
    one_time_per_tb = table["tier"].map(lambda t: policy.tiers[t].cost.one_time_per_tb if t in policy.tiers else 0.0)
    table["monthly_cost_usd"] = table["bytes"] / GB * per_gb_month
    table["one_time_cost_usd"] = table["bytes"] / TB * one_time_per_tb
    return table.sort_values(["tier", "level", "plate"], na_position="first").reset_index(drop=True)


PUBLISHED = "published:"


def with_deposits(stored: pd.DataFrame, partitions: pd.DataFrame,
                  deposits: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The stored files and partitions with every published deposit added (deposits: tier, target, plates,
    bytes, created), so the cost summary and the projection count them by target."""
    if deposits.empty:
        return stored, partitions
    rows = pd.DataFrame({"tier": deposits["tier"], "level": PUBLISHED + deposits["target"],
                         "plate": deposits["plates"], "bytes": deposits["bytes"].astype("int64"),
                         "stage_entered_at": pd.to_datetime(deposits["created"], utc=True)})
    stored = pd.concat([stored, rows[["tier", "level", "plate", "bytes"]]], ignore_index=True) \
        if not stored.empty else rows[["tier", "level", "plate", "bytes"]]
    partitions = pd.concat([partitions, rows[["level", "tier", "bytes", "stage_entered_at"]]], ignore_index=True) \
        if not partitions.empty else rows[["level", "tier", "bytes", "stage_entered_at"]]
    return stored, partitions


def published_by_target(costs: pd.DataFrame) -> dict[str, int]:
    """Bytes of published deposits per target, from `current_costs`' table."""
    published = costs[costs["level"].astype(str).str.startswith(PUBLISHED)]
    return {level.removeprefix(PUBLISHED): int(size)
            for level, size in published.groupby("level")["bytes"].sum().items()}


def tier_at(policy: StoragePolicy, level: str, tier: str, entered: datetime, when: datetime) -> str:
    """Which tier a partition of `level`, in `tier` since `entered`, will be in at `when`."""
    if level not in policy.levels:
        return tier
    stages = policy.stages(level)
    names = [s.tier for s in stages]
    if tier not in names:
        return tier
    index, since = names.index(tier), entered
    while stages[index].days is not None and index < len(stages) - 1 and when - since >= timedelta(days=stages[index].days):
        since += timedelta(days=stages[index].days)
        index += 1
    return names[index]


def projection(partitions: pd.DataFrame, policy: StoragePolicy, now: datetime, months: int = 12) -> pd.DataFrame:
    """partitions: level, tier, bytes, stage_entered_at -> month, tier, bytes, monthly_cost_usd."""
    rows = []
    for month in range(1, months + 1):
        when = now + month * MONTH
        for item in partitions.itertuples(index=False):
            tier = tier_at(policy, item.level, item.tier, item.stage_entered_at, when)
            rows.append({"month": month, "tier": tier, "bytes": int(item.bytes)})
    table = pd.DataFrame(rows, columns=["month", "tier", "bytes"])
    table = table.groupby(["month", "tier"], as_index=False)["bytes"].sum()
    per_gb_month = table["tier"].map(lambda t: policy.tiers[t].cost.per_gb_month if t in policy.tiers else 0.0)
    table["monthly_cost_usd"] = table["bytes"] / GB * per_gb_month
    return table


def plot(projected: pd.DataFrame) -> bytes:
    """A PNG: stored GB per tier over the next months (stacked), and the monthly bill."""
    gigabytes = projected.pivot_table(index="month", columns="tier", values="bytes", aggfunc="sum", fill_value=0) / GB
    bill = projected.groupby("month")["monthly_cost_usd"].sum()
    # The object-oriented API draws without pyplot's global state or a display backend.
    figure = Figure(figsize=(8, 6))
    top, bottom = figure.subplots(2, 1, sharex=True)
    gigabytes.plot.bar(stacked=True, ax=top)
    top.set_ylabel("stored (GB)")
    top.set_title("Storage under the lifecycle, next 12 months")
    bottom.plot(bill.index - 1, bill.to_numpy(), marker="o")
    bottom.set_ylabel("monthly cost (USD)")
    bottom.set_xlabel("month from now")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()
