"""The plate manifest (`plate.yaml`): what a plate is, where it comes from and how to read it.

Every plate folder in the landing zone carries one. It is validated strictly: a typo in a field name,
an unknown origin or an unsafe barcode is an error naming the file and the field, never a guess.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mdp_assets.errors import MdpError
from mdp_assets.safe_yaml import load_yaml

MANIFEST_NAME = "plate.yaml"
MAX_MANIFEST_BYTES = 256 * 1024  # a manifest is a page of YAML; anything larger is a mistake or an attack

Origin = Literal["internal", "collaborator-academic", "collaborator-industry", "public"]
NamingSchemeName = Literal["phenix", "imagexpress", "nf1", "regex"]

# Barcodes become partition keys and folder names: no path separators, no leading dot, no spaces.
_SAFE_BARCODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ANNOTATION_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
# Metadata_ columns mdp writes itself; an annotation may not shadow them.
RESERVED_METADATA = frozenset({"Plate", "Well", "Site", "Channel", "Z", "T", "Origin", "Perturbation", "ObjectNumber"})


class NegativeControl(BaseModel):
    """Which platemap wells are negative controls (normalization reference)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    column: str = Field(description="platemap column, without the Metadata_ prefix")
    value: str


class PlateManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    barcode: str
    origin: Origin
    identifiable_patient_data: bool = False
    released: bool = Field(False, description="collaborator data cleared for publication")
    platemap: str = Field(description="platemap CSV, relative to the plate folder")
    platemap_well_column: str | None = Field(
        None, description="platemap column holding the well (A01 or A1); detected when omitted"
    )
    naming_scheme: NamingSchemeName
    naming_pattern: str | None = Field(None, description="regular expression, for naming_scheme 'regex'")
    channels: dict[str, str] = Field(
        default_factory=dict, description="channel token in file names -> channel name (ch1: DNA)"
    )
    nuclei_channel: str = "DNA"
    cell_channel: str | None = Field(
        None, description="channel outlining cell bodies; default: all non-nuclear channels combined"
    )
    expected_image_count: int = Field(gt=0)
    treatment_column: str | None = Field(None, description="platemap column naming the perturbation")
    negative_control: NegativeControl | None = None
    images_subdir: str = Field(".", description="folder of the images, relative to the plate folder")
    annotations: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="plate-level values (time_point: 24) that reach every row as Metadata_ columns"
    )
    pixel_size_um: float | None = Field(
        None, gt=0, description="the sample's pixel size, for images whose metadata do not state it"
    )
    imaged_wells: Literal["all", "subset"] = Field(
        "subset", description="'all': refuse the plate if a platemap well has no images; 'subset' (default): "
        "a platemap of the whole plate may describe wells that were not imaged (they are reported)"
    )
    float_images: Literal["refuse", "intensities"] = Field(
        "refuse", description="'intensities': float images hold intensities in [0, 1] (checked, NaN refused); by "
        "default float images are refused, as raw counts stored as float would be read thousands of times too bright"
    )
    settings: dict[str, Any] = Field(
        default_factory=dict, description="this plate's overrides of the deployment's settings (a documented subset)"
    )

    @field_validator("barcode")
    @classmethod
    def _safe_barcode(cls, value: str) -> str:
        if not _SAFE_BARCODE.match(value):
            raise ValueError(
                f"unsafe plate barcode {value!r}: use letters, digits, '.', '_' or '-' "
                "(no path separators, spaces or leading dot; at most 128 characters)"
            )
        return value

    @field_validator("channels")
    @classmethod
    def _channel_names(cls, value: dict[str, str]) -> dict[str, str]:
        for source, name in value.items():
            if not re.match(r"^[A-Za-z][A-Za-z0-9_]*$", name):
                raise ValueError(f"channel {source!r}: name {name!r} must be letters, digits and '_', starting with a "
                                 "letter (CellProfiler image and feature names)")
        return value

    @field_validator("annotations")
    @classmethod
    def _annotation_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            bare = name.removeprefix("Metadata_")
            if not _ANNOTATION_NAME.match(bare):
                raise ValueError(f"annotation name {name!r}: use letters, digits and '_', starting with a letter")
            if bare in RESERVED_METADATA:
                raise ValueError(f"annotation name {name!r} is set by mdp itself (reserved: {sorted(RESERVED_METADATA)})")
        return value

    @property
    def images_prefix(self) -> str:
        """The images' folder as a prefix of their paths in the plate folder ("" or "images/")."""
        return "" if self.images_subdir in (".", "") else self.images_subdir.rstrip("/") + "/"

    @field_validator("platemap", "images_subdir")
    @classmethod
    def _relative_inside(cls, value: str) -> str:
        path = Path(value)
        if path.is_absolute() or ".." in path.parts:
            raise ValueError(f"{value!r} must be a path inside the plate folder")
        return value

    @model_validator(mode="after")
    def _scheme_needs_pattern(self) -> PlateManifest:
        if self.naming_scheme == "regex":
            if not self.naming_pattern:
                raise ValueError("naming_scheme 'regex' needs naming_pattern")
            try:
                compiled = re.compile(self.naming_pattern)
            except re.error as exc:
                raise ValueError(f"naming_pattern is not a valid regular expression: {exc}") from exc
            missing = {"well", "site", "channel"} - set(compiled.groupindex)
            if missing:
                raise ValueError(f"naming_pattern lacks the named groups {sorted(missing)}")
        elif self.naming_pattern:
            raise ValueError("naming_pattern is only used with naming_scheme 'regex'")
        if self.identifiable_patient_data and self.origin == "public":
            raise ValueError("a plate with identifiable patient data cannot have origin 'public'")
        return self


def check_barcode(value: str, where: str = "plate barcode") -> str:
    """A barcode safe as a folder name and partition key (the manifest's rule), or an MdpError."""
    if not _SAFE_BARCODE.match(value):
        raise MdpError(f"{where} {value[:200]!r} is not a safe plate id: use letters, digits, '.', '_' or '-' (no path "
                       "separators, spaces or leading dot; at most 128 characters)")
    return value


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "manifest"
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"field '{where}': {message}")
    return "; ".join(parts)


def load_manifest(path: Path) -> PlateManifest:
    """Read and validate a plate manifest; every problem is an MdpError naming the file."""
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise MdpError(f"plate manifest is over {MAX_MANIFEST_BYTES} bytes; refusing to read it", path=path)
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise MdpError("plate manifest not found", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MdpError(f"plate manifest cannot be read: {exc}", path=path) from exc
    data = load_yaml(text, path, "plate manifest", MAX_MANIFEST_BYTES)
    if not isinstance(data, dict):
        raise MdpError("plate manifest must be a YAML mapping of fields", path=path)
    try:
        return PlateManifest.model_validate(data)
    except ValidationError as exc:
        raise MdpError(f"invalid plate manifest: {_describe(exc)}", path=path) from None
