"""Which engine runs a deployment's CellProfiler groups: `engine.cellprofiler.executor` in mdp.yaml chooses local
processes (the default) or SLURM jobs. A service code location may bring its own (a pod, an ECS task)."""

from __future__ import annotations

from mdp_assets.config import Deployment
from mdp_assets.engines.cellprofiler.engine import CellProfilerEngine
from mdp_assets.engines.cellprofiler.slurm import SlurmCellProfilerEngine


def cellprofiler_engine(deployment: Deployment) -> CellProfilerEngine:
    settings = deployment.config.engine.cellprofiler
    if settings.executor == "slurm":
        return SlurmCellProfilerEngine.from_slurm_settings(settings.environment, settings.java_home, settings.slurm,
                                                           deployment.data_root / "slurm")
    return CellProfilerEngine.from_settings(settings)
