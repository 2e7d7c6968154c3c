"""The parameters of every processing step, as one resource a deployment can set.

An asset's code version is its engine revision plus a hash of the parameters it uses, so changing a
parameter marks that level, and every level below it, stale for every plate.
"""

import hashlib
from pathlib import Path
from typing import Any, Literal

import dagster as dg
from pydantic import Field

from mdp_assets.engines.cellprofiler.engine import CELLPROFILER_VERSION
from mdp_assets.errors import MdpError
from mdp_assets.science.illumination import IlluminationParameters
from mdp_assets.science.image_qc import QcThresholds
from mdp_assets.science.profiles import ProfileParameters
from mdp_assets.science.segmentation import SegmentationParameters
from mdp_assets.versions import BUILTIN_ENGINE_REVISION, step_version


# The settings a deployment can change, as Dagster config. Their defaults are the lib's own, defined once there.
_QC, _ILLUMINATION = QcThresholds(), IlluminationParameters()
_SEGMENTATION, _PROFILES = SegmentationParameters(), ProfileParameters()


class QcSettings(dg.Config):
    min_power_log_log_slope: float = _QC.min_power_log_log_slope
    max_percent_maximal: float = _QC.max_percent_maximal
    min_pass_fraction: float = 0.9


class IlluminationSettings(dg.Config):
    smoothing_sigma_fraction: float = _ILLUMINATION.smoothing_sigma_fraction


class SegmentationSettings(dg.Config):
    nuclei_smoothing_sigma: float = _SEGMENTATION.nuclei_smoothing_sigma
    nuclei_min_area: int = _SEGMENTATION.nuclei_min_area
    nuclei_max_area: int = _SEGMENTATION.nuclei_max_area
    declump_min_distance: int = _SEGMENTATION.declump_min_distance
    cell_smoothing_sigma: float = _SEGMENTATION.cell_smoothing_sigma
    cell_threshold_correction: float = _SEGMENTATION.cell_threshold_correction
    cell_max_distance: int = _SEGMENTATION.cell_max_distance
    discard_border_nuclei: bool = _SEGMENTATION.discard_border_nuclei


class ProfileSettings(dg.Config):
    normalize_method: str = _PROFILES.normalize_method
    operations: list[str] = Field(default_factory=lambda: list(_PROFILES.operations))
    corr_threshold: float = _PROFILES.corr_threshold
    na_cutoff: float = _PROFILES.na_cutoff
    freq_cut: float = _PROFILES.freq_cut
    unique_cut: float = _PROFILES.unique_cut
    min_variance: float = _PROFILES.min_variance
    outlier_cutoff: float = _PROFILES.outlier_cutoff


PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"
DEFAULT_ANALYSIS_PIPELINE = PIPELINES / "analysis.cppipe"
DEFAULT_ILLUMINATION_PIPELINE = PIPELINES / "illumination.cppipe"
CELLPROFILER_STEPS = ("illumination_functions", "segmentation_masks", "single_cell_features")


class PipelineParameters(dg.ConfigurableResource):
    """Every step's parameters; the defaults are the built-in engine's.

    `engine` chooses who segments and measures cells: "cellprofiler" (the lab's .cppipe, run headless),
    "builtin" (scikit-image), or "auto" (CellProfiler when its environment exists). `build_definitions`
    resolves "auto" once, so code versions say which engine made a level."""

    engine: Literal["auto", "builtin", "cellprofiler"] = "auto"
    analysis_pipeline: str = Field(str(DEFAULT_ANALYSIS_PIPELINE), description="CellProfiler analysis .cppipe")
    illumination_pipeline: str = Field(
        str(DEFAULT_ILLUMINATION_PIPELINE), description="CellProfiler illumination .cppipe (saves Illum<Channel>.npy)"
    )

    image_qc: QcSettings = Field(default_factory=QcSettings)
    illumination: IlluminationSettings = Field(default_factory=IlluminationSettings)
    segmentation: SegmentationSettings = Field(default_factory=SegmentationSettings)
    crop_size: int = 48
    profiles: ProfileSettings = Field(default_factory=ProfileSettings)
    embedding_components: int = 8
    consensus_operation: Literal["median", "modz"] = "median"

    def qc_thresholds(self) -> QcThresholds:
        return QcThresholds(self.image_qc.min_power_log_log_slope, self.image_qc.max_percent_maximal)

    def illumination_parameters(self) -> IlluminationParameters:
        return IlluminationParameters(**self.illumination.model_dump())

    def segmentation_parameters(self) -> SegmentationParameters:
        return SegmentationParameters(**self.segmentation.model_dump())

    def profile_parameters(self) -> ProfileParameters:
        values = self.profiles.model_dump()
        values["operations"] = tuple(values["operations"])
        return ProfileParameters(**values)

    def uses_cellprofiler(self) -> bool:
        if self.engine == "auto":
            raise MdpError("engine 'auto' must be resolved by build_definitions before use")
        return self.engine == "cellprofiler"

    def engine_step(self, pipeline: str | None = None, builtin: dict[str, Any] | None = None) -> dict[str, Any]:
        if self.engine == "cellprofiler":
            path = Path(pipeline or self.analysis_pipeline)
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "missing"
            return {"engine": f"cellprofiler {CELLPROFILER_VERSION}", "pipeline": path.name, "pipeline_sha256": digest}
        return {"engine": "builtin", **(self.segmentation.model_dump() if builtin is None else builtin)}

    def for_step(self, asset: str) -> dict[str, Any]:
        """The parameters one asset uses (what its code version hashes, and what provenance records)."""
        by_asset: dict[str, dict[str, Any]] = {
            "image_qc": self.image_qc.model_dump(),
            "illumination_functions": self.engine_step(self.illumination_pipeline, self.illumination.model_dump()),
            "segmentation_masks": self.engine_step(),
            "single_cell_features": {"engine": self.engine_step()["engine"]},
            "single_cell_crops": {"crop_size": self.crop_size},
            "single_cell_profiles": self.profiles.model_dump(),
            "well_profiles": {**self.profiles.model_dump(), "aggregate": "median"},
            "single_cell_embeddings": {"method": "pca", "solver": "covariance-eigh", "n_components": self.embedding_components},
            "well_embeddings": {"method": "pca", "solver": "covariance-eigh", "n_components": self.embedding_components},
            "consensus_profiles": {"operation": self.consensus_operation, "by": "Metadata_Perturbation"},
        }
        return by_asset.get(asset, {})

    def code_version(self, asset: str) -> str:
        engine_made = asset in CELLPROFILER_STEPS and self.engine == "cellprofiler"
        revision = f"cellprofiler-{CELLPROFILER_VERSION}" if engine_made else BUILTIN_ENGINE_REVISION
        return step_version(asset, self.for_step(asset), engine=revision)


def with_code_versions(assets: list[dg.AssetsDefinition], parameters: PipelineParameters) -> list[dg.AssetsDefinition]:
    return [
        a.map_asset_specs(lambda spec: spec.replace_attributes(code_version=parameters.code_version(spec.key.path[-1])))
        for a in assets
    ]
