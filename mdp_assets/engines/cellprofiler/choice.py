"""Which engine makes a plate's masks and features: the deployment's, except that `engine.kind: auto` gives a
plate the built-in engine when the CellProfiler analysis pipeline reads channels the plate lacks (the shipped
pipeline is written for Cell Painting's five). With `engine.kind: cellprofiler` such a plate is refused at
registration instead (`services/registration.py`)."""

from __future__ import annotations

from pathlib import Path

from mdp_assets.config import StepSettings
from mdp_assets.engines.cellprofiler.pipelines import missing_pipeline_channels


def engine_for_plate(settings: StepSettings, channels: set[str]) -> tuple[StepSettings, str | None]:
    """(the settings to use, why the built-in engine stands in for CellProfiler, or None)."""
    if not settings.uses_cellprofiler() or not settings.engine_is_auto:
        return settings, None
    pipeline = Path(settings.cellprofiler.analysis_pipeline)
    missing = missing_pipeline_channels(pipeline, channels)
    if not missing:
        return settings, None
    reason = (f"engine auto: built-in engine for this plate, as the CellProfiler pipeline {pipeline.name} reads "
              f"channels {missing} the plate does not have (its channels: {sorted(channels)}); map them under "
              "'channels:' in plate.yaml, or name a pipeline for these channels")
    return StepSettings(**{**settings.model_dump(), "engine": "builtin"}), reason
