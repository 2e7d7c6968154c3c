"""The storage policy: which tier each level lives in, for how long, who may see it, and what it costs.

It encodes the playbook: tiers with their backend, access, longevity, version control, usage speed, size
limits and prices (the playbook's Table 1; prices are configuration), a lifecycle per level in stages
(short, mid, long term, as in its Figure 1), and which access classes each origin may be written to.
Identifiable patient data are never public and collaborator data stay private unless released: these two
rules hold whatever a policy says, and a policy that contradicts them is rejected when it loads.
"""

from __future__ import annotations

import functools
from importlib import resources
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mdp_assets.errors import MdpError
from mdp_assets.plates.manifest import Origin
from mdp_assets.safe_yaml import load_yaml

Access = Literal["private", "public"]
Backend = Literal["filesystem", "s3", "git", "ephemeral", "dvc", "git-lfs"]
REPOSITORY_BACKENDS = ("filesystem", "git", "ephemeral", "dvc", "git-lfs")  # a folder under the data root
ORIGINS: tuple[str, ...] = ("internal", "collaborator-academic", "collaborator-industry", "public")
COLLABORATOR_ORIGINS = ("collaborator-academic", "collaborator-industry")
MAX_POLICY_BYTES = 1024 * 1024
# Levels a lab chooses: they exist (in the definitions, plate_job, the lifecycle) only when the policy gives
# them a lifecycle. The OME-Zarr copy of a plate's images doubles its image bytes.
OPTIONAL_LEVELS = ("ome_zarr_plate",)


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    per_file_bytes: float | None = None
    per_dataset_bytes: float | None = None
    total_bytes: float | None = None


