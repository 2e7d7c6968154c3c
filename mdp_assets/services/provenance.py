"""Provenance chains: how a level of a plate was made, back through every level it read to the raw images."""

from __future__ import annotations

from typing import Any

import dagster as dg
import pandas as pd

from mdp_assets.errors import MdpError
from mdp_assets.services.instance_status import latest_status
from mdp_assets.storage.provenance import describe


def provenance_chain(instance: dg.DagsterInstance, plate: str, level: str) -> list[dict[str, Any]]:
    """The provenance records of a level of a plate and of every level it was made from, down to raw_images."""
    chain, seen = [], set()
    pending = [(level, plate)]
    while pending:
        asset, partition = pending.pop(0)
        if (asset, partition) in seen or asset == "landing_zone":
            continue
        seen.add((asset, partition))
        status = latest_status(instance, dg.AssetKey.from_user_string(asset), partition)
        if status is None:
            raise MdpError(f"{asset} of {partition or 'all plates'} has never been materialized")
        record = status.value("provenance")
        if record is None:
            raise MdpError(f"{asset} of {partition} was materialized without provenance; re-materialize it")
        chain.append(record)
        pending.extend((item["asset"], item.get("partition")) for item in record["inputs"])
    return chain


def explain_chain(chain: list[dict[str, Any]], raw_images: pd.DataFrame | None, max_files: int = 10) -> str:
    parts = [describe(record) for record in chain]
    if raw_images is not None:
        lines = [f"raw image files ({len(raw_images)}), as inventoried with their checksums:"]
        for row in raw_images.head(max_files).itertuples(index=False):
            lines.append(f"  {row.source_uri if hasattr(row, 'source_uri') else row.uri}  sha256 {row.sha256}")
        if len(raw_images) > max_files:
            lines.append(f"  ... and {len(raw_images) - max_files} more (the raw_images table lists them all)")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)
