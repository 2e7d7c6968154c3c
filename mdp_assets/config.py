"""The deployment's configuration: one `mdp.yaml` that every part of mdp builds from.

The Dagster definitions, every `mdp` command, the tests and the files in `deploy/` read the same file:
its path comes from the `MDP_CONFIG` environment variable, else `~/.mdp/mdp.yaml`; with neither, the
built-in defaults below apply with the data under `~/.mdp`. Relative paths in the file resolve against
the file's own folder, never the working directory, so a deployment means the same thing wherever a
process starts. A string value may name environment variables as `${NAME}` or `${NAME:-default}`
(endpoints and buckets that differ by site); credentials are never values, only the names of the
variables that hold them.

A plate's `plate.yaml` may override a documented subset (`PLATE_OVERRIDABLE`) for that plate alone.
`mdp config show` prints the resolved values and where each came from.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mdp_assets.errors import MdpError
from mdp_assets.safe_yaml import load_yaml
from mdp_assets.science.cell_qc import DEFAULT_CONDITIONS, check_conditions
from mdp_assets.science.illumination import IlluminationParameters
from mdp_assets.science.image_qc import QcThresholds
from mdp_assets.science.ome_zarr import writer_parameters as ome_zarr_writer_parameters
from mdp_assets.science.profile_quality import QualityParameters, copairs_version
from mdp_assets.science.parquet_profiles import DEFAULT_MEMORY_BUDGET
from mdp_assets.science.profiles import ProfileParameters
from mdp_assets.science.features import CpMeasureGroups
from mdp_assets.science.segmentation import SegmentationParameters

CONFIG_ENV = "MDP_CONFIG"
DEFAULT_CONFIG = Path("~/.mdp/mdp.yaml")
DEFAULT_HOME = Path("~/.mdp")
CELLPROFILER_VERSION = "4.2.8.1"  # what deploy/cellprofiler/build-env.sh installs
BUILTIN_ENGINE_REVISION = "builtin-1"
PACKAGE = Path(__file__).resolve().parent
SHIPPED_PIPELINES = PACKAGE / "pipelines"
SHIPPED_POLICIES = PACKAGE / "policies"
# Steps whose output depends on the engine (CellProfiler or built-in), so their code version names it.
ENGINE_STEPS = ("illumination_functions", "corrected_images", "segmentation_masks", "single_cell_features")

_Section = ConfigDict(extra="forbid")
# The science modules' parameter classes hold the defaults, each defined once there.
_QC, _ILLUMINATION = QcThresholds(), IlluminationParameters()
_SEGMENTATION, _PROFILES = SegmentationParameters(), ProfileParameters()
_QUALITY = QualityParameters()
_FEATURES = CpMeasureGroups()


# -- the settings of each processing step (dagster Config: the same classes are the run's resource fields) --
class QcSettings(dg.Config):
    """Image QC (MeasureImageQuality's focus and saturation). Relative rules judge an image against the
    plate's images of the same channel (robust z-score); absolute limits are optional; null turns a rule off."""

    model_config = _Section
    focus_robust_z: float | None = Field(
        _QC.focus_robust_z, description="blurred: focus slope this many scaled MADs below its channel's median")
    focus_min_drop: float = Field(
        _QC.focus_min_drop, ge=0, description="... and at least this far below it (slope units)")
    min_power_log_log_slope: float | None = Field(
        _QC.min_power_log_log_slope, description="blurred: focus slope below this value (absolute; e.g. -2.5)")
    saturation_robust_z: float | None = Field(
        _QC.saturation_robust_z, description="saturated: percent maximal this many scaled MADs above its median")
    saturation_min_rise: float = Field(
        _QC.saturation_min_rise, ge=0, description="... and at least this many percentage points above it")
    max_percent_maximal: float | None = Field(
        _QC.max_percent_maximal, description="saturated: more than this percent of pixels at the image maximum")
    max_failing_site_fraction: float = Field(
        0.5, ge=0, le=1, description="failing sites are excluded; the plate stops only above this share")

    def thresholds(self) -> QcThresholds:
        return QcThresholds(self.focus_robust_z, self.focus_min_drop, self.min_power_log_log_slope,
                            self.saturation_robust_z, self.saturation_min_rise, self.max_percent_maximal)


class IlluminationSettings(dg.Config):
    model_config = _Section
    smoothing_sigma_fraction: float = Field(_ILLUMINATION.smoothing_sigma_fraction,
                                            description="Gaussian sigma as a fraction of the image width")

    def parameters(self) -> IlluminationParameters:
        return IlluminationParameters(**self.model_dump())


class SegmentationSettings(dg.Config):
    """The built-in engine's segmentation (CellProfiler's own settings live in its pipeline)."""

    model_config = _Section
    nuclei_smoothing_sigma: float = _SEGMENTATION.nuclei_smoothing_sigma
    nuclei_min_area: int = _SEGMENTATION.nuclei_min_area
    nuclei_max_area: int = _SEGMENTATION.nuclei_max_area
    declump_min_distance: int = _SEGMENTATION.declump_min_distance
    cell_smoothing_sigma: float = _SEGMENTATION.cell_smoothing_sigma
    cell_threshold_correction: float = Field(_SEGMENTATION.cell_threshold_correction,
                                             description="CellProfiler's threshold correction factor")
    cell_max_distance: int = Field(_SEGMENTATION.cell_max_distance,
                                   description="pixels a cell may extend beyond its nucleus")
    discard_border_nuclei: bool = _SEGMENTATION.discard_border_nuclei

    def parameters(self) -> SegmentationParameters:
        return SegmentationParameters(**self.model_dump())


class FeatureSettings(dg.Config):
    """The built-in engine's cp-measure feature groups (CellProfiler's module settings; CellProfiler's own live in
    its pipeline). Off unless a deployment or plate turns them on: together they triple a site's measuring time
    (4.1 s -> 12.4 s an ExampleHuman site), and the demo's synthetic cells carry no texture phenotype for them to
    find. The module settings' defaults are CellProfiler's."""

    model_config = _Section
    texture: bool = Field(False, description="MeasureTexture (Haralick, numba kernel)")
    texture_scales: list[int] = Field(default_factory=lambda: list(_FEATURES.texture_scales))
    texture_gray_levels: int = Field(_FEATURES.texture_gray_levels, ge=2, le=256)
    granularity: bool = Field(False, description="MeasureGranularity")
    granularity_subsample: float = _FEATURES.granularity_subsample
    granularity_background_subsample: float = _FEATURES.granularity_background_subsample
    granularity_element_size: int = _FEATURES.granularity_element_size
    granularity_spectrum: int = _FEATURES.granularity_spectrum
    radial_distribution: bool = Field(False, description="MeasureObjectIntensityDistribution")
    radial_bins: int = _FEATURES.radial_bins
    correlation: bool = Field(False, description="MeasureColocalization within objects")
    correlation_threshold: int = _FEATURES.correlation_threshold

    def parameters(self) -> CpMeasureGroups:
        values = self.model_dump()
        values["texture_scales"] = tuple(values["texture_scales"])
        return CpMeasureGroups(**values)


class CropSettings(dg.Config):
    model_config = _Section
    size: int = Field(48, ge=8, description="edge of the square crop around each cell, in pixels")
    channels: list[str] | None = Field(None, description="the channels cropped, in this order (CellMask is added); "
                                       "default: every channel of the plate")


class ProfileSettings(dg.Config):
    """pycytominer's normalize and feature_select, as mdp computes them."""

    model_config = _Section
    normalize_method: Literal["standardize", "robustize", "mad_robustize"] = _PROFILES.normalize_method
    operations: list[str] = Field(default_factory=lambda: list(_PROFILES.operations))
    corr_threshold: float = _PROFILES.corr_threshold
    na_cutoff: float = _PROFILES.na_cutoff
    freq_cut: float = _PROFILES.freq_cut
    unique_cut: float = _PROFILES.unique_cut
    min_variance: float = _PROFILES.min_variance
    outlier_cutoff: float = _PROFILES.outlier_cutoff
    memory_gb: float = Field(DEFAULT_MEMORY_BUDGET / 2**30, gt=0, description="feature values the profile steps "
                             "hold at once, in GB (memory, not results: it is no parameter of theirs)")

    def parameters(self) -> ProfileParameters:
        values = self.model_dump(exclude={"memory_gb"})
        values["operations"] = tuple(values["operations"])
        return ProfileParameters(**values)

    def budget(self) -> int:
        return int(self.memory_gb * 2**30)


class CellQcSettings(dg.Config):
    """Single-cell QC by coSMicQC's method: outlier cells per plate, by z-score thresholds on named features."""

    model_config = _Section
    conditions: dict[str, dict[str, float]] = Field(
        default_factory=lambda: {name: dict(t) for name, t in DEFAULT_CONDITIONS.items()},
        description="condition -> {feature: threshold in standard deviations; > 0 flags above, < 0 below}; "
        "a cell is an outlier of a condition beyond all its thresholds (default: coSMicQC's nuclei conditions)")
    exclude_flagged: bool = Field(True, description="leave flagged cells out of the profiles (they are counted)")
    max_flagged_fraction: float = Field(0.2, ge=0, le=1, description="the flagged_fraction check fails above "
                                        "this share of a plate's or a well's cells")

    @model_validator(mode="after")
    def _valid_conditions(self) -> CellQcSettings:
        try:
            check_conditions(self.conditions)
        except MdpError as exc:
            raise ValueError(str(exc)) from None
        return self


class ProfileQualitySettings(dg.Config):
    """Replicate retrieval (copairs mAP) of every treatment against the negative controls, per plate."""

    model_config = _Section
    distance: Literal["cosine", "abs_cosine", "pearson", "euclidean", "manhattan", "chebyshev"] = _QUALITY.distance
    null_size: int = Field(_QUALITY.null_size, ge=100, description="random rankings in each null distribution")
    significance: float = Field(_QUALITY.threshold, gt=0, lt=1,
                                description="a treatment is retrieved when its corrected p-value is below this")
    seed: int = _QUALITY.seed
    min_map: float | None = Field(None, ge=0, le=1, description="the min_map check fails naming every treatment "
                                  "whose mAP is below this; unset: the check only reports")
    min_fraction_retrieved: float | None = Field(None, ge=0, le=1, description="the check also fails when the "
                                                 "plate's fraction of treatments retrieved is below this")

    def parameters(self) -> QualityParameters:
        return QualityParameters(self.distance, self.null_size, self.significance, self.seed)


class EmbeddingSettings(dg.Config):
    model_config = _Section
    components: int = Field(8, ge=1, description="principal components kept")


class ConsensusSettings(dg.Config):
    model_config = _Section
    operation: Literal["median", "modz"] = "median"


class PictureSettings(dg.Config):
    """What the pictures in the UI show (they change no data, so no code version depends on them)."""

    model_config = _Section
    plate_map_features: list[str] = Field(
        default_factory=lambda: ["Cells_AreaShape_Area", "Nuclei_AreaShape_Area"],
        description="well_profiles draws a plate map of each of these features (per-well median, before "
        "normalization) that the plate's cells have")


class SlurmSettings(dg.Config):
    """CellProfiler groups as SLURM jobs (`engine.cellprofiler.executor: slurm`): one array task per group of
    wells, submitted with sbatch; the CellProfiler environment and the data root must be on a filesystem the
    compute nodes share at the same paths."""

    model_config = _Section
    partition: str | None = Field(None, description="sbatch --partition; default: the cluster's default partition")
    account: str | None = Field(None, description="sbatch --account")
    time_limit: str = Field("04:00:00", description="sbatch --time of one group's job")
    cpus_per_group: int = Field(1, ge=1, description="sbatch --cpus-per-task of one group's job")
    memory: str | None = Field("8G", description="sbatch --mem of one group's job; null: the partition's default")
    wells_per_group: int = Field(4, ge=1, description="wells in one group, so one job (array task)")
    max_running: int = Field(0, ge=0, description="array tasks of one step running at once (--array=...%N); 0: no limit")
    retries: int = Field(2, ge=0, description="times a failed group is submitted again, alone")
    sbatch_args: list[str] = Field(default_factory=list, description="more sbatch options, e.g. [--qos=long]")
    work_dir: str | None = Field(None, description="shared folder of job scripts and logs; default <data_root>/slurm")
    slurm_conf: str | None = Field(None, description="SLURM_CONF for sbatch and squeue; default: the cluster's own")
    poll_seconds: float = Field(5.0, gt=0, description="how often squeue is asked whether the jobs are done")


class ContainerSettings(dg.Config):
    """CellProfiler groups as pods or ECS tasks (the `kubernetes` and `ecs` code locations, mdp_assets/locations):
    one pod or task per group of wells, each retried alone."""

    model_config = _Section
    wells_per_group: int = Field(4, ge=1, description="wells in one group, so one pod or task")
    max_parallel_groups: int = Field(8, ge=1, description="groups of one step running at once")
    retries: int = Field(2, ge=0, description="times a failed group is launched again, alone")
    cpus_per_group: int = Field(1, ge=1, description="CPU request and limit of one group's pod or task")
    memory: str = Field("4Gi", description="memory request and limit of one group's pod (Kubernetes)")


class CellProfilerSettings(dg.Config):
    """CellProfiler 4.2.8.1 in its own environment (`make cellprofiler`), and the lab's pipelines."""

    model_config = _Section
    environment: str = Field(".mdp/cellprofiler", description="the virtual environment `make cellprofiler` builds")
    executor: Literal["local", "slurm"] = Field(
        "local", description="where CellProfiler groups run: local processes, or SLURM jobs (engine.cellprofiler.slurm)")
    slurm: SlurmSettings = Field(default_factory=SlurmSettings)
    containers: ContainerSettings = Field(default_factory=ContainerSettings)
    workers: int = Field(0, ge=0, description="CellProfiler processes at once; 0: one per core")
    java_home: str | None = Field(None, description="JAVA_HOME; default: found from javac")
    illumination_pipeline: str = Field(str(SHIPPED_PIPELINES / "illumination.cppipe"),
                                       description="the illumination .cppipe")
    analysis_pipeline: str = Field(str(SHIPPED_PIPELINES / "analysis.cppipe"), description="the analysis .cppipe")


class EngineSettings(BaseModel):
    model_config = _Section
    kind: Literal["auto", "builtin", "cellprofiler"] = Field(
        "auto", description="who segments and measures: auto takes CellProfiler when its environment exists")
    cellprofiler: CellProfilerSettings = Field(default_factory=CellProfilerSettings)


class IntakeSettings(dg.ConfigurableResource):
    """When a plate folder in the landing zone counts as completely written (the intake sensor's resource)."""

    model_config = _Section
    quiet_period_seconds: int = Field(60, ge=0, description="instruments write for hours")
    max_plates_validated_per_tick: int = Field(
        25, ge=1, description="plates whose TIFF headers one tick may read; the rest wait for later ticks")
    incomplete_after_seconds: int = Field(
        3600, ge=0, description="a plate short of its expected images with nothing new for this long is reported "
        "incomplete, with what it lacks")


class S3Settings(BaseModel):
    model_config = _Section
    endpoint_url: str | None = Field(None, description="any S3-compatible store; empty for AWS")
    region: str | None = None
    access_key_id_env: str = Field("AWS_ACCESS_KEY_ID", description="the variable holding the access key")
    secret_access_key_env: str = Field("AWS_SECRET_ACCESS_KEY", description="the variable holding the secret key")


class LandingSettings(BaseModel):
    model_config = _Section
    folder: str | None = Field(None, description="folder of incoming plate folders; default <data_root>/landing")
    s3_bucket: str | None = Field(None, description="plates arrive under s3://<bucket>/<s3_prefix><plate>/")
    s3_prefix: str = ""


class StorageSettings(BaseModel):
    model_config = _Section
    policy: str = Field("local", description="a shipped policy (local, s3, service) or a policy file")
    landing: LandingSettings = Field(default_factory=LandingSettings)
    s3: S3Settings = Field(default_factory=S3Settings)
    versioned_tools: str = Field(".mdp/versioned", description="the environment deploy/versioned/build-env.sh "
                                 "builds (dvc for the dvc tier); dvc from PATH when it is not there")


class ExecutionSettings(BaseModel):
    """How runs execute: the executor of each run and the instance's run queue (`mdp config instance`)."""

    model_config = _Section
    executor: Literal["in_process", "multiprocess"] = Field(
        "multiprocess", description="multiprocess: independent steps of a run in parallel processes")
    max_concurrent_steps: int = Field(2, ge=1, description="steps of one run at once (multiprocess)")
    max_concurrent_runs: int = Field(2, ge=1, description="runs at once, across all plates")
    runs_per_plate: int = Field(1, ge=1, description="runs of one plate at once")
    cellprofiler_steps: int = Field(1, ge=1, description="CellProfiler steps at once (each uses every core)")
    workspace: str | None = Field(None, description="the workspace file the daemon and webserver load; default: "
                                  "one mdp writes into dagster_home, loading this package as the location `mdp`")


class ComputeSettings(dg.Config):
    """How many processes one step spreads its sites over (ingest, image QC, illumination, correction, the
    built-in segmentation and measurement): outputs are the same for any number."""

    model_config = _Section
    workers: int = Field(0, ge=0, description="processes per step for per-site work; 0: one per core the step "
                         "may use; 1: in the step's own process")


class MdpConfig(BaseModel):
    """A whole deployment."""

    model_config = _Section
    data_root: str = Field(str(DEFAULT_HOME / "data"), description="folder of every local tier, staging and the catalog")
    dagster_home: str | None = Field(None, description="the Dagster instance's folder; default: $DAGSTER_HOME")
    storage: StorageSettings = Field(default_factory=StorageSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    qc: QcSettings = Field(default_factory=QcSettings)
    illumination: IlluminationSettings = Field(default_factory=IlluminationSettings)
    segmentation: SegmentationSettings = Field(default_factory=SegmentationSettings)
    features: FeatureSettings = Field(default_factory=FeatureSettings)
    crops: CropSettings = Field(default_factory=CropSettings)
    cell_qc: CellQcSettings = Field(default_factory=CellQcSettings)
    profiles: ProfileSettings = Field(default_factory=ProfileSettings)
    profile_quality: ProfileQualitySettings = Field(default_factory=ProfileQualitySettings)
    embeddings: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    consensus: ConsensusSettings = Field(default_factory=ConsensusSettings)
    pictures: PictureSettings = Field(default_factory=PictureSettings)
    intake: IntakeSettings = Field(default_factory=IntakeSettings)
    execution: ExecutionSettings = Field(default_factory=ExecutionSettings)
    compute: ComputeSettings = Field(default_factory=ComputeSettings)

    @model_validator(mode="after")
    def _landing_is_one_place(self) -> MdpConfig:
        if self.storage.landing.folder and self.storage.landing.s3_bucket:
            raise ValueError("storage.landing: give either folder or s3_bucket, not both")
        return self


# What a plate's `settings:` may override, as dotted keys (anything else is an error naming the key).
PLATE_OVERRIDABLE: tuple[str, ...] = (
    *(f"qc.{k}" for k in QcSettings.model_fields),
    *(f"illumination.{k}" for k in IlluminationSettings.model_fields),
    *(f"segmentation.{k}" for k in SegmentationSettings.model_fields),
    *(f"features.{k}" for k in FeatureSettings.model_fields),
    *(f"crops.{k}" for k in CropSettings.model_fields),
    "engine.cellprofiler.illumination_pipeline",
    "engine.cellprofiler.analysis_pipeline",
)

# Values that are paths, resolved against the configuration file's folder.
_PATH_FIELDS = (
    ("data_root",), ("dagster_home",), ("storage", "landing", "folder"), ("storage", "versioned_tools"),
    ("engine", "cellprofiler", "environment"), ("engine", "cellprofiler", "illumination_pipeline"),
    ("engine", "cellprofiler", "analysis_pipeline"), ("engine", "cellprofiler", "slurm", "work_dir"),
    ("engine", "cellprofiler", "slurm", "slurm_conf"), ("execution", "workspace"),
)


@dataclass(frozen=True)
class Source:
    """Where a resolved value came from."""

    kind: Literal["default", "file", "env", "plate"]
    where: str = ""

    def __str__(self) -> str:
        return self.kind if self.kind == "default" else f"{self.kind} {self.where}"


@dataclass(frozen=True)
class Deployment:
    """The validated configuration of a deployment, with the file it came from and the source of each value."""

    config: MdpConfig
    path: Path | None
    sources: dict[str, Source] = field(default_factory=dict, compare=False)

    @property
    def folder(self) -> Path:
        return self.path.parent if self.path else DEFAULT_HOME.expanduser()

    @property
    def data_root(self) -> Path:
        return Path(self.config.data_root)

    @property
    def dagster_home(self) -> Path | None:
        if self.config.dagster_home:
            return Path(self.config.dagster_home)
        from_env = os.environ.get("DAGSTER_HOME")
        return Path(from_env).expanduser().resolve() if from_env else None

    def policy_path(self) -> Path:
        name = self.config.storage.policy
        shipped = SHIPPED_POLICIES / f"{name}.yaml"
        if "/" not in name and not name.endswith((".yaml", ".yml")):
            if not shipped.exists():
                known = sorted(p.stem for p in SHIPPED_POLICIES.glob("*.yaml"))
                raise MdpError(f"storage.policy names no shipped policy {name!r} (shipped: {known}) and is not a file",
                               path=self.path)
            return shipped
        return Path(name)

    def describe(self) -> list[tuple[str, Any, str]]:
        """(dotted key, value, source) for every leaf value, in the file's order."""
        return [(key, value, str(self.sources.get(key, Source("default"))))
                for key, value in _leaves(self.config.model_dump(mode="json"))]

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.config.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def config_path_from_environment() -> Path | None:
    """The file `MDP_CONFIG` names, else `~/.mdp/mdp.yaml` if it exists, else None (built-in defaults)."""
    named = os.environ.get(CONFIG_ENV)
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise MdpError(f"{CONFIG_ENV} names no file", path=path)
        return path.resolve()
    default = DEFAULT_CONFIG.expanduser()
    return default.resolve() if default.is_file() else None


def load_deployment(path: Path | None = None, *, from_environment: bool = True) -> Deployment:
    """The deployment in `path` (default: `config_path_from_environment()`), validated, paths resolved."""
    if path is None and from_environment:
        path = config_path_from_environment()
    if path is None:
        return _validated({}, None, {})
    path = Path(path).expanduser().resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MdpError(f"configuration cannot be read: {exc}", path=path) from exc
    data, sources = _parse(text, path)
    return _validated(data, path, sources)


def deployment_from_text(text: str, path: Path) -> Deployment:
    """A deployment from YAML text, as if it were the file at `path` (relative paths resolve beside it)."""
    data, sources = _parse(text, path)
    return _validated(data, path.resolve(), sources)


def _validated(data: dict[str, Any], path: Path | None, sources: dict[str, Source]) -> Deployment:
    folder = path.parent if path else DEFAULT_HOME.expanduser()
    for keys in _PATH_FIELDS:
        _resolve_path(data, keys, folder, default=_default_at(keys))
    try:
        config = MdpConfig.model_validate(data)
    except ValidationError as exc:
        raise MdpError(f"invalid configuration: {_describe(exc)}", path=path) from None
    return Deployment(config, path, sources)


def _default_at(keys: tuple[str, ...]) -> Any:
    value: Any = MdpConfig()
    for key in keys:
        value = getattr(value, key)
    return value


def _resolve_path(data: dict[str, Any], keys: tuple[str, ...], folder: Path, default: Any) -> None:
    """Make the path at `keys` absolute against `folder` (defaults too, except those already absolute)."""
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {}) if isinstance(node, dict) else {}
        if not isinstance(node, dict):
            return
    value = node.get(keys[-1], default)
    if isinstance(value, str) and value:
        path = Path(value).expanduser()
        node[keys[-1]] = str(path if path.is_absolute() else (folder / path).resolve())


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
MAX_CONFIG_BYTES = 1_000_000


def _parse(text: str, path: Path) -> tuple[dict[str, Any], dict[str, Source]]:
    """The file's values with `${VAR}` references expanded, and the line each value came from."""
    data = load_yaml(text, path, "configuration", MAX_CONFIG_BYTES)
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise MdpError("configuration must be a YAML mapping of sections", path=path)
    lines: dict[str, int] = {}
    _lines(yaml.compose(text, Loader=yaml.SafeLoader), (), lines)
    sources: dict[str, Source] = {}
    return _expanded(data, (), path, lines, sources), sources


def _lines(node: yaml.Node, keys: tuple[str, ...], out: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            _lines(value_node, (*keys, str(key_node.value)), out)
    else:
        out[".".join(keys)] = node.start_mark.line + 1


def _expanded(value: Any, keys: tuple[str, ...], path: Path, lines: dict[str, int], sources: dict[str, Source]) -> Any:
    if isinstance(value, dict):
        return {key: _expanded(item, (*keys, str(key)), path, lines, sources) for key, item in value.items()}
    dotted = ".".join(keys)
    where = f"{path.name}:{lines.get(dotted, '?')}"
    if isinstance(value, str) and _ENV_REFERENCE.search(value):
        names = ", ".join(m.group(1) for m in _ENV_REFERENCE.finditer(value))
        sources[dotted] = Source("env", f"{names} (via {where})")
        return _expand(value, path, dotted) or None  # an empty variable means "not set" (AWS defaults)
    sources[dotted] = Source("file", where)
    return value


def _expand(value: str, path: Path, key: str) -> str:
    def one(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        found = os.environ.get(name)
        if found is None:
            if default is None:
                raise MdpError(f"{key}: environment variable {name} is not set (write ${{{name}:-default}} "
                               "to give a default)", path=path)
            return default
        return found

    return _ENV_REFERENCE.sub(one, value)


def _describe(error: ValidationError) -> str:
    return "; ".join(
        f"field '{'.'.join(str(p) for p in item['loc']) or 'configuration'}': {item['msg'].removeprefix('Value error, ')}"
        for item in error.errors()
    )


def _leaves(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.extend(_leaves(value, dotted + "."))
        else:
            out.append((dotted, value))
    return out


# -- per-plate overrides --------------------------------------------------------------------------
def check_plate_overrides(overrides: dict[str, Any], where: Path | None = None) -> None:
    """Raise an MdpError naming every key a plate may not override."""
    if not isinstance(overrides, dict):
        raise MdpError("settings must be a mapping of sections", path=where)
    refused = sorted(key for key, _ in _leaves(overrides) if key not in PLATE_OVERRIDABLE)
    if refused:
        raise MdpError(f"a plate may not override {['settings.' + k for k in refused]}; "
                       f"it may override settings.{{{', '.join(PLATE_OVERRIDABLE)}}}", path=where)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# -- what each step uses, hashed into its code version ----------------------------------------------
def resolved_engine(config: MdpConfig) -> Literal["builtin", "cellprofiler"]:
    """`auto` becomes CellProfiler only when its environment has been built."""
    if config.engine.kind != "auto":
        return config.engine.kind
    python = Path(config.engine.cellprofiler.environment) / "bin" / "python"
    return "cellprofiler" if python.exists() else "builtin"


def file_sha256(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return "missing"


class StepSettings(dg.ConfigurableResource):
    """Every processing step's settings as a run sees them: the deployment's, with a plate's overrides on top
    (`for_plate`). An asset's code version is its engine revision plus a hash of the settings it uses."""

    engine: Literal["builtin", "cellprofiler"] = "builtin"
    engine_is_auto: bool = False  # `engine.kind: auto`: a plate CellProfiler's pipeline cannot read gets the built-in one
    qc: QcSettings = Field(default_factory=QcSettings)
    illumination: IlluminationSettings = Field(default_factory=IlluminationSettings)
    segmentation: SegmentationSettings = Field(default_factory=SegmentationSettings)
    features: FeatureSettings = Field(default_factory=FeatureSettings)
    crops: CropSettings = Field(default_factory=CropSettings)
    cell_qc: CellQcSettings = Field(default_factory=CellQcSettings)
    profiles: ProfileSettings = Field(default_factory=ProfileSettings)
    profile_quality: ProfileQualitySettings = Field(default_factory=ProfileQualitySettings)
    embeddings: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    consensus: ConsensusSettings = Field(default_factory=ConsensusSettings)
    pictures: PictureSettings = Field(default_factory=PictureSettings)
    cellprofiler: CellProfilerSettings = Field(default_factory=CellProfilerSettings)
    compute: ComputeSettings = Field(default_factory=ComputeSettings)  # changes no output: in no code version

    @classmethod
    def from_config(cls, config: MdpConfig) -> StepSettings:
        return cls(engine=resolved_engine(config), engine_is_auto=config.engine.kind == "auto", qc=config.qc, illumination=config.illumination,
                   segmentation=config.segmentation, features=config.features, crops=config.crops, cell_qc=config.cell_qc,
                   profiles=config.profiles, profile_quality=config.profile_quality, embeddings=config.embeddings,
                   consensus=config.consensus, pictures=config.pictures, cellprofiler=config.engine.cellprofiler,
                   compute=config.compute)

    def uses_cellprofiler(self) -> bool:
        return self.engine == "cellprofiler"

    def for_plate(self, overrides: dict[str, Any], plate: str = "") -> StepSettings:
        """These settings with a plate's `settings:` merged over them."""
        if not overrides:
            return self
        check_plate_overrides(overrides)
        values = self.model_dump()
        nested = dict(overrides)
        engine = nested.pop("engine", None) or {}
        merged = _merge(values, {**nested, "cellprofiler": engine.get("cellprofiler", {})})
        try:
            return StepSettings(**merged)
        except (ValidationError, dg.DagsterInvalidConfigError) as exc:
            raise MdpError(f"plate {plate}: invalid settings override: {exc}") from None

    def parameters(self, asset: str) -> dict[str, Any]:
        """The parameters one step uses: what its code version hashes, and what provenance records."""
        cellprofiler = self.cellprofiler

        def engine_step(pipeline: str, builtin: dict[str, Any]) -> dict[str, Any]:
            if self.engine == "cellprofiler":
                return {"engine": f"cellprofiler {CELLPROFILER_VERSION}", "pipeline": Path(pipeline).name,
                        "pipeline_sha256": file_sha256(pipeline)}
            return {"engine": "builtin", **builtin}

        profiles = {**self.profiles.model_dump(exclude={"memory_gb"}),
                    "exclude_qc_flagged_cells": self.cell_qc.exclude_flagged}
        quality = self.profile_quality
        pca = {"method": "pca", "solver": "covariance-eigh", "n_components": self.embeddings.components}
        by_asset: dict[str, dict[str, Any]] = {
            "image_qc": self.qc.model_dump(),
            "illumination_functions": engine_step(cellprofiler.illumination_pipeline, self.illumination.model_dump()),
            # CellProfiler's corrected_images are what the analysis pipeline reads, so they depend on it.
            "corrected_images": {"engine": engine_step(cellprofiler.analysis_pipeline, {})["engine"],
                                 **({"analysis_pipeline_sha256": file_sha256(cellprofiler.analysis_pipeline)}
                                    if self.engine == "cellprofiler" else {})},
            "segmentation_masks": engine_step(cellprofiler.analysis_pipeline, self.segmentation.model_dump()),
            "single_cell_features": engine_step(cellprofiler.analysis_pipeline, {"features": self.features.model_dump()})
            if self.engine == "builtin" else {"engine": engine_step(cellprofiler.analysis_pipeline, {})["engine"]},
            "single_cell_crops": {"crop_size": self.crops.size, "channels": self.crops.channels or "all",
                                  "bit_depth": "raw"},
            "single_cell_qc": {"method": "coSMicQC z-score thresholds per plate", "conditions": self.cell_qc.conditions},
            "single_cell_profiles": profiles,
            "well_profiles": {**profiles, "aggregate": "median"},
            "single_cell_embeddings": {**pca, "also_written_as": "AnnData .h5ad"},
            "well_embeddings": pca,
            "profile_quality": {"copairs": copairs_version(), "distance": quality.distance,
                                "null_size": quality.null_size, "significance": quality.significance,
                                "seed": quality.seed},
            "consensus_profiles": {"operation": self.consensus.operation, "by": "Metadata_Perturbation"},
            "ome_zarr_plate": ome_zarr_writer_parameters(),
        }
        return by_asset.get(asset, {})

    def code_version(self, asset: str) -> str:
        """The engine revision plus a hash of the step's parameters: changing either makes the level stale."""
        revision = f"cellprofiler-{CELLPROFILER_VERSION}" if asset in ENGINE_STEPS and self.uses_cellprofiler() \
            else BUILTIN_ENGINE_REVISION
        payload = json.dumps([asset, revision, [self.parameters(asset)]], sort_keys=True, default=str)
        return f"{revision}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"