class Cost(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    per_gb_month: float = 0.0
    one_time_per_tb: float = 0.0
    per_1000_requests: float = 0.0


class Tier(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    backend: Backend
    path: str | None = Field(None, description="filesystem/git/ephemeral: folder, relative to the data root; "
                             "dvc/git-lfs: the tier's git repository of records and pointers")
    bucket: str | None = Field(None, description="s3: bucket")
    prefix: str = ""
    endpoint_url: str | None = Field(None, description="s3, and dvc's S3 remote: any S3-compatible endpoint")
    region: str | None = None
    remote_url: str | None = Field(None, description="dvc: the DVC remote holding the data (s3://bucket/prefix)")
    lfs_url: str | None = Field(None, description="git-lfs: the LFS server's endpoint (http(s)://host/org/repo)")
    git_remote: str | None = Field(None, description="dvc/git-lfs: a git remote the tier's repository pushes to")
    access_key_id_env: str = Field("AWS_ACCESS_KEY_ID", description="dvc: the variable holding the remote's "
                                   "access key, read when the tier is opened")
    secret_access_key_env: str = Field("AWS_SECRET_ACCESS_KEY", description="dvc: the variable holding its secret")
    access: Access
    longevity: Literal["none", "low", "intermediate", "high"]
    version_control: bool = False
    usage_speed: Literal["instant", "download", "none"]
    limits: Limits = Field(default_factory=Limits)
    cost: Cost = Field(default_factory=Cost)
    restricted_file_mode: str = Field(
        "0640", pattern=r"^0?[0-7]{3}$",
        description="files of collaborator and identifiable-patient plates, in octal: no world access by default")
    identifiable_patient_data_allowed: bool | None = Field(
        None, description="may this tier hold any level (inventories and metadata included) of an identifiable-patient "
        "plate; default: yes on the lab's own storage, no on a cloud (s3) tier unless the policy says so here")
    description: str = ""

    @property
    def restricted_mode(self) -> int:
        return int(self.restricted_file_mode, 8)

    @property
    def is_cloud(self) -> bool:
        """Storage outside the lab's own: a bucket, a DVC remote, an LFS server."""
        return self.backend in ("s3", "dvc", "git-lfs")

    @property
    def holds_identifiable_patient_data(self) -> bool:
        return self.identifiable_patient_data_allowed if self.identifiable_patient_data_allowed is not None \
            else not self.is_cloud

    @model_validator(mode="after")
    def _backend_fields(self) -> Tier:
        if self.backend == "s3" and not self.bucket:
            raise ValueError("an s3 tier needs a bucket")
        if self.backend in REPOSITORY_BACKENDS and not self.path:
            raise ValueError(f"a {self.backend} tier needs a path")
        if self.backend == "dvc" and not self.remote_url:
            raise ValueError("a dvc tier needs a remote_url (its DVC remote, e.g. s3://bucket/prefix)")
        if self.backend == "git-lfs" and not self.lfs_url:
            raise ValueError("a git-lfs tier needs an lfs_url (its LFS server)")
        return self


class Stage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    tier: str
    days: float | None = Field(None, gt=0, description="how long a partition stays here; None: for good")


class LandingRelease(BaseModel):
    """When the landing zone's copy of a plate's images may be deleted: never (the default), or once the copy
    in the tiers is verified and `after_days` have passed since it was stored."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    release: Literal["never", "after_verified_copy"] = "never"
    after_days: float = Field(0, ge=0, description="days after the verified copy was stored")


class RawImages(BaseModel):
    """What `raw_images` does with the image bytes. `copy`: each plate's image files are copied into the tiers
    of the raw_images lifecycle and every level reads them there; `reference`: they stay in the landing zone
    (the lab's instrument storage is the archive) and only the inventory is stored."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    mode: Literal["copy", "reference"] = "copy"
    landing: LandingRelease = Field(default_factory=LandingRelease)

    @model_validator(mode="after")
    def _release_needs_copy(self) -> RawImages:
        if self.mode == "reference" and self.landing.release != "never":
            raise ValueError("raw_images: in reference mode the landing zone holds the only copy of the images, "
                             "so landing.release must be 'never'")
        return self


class Publication(BaseModel):
    """What may be published (`mdp publish`), and where deposits are built. Identifiable-patient plates are never
    published, and collaborator plates only once released: those hold whatever this section says."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    tier: str = Field("public-archive", description="the public filesystem tier deposits are built in")
    origins: list[Origin] = Field(default_factory=lambda: ["public"],
                                  description="origins whose plates may be published; an internal plate is "
                                  "reclassified public first (`mdp reclassify`, recorded)")
    released_collaborators: bool = Field(True, description="collaborator plates marked released may be published")
    license: str = Field("CC-BY-4.0", description="SPDX id of the deposits' licence unless `mdp publish --license`")


class StoragePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    tiers: dict[str, Tier]
    levels: dict[str, list[Stage]]
    origins: dict[str, list[Access]]
    released_collaborator_access: list[Access] = Field(default_factory=lambda: ["private", "public"])
    identifiable_patient_data_access: list[Access] = Field(default_factory=lambda: ["private"])
    active_days: float = Field(30, ge=0, description="a plate materialized this recently stays in its fast tier")
    raw_images: RawImages = Field(default_factory=RawImages)
    publication: Publication = Field(default_factory=Publication)

    @model_validator(mode="after")
    def _rules(self) -> StoragePolicy:
        problems = []
        if "public" in self.identifiable_patient_data_access:
            problems.append("rule 'identifiable patient data are never shared': "
                            "identifiable_patient_data_access must not include 'public'")
        for origin in COLLABORATOR_ORIGINS:
            if "public" in self.origins.get(origin, []):
                problems.append(f"rule 'collaborator data stay private unless released': origins.{origin} "
                                "must not include 'public' (released plates use released_collaborator_access)")
        for origin in COLLABORATOR_ORIGINS:
            if origin in self.publication.origins:
                problems.append(f"rule 'collaborator data stay private unless released': publication.origins must "
                                f"not include {origin!r} (released plates use publication.released_collaborators)")
        missing = [o for o in ORIGINS if o not in self.origins]
        if missing:
            problems.append(f"origins lacks {missing}")
        unknown = sorted(set(self.origins) - set(ORIGINS))
        if unknown:
            problems.append(f"origins has unknown origins {unknown}")
        for level, stages in self.levels.items():
            if not stages:
                problems.append(f"levels.{level} has no stages")
            for index, stage in enumerate(stages):
                if stage.tier not in self.tiers:
                    problems.append(f"levels.{level} stage {index + 1} names unknown tier {stage.tier!r}")
                elif self.tiers[stage.tier].backend == "ephemeral" and len(stages) > 1:
                    problems.append(f"levels.{level}: an ephemeral tier must be the level's only stage")
                if stage.days is None and index < len(stages) - 1:
                    problems.append(f"levels.{level} stage {index + 1} lasts for good but is followed by another")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # -- questions the IO manager and the lifecycle ask -----------------------------------------
    def builds(self, level: str) -> bool:
        """Whether the platform makes `level` at all: every level, except an optional one the policy omits."""
        return level not in OPTIONAL_LEVELS or level in self.levels

    def stages(self, level: str) -> list[Stage]:
        if level not in self.levels:
            raise MdpError(f"storage policy {self.name!r} has no lifecycle for level {level!r}")
        return self.levels[level]

    def allowed_access(self, origin: str, identifiable_patient_data: bool, released: bool) -> set[str]:
        allowed = set(self.origins[origin])
        if origin in COLLABORATOR_ORIGINS and released:
            allowed |= set(self.released_collaborator_access)
        if identifiable_patient_data:
            allowed &= set(self.identifiable_patient_data_access) - {"public"}
        return allowed

    def check_origin(self, tier: str, origin: str, identifiable_patient_data: bool, released: bool, what: str) -> None:
        problem = self.origin_problem(tier, origin, identifiable_patient_data, released)
        if problem:
            raise MdpError(f"{what} may not be written to tier {problem}")

    def origin_problem(self, tier: str, origin: str, identifiable_patient_data: bool, released: bool) -> str | None:
        """Why a plate of this access class may not be in `tier` ("'<tier>' (<access>): <why>"), or None."""
        spec = self.tiers[tier]
        allowed = self.allowed_access(origin, identifiable_patient_data, released)
        if spec.access not in allowed:
            why = "it holds identifiable patient data" if identifiable_patient_data and spec.access == "public" else (
                f"its origin is {origin!r}" + ("" if released or origin not in COLLABORATOR_ORIGINS else " and it is not released"))
            return f"{tier!r} ({spec.access}): {why}; allowed access: {sorted(allowed) or 'none'}"
        if identifiable_patient_data and not spec.holds_identifiable_patient_data:
            # File names and acquisition metadata identify patients as surely as pixels do: every level counts.
            return (f"{tier!r} ({spec.access}, {'cloud' if spec.is_cloud else 'lab'} storage): it holds identifiable "
                    f"patient data, which no level (inventories and metadata included) may put there unless the "
                    f"policy allows it (tiers.{tier}.identifiable_patient_data_allowed: true)")
        return None

    def publication_problem(self, origin: str, identifiable_patient_data: bool, released: bool) -> str | None:
        """The rule that forbids publishing a plate of this access class, or None when it may be published."""
        if identifiable_patient_data:
            return "rule 'identifiable patient data are never shared': it holds identifiable patient data"
        if origin in COLLABORATOR_ORIGINS:
            if not released:
                return (f"rule 'collaborator data stay private unless released': its origin is {origin!r} and it is "
                        "not released")
            if not self.publication.released_collaborators:
                return (f"rule 'publication.released_collaborators: false' of policy {self.name!r}: its origin is "
                        f"{origin!r}")
        elif origin not in self.publication.origins:
            return (f"rule 'only plates of origin {sorted(self.publication.origins)} are published' "
                    f"(policy {self.name!r}, publication.origins): its origin is {origin!r}; a lab publishes its own "
                    "plate by reclassifying it first (`mdp reclassify PLATE --origin public --reason ...`, recorded)")
        tier = self.publication.tier
        if tier not in self.tiers:
            return f"policy {self.name!r} has no tier {tier!r} (publication.tier) to build deposits in"
        problem = self.origin_problem(tier, origin, identifiable_patient_data, released)
        if problem:
            return f"the policy's origin rules: tier {problem}"
        return None

    def check_limits(self, tier: str, file_sizes: list[int], tier_used_bytes: Callable[[], int], what: str) -> None:
        """Per-file, per-dataset and total limits; `tier_used_bytes` is asked only when the tier has a total limit."""
        limits = self.tiers[tier].limits
        largest, total = max(file_sizes, default=0), sum(file_sizes)
        if limits.per_file_bytes is not None and largest > limits.per_file_bytes:
            raise MdpError(f"{what}: a file of {largest} bytes exceeds tier {tier!r}'s per-file limit of "
                           f"{limits.per_file_bytes:.0f} bytes")
        if limits.per_dataset_bytes is not None and total > limits.per_dataset_bytes:
            raise MdpError(f"{what}: {total} bytes exceed tier {tier!r}'s per-dataset limit of {limits.per_dataset_bytes:.0f}")
        if limits.total_bytes is not None:
            used = tier_used_bytes()
            if used + total > limits.total_bytes:
                raise MdpError(f"{what}: tier {tier!r} would hold {used + total} bytes, over its total limit "
                               f"of {limits.total_bytes:.0f}")


def _describe(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in item['loc']) or 'policy'}: {item['msg'].removeprefix('Value error, ')}"
        for item in error.errors()
    )


def load_policy(path: Path) -> StoragePolicy:
    """The validated policy in `path`. Every write and read asks for it, so a parsed policy is reused until
    the file changes (same path, modification time and size); a file that fails validation is never cached."""
    try:
        status = path.stat()
    except OSError as exc:
        raise MdpError(f"storage policy cannot be read: {exc}", path=path) from exc
    return _load_policy(path.resolve(), status.st_mtime_ns, status.st_size)


@functools.lru_cache(maxsize=16)
def _load_policy(path: Path, mtime_ns: int, size: int) -> StoragePolicy:
    if size > MAX_POLICY_BYTES:
        raise MdpError(f"storage policy is over {MAX_POLICY_BYTES} bytes; refusing to read it", path=path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise MdpError(f"storage policy cannot be read: {exc}", path=path) from exc
    data = load_yaml(text, path, "storage policy", MAX_POLICY_BYTES)
    try:
        return StoragePolicy.model_validate(data)
    except ValidationError as exc:
        raise MdpError(f"invalid storage policy: {_describe(exc)}", path=path) from None


def shipped_policy(name: str) -> Path:
    return Path(str(resources.files("mdp_assets").joinpath(f"policies/{name}.yaml")))


__all__ = ["StoragePolicy", "Tier", "Stage", "RawImages", "LandingRelease", "load_policy", "shipped_policy", "Origin"]
