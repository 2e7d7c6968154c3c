"""The Dagster instance configuration a deployment implies: its run queue and limits come from `mdp.yaml`
(`execution:`), so `mdp config instance` writes the `dagster.yaml` that matches it. The embedded default
keeps runs and events in SQLite under the instance folder; a service adds its Postgres storage."""

from __future__ import annotations

from typing import Any

from mdp_assets.config import Deployment


def instance_config(deployment: Deployment, storage: dict[str, Any] | None = None) -> dict[str, Any]:
    execution = deployment.config.execution
    config: dict[str, Any] = {}
    if storage:
        config["storage"] = storage
    config.update({
        "run_coordinator": {"module": "dagster.core.run_coordinator", "class": "QueuedRunCoordinator"},
        "concurrency": {
            "runs": {
                "max_concurrent_runs": execution.max_concurrent_runs,
                # At most this many runs of one plate at a time: a backfill and the intake sensor never
                # process the same plate at once.
                "tag_concurrency_limits": [{"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True},
                                            "limit": execution.runs_per_plate}],
            },
            # The steps that run CellProfiler share the pool `cellprofiler`; each uses every core it is given.
            "pools": {"default_limit": execution.cellprofiler_steps},
        },
        # A run whose process died is marked failed instead of staying STARTED forever.
        "run_monitoring": {"enabled": True, "start_timeout_seconds": 300, "cancel_timeout_seconds": 180},
        "telemetry": {"enabled": False},
        "nux": {"enabled": False},
    })
    return config
