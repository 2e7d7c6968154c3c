"""The registered plate: what every level knows about a plate, fixed when the plate is registered.

Registration (the intake sensor, `mdp register` or `mdp demo`) validates the plate folder and writes one
record per plate into the registry (`<data_root>/plates/<barcode>.json`, atomically): the manifest as it
was, the platemap's annotations, where the plate came from, and when. Every level then loads the same
typed `Plate` from there, never from the landing zone again, so a plate can be processed after its
landing folder is archived, and an edit to the landing `plate.yaml` cannot change what a plate is.
The plate's origin in particular is part of the record: changing it is an explicit, recorded act
(`reclassify`), never a side effect of editing a file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from mdp_assets.checksums import atomic_path
from mdp_assets.errors import MdpError
from mdp_assets.plates.contents import check_contents, check_inside_plate_folder
from mdp_assets.plates.fingerprints import ImageFingerprint, check_unchanged, fingerprint_images
from mdp_assets.plates.inventory import STORED_FILE_COLUMN, PlateFolder, uri_to_path
from mdp_assets.plates.manifest import Origin, PlateManifest
from mdp_assets.plates.pixels import check_pixels
from mdp_assets.plates.platemap import metadata_name, read_platemap

PERTURBATION = "Metadata_Perturbation"
ORIGIN = "Metadata_Origin"
RECORD_VERSION = 1
PARTITIONS = "plates"  # the Dagster dynamic partitions: one per registered plate


@dataclass(frozen=True)
class PlateAccess:
    """What the storage policy needs to know about a plate to decide where its data may go."""

    plate: str
    origin: str
    identifiable_patient_data: bool
    released: bool


@dataclass(frozen=True)
class PlatemapCoverage:
    """Imaged wells without a platemap row or without a treatment, and platemap wells never imaged."""

    imaged_without_row: list[str]
    imaged_without_treatment: list[str]
    not_imaged: list[str]

    @property
    def complete(self) -> bool:
        return not self.imaged_without_row and not self.imaged_without_treatment


@dataclass(frozen=True)
class Plate:
    """A registered plate: its manifest, its platemap annotations (one row per well, Metadata_ columns)."""

    manifest: PlateManifest
    platemap: pd.DataFrame = field(compare=False)
    registered_at: str = ""
    landing: str = ""
    reclassifications: tuple[dict[str, Any], ...] = ()
    # Registered with fewer images than the manifest expects (`mdp register --allow-incomplete`): how many.
    accepted_image_count: int | None = None
    channels: tuple[str, ...] = ()  # the plate's channel names, as every level calls them
    # Each landing image's content as registered (plates/fingerprints.py); empty until it is taken.
    image_fingerprints: dict[str, ImageFingerprint] = field(default_factory=dict, compare=False)

    @property
    def barcode(self) -> str:
        return self.manifest.barcode

    @property
    def access(self) -> PlateAccess:
        return PlateAccess(self.barcode, self.manifest.origin, self.manifest.identifiable_patient_data,
                           self.manifest.released)

    @property
    def annotation_columns(self) -> list[str]:
        """Every per-well Metadata_ column the plate's rows carry, besides plate and well."""
        columns = [c for c in self.platemap.columns if c != "Metadata_Well"] + [*self.plate_annotations, ORIGIN]
        return columns + ([PERTURBATION] if self.manifest.treatment_column else [])

    @property
    def plate_annotations(self) -> dict[str, str]:
        """The manifest's plate-level annotations as Metadata_ columns (text, like the platemap's)."""
        return {metadata_name(k): str(v) for k, v in self.manifest.annotations.items()}

    @property
    def negative_control_query(self) -> str | None:
        control = self.manifest.negative_control
        if control is None:
            return None
        return f"`{metadata_name(control.column)}` == {control.value!r}"

    def control_wells(self) -> set[str]:
        """The platemap's negative-control wells (none when the manifest names no negative control)."""
        control = self.manifest.negative_control
        column = metadata_name(control.column) if control is not None else None
        if column is None or column not in self.platemap.columns:
            return set()
        return set(self.platemap.loc[self.platemap[column].astype(str) == str(control.value), "Metadata_Well"])

    def well_metadata(self, wells: list[str] | None = None) -> pd.DataFrame:
        """One row per well: Metadata_Plate, Metadata_Well, every platemap annotation, origin, perturbation.
        With `wells`, every one of them gets a row (annotations empty where the platemap has none)."""
        table = self.platemap.copy()
        if wells is not None:
            table = pd.DataFrame({"Metadata_Well": sorted(set(wells))}).merge(table, on="Metadata_Well", how="left")
        table.insert(0, "Metadata_Plate", self.barcode)
        for column, value in self.plate_annotations.items():
            table[column] = value
        table[ORIGIN] = self.manifest.origin
        if self.manifest.treatment_column:
            table[PERTURBATION] = table[metadata_name(self.manifest.treatment_column)]
        return table.reset_index(drop=True)

    def annotate(self, images: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
        """Join the plate's well metadata onto a per-image (or per-site) table with Metadata_Well.
        Returns the annotated table and the wells that have rows but no platemap entry."""
        wells = self.well_metadata(list(images["Metadata_Well"].unique()))
        wells = wells.drop(columns=[c for c in wells.columns if c in images.columns and c != "Metadata_Well"])
        annotated = images.merge(wells, on="Metadata_Well", how="left", validate="many_to_one")
        unannotated = sorted(set(images["Metadata_Well"]) - set(self.platemap["Metadata_Well"]))
        return annotated, unannotated

    def check_images_unchanged(self, level: str, raw_images: pd.DataFrame) -> None:
        """Stop `level` before it reads an image whose content is not what was registered (naming it). Images
        stored in the tiers were verified against their recorded sha256 as this read fetched them; the images
        still in the landing zone (reference mode) are checked here."""
        if STORED_FILE_COLUMN in raw_images.columns:
            raw_images = raw_images[~raw_images[STORED_FILE_COLUMN].astype(bool)]
            if raw_images.empty:
                return
        paths = {name: uri_to_path(uri) for name, uri in zip(raw_images["file_name"], raw_images["uri"])}
        registered = self.image_fingerprints or {
            # Registered before fingerprints were recorded: the inventory's sha256, every file hashed again.
            name: ImageFingerprint(digest, int(size), -1, -1, -1)
            for name, digest, size in zip(raw_images["file_name"], raw_images["sha256"], raw_images["bytes"])}
        check_unchanged(self.barcode, level, registered, paths)

    def check_inventory(self, inventory: pd.DataFrame, level: str) -> None:
        """The sha256 an inventory took of each image must be the registered one (it was read meanwhile)."""
        changed = sorted(name for name, digest in zip(inventory["file_name"], inventory["sha256"])
                         if name not in self.image_fingerprints or self.image_fingerprints[name].sha256 != digest)
        if changed:
            raise MdpError(f"plate {self.barcode}, level {level}: landing images differ from the content (sha256) "
                           f"recorded at registration: {changed[:20]}{' ...' if len(changed) > 20 else ''}")

    def platemap_coverage(self, imaged_wells: set[str]) -> PlatemapCoverage:
        """How the platemap covers the imaged wells: none may lack a row, or (with a treatment column) a
        treatment; platemap wells never imaged are listed (refused at intake with `imaged_wells: all`)."""
        mapped = set(self.platemap["Metadata_Well"])
        untreated: list[str] = []
        if self.manifest.treatment_column:
            column = metadata_name(self.manifest.treatment_column)
            values = dict(zip(self.platemap["Metadata_Well"], self.platemap[column]))
            untreated = sorted(w for w in imaged_wells & mapped
                               if pd.isna(values[w]) or not str(values[w]).strip())
        return PlatemapCoverage(sorted(imaged_wells - mapped), untreated, sorted(mapped - imaged_wells))

    # -- the record on disk -------------------------------------------------------------------------
    def to_record(self) -> dict[str, Any]:
        return {
            "record_version": RECORD_VERSION,
            "barcode": self.barcode,
            "registered_at": self.registered_at,
            "landing": self.landing,
            "manifest": self.manifest.model_dump(mode="json"),
            "platemap": {"columns": list(self.platemap.columns), "rows": self.platemap.to_numpy().tolist()},
            "reclassifications": list(self.reclassifications),
            "accepted_image_count": self.accepted_image_count,
            "channels": list(self.channels),
            "image_fingerprints": {name: f.to_record() for name, f in sorted(self.image_fingerprints.items())},
        }

    @classmethod
    def from_record(cls, record: dict[str, Any], where: Path | None = None) -> Plate:
        try:
            platemap = pd.DataFrame(record["platemap"]["rows"], columns=record["platemap"]["columns"], dtype=str)
            return cls(PlateManifest.model_validate(record["manifest"]), platemap, record.get("registered_at", ""),
                       record.get("landing", ""), tuple(record.get("reclassifications", ())),
                       record.get("accepted_image_count"), tuple(record.get("channels", ())),
                       {name: ImageFingerprint.from_record(v) for name, v in record.get("image_fingerprints", {}).items()})
        except (KeyError, TypeError, ValueError) as exc:
            raise MdpError(f"plate registration record is damaged: {exc}", path=where) from None


def plate_from_folder(folder: PlateFolder, landing: str, allow_incomplete: bool = False,
                      accepted_image_count: int | None = None, fingerprint: bool = True) -> Plate:
    """A Plate read and checked from its folder: the platemap must have every column the manifest names, and
    the images what the levels need (`check_contents`). `allow_incomplete` takes a plate with fewer images
    than expected, recording how many it had; `accepted_image_count` is that number from an earlier
    registration. With `fingerprint`, every image's content is hashed (the intake sensor leaves that to the
    plate's first raw_images step, to keep its ticks short)."""
    manifest = folder.manifest
    check_inside_plate_folder(folder)
    platemap = read_platemap(folder.platemap_path, manifest.platemap_well_column)
    for needed in (manifest.treatment_column, manifest.negative_control and manifest.negative_control.column):
        if needed and metadata_name(needed) not in platemap.columns:
            raise MdpError(
                f"manifest names platemap column {needed!r}, which the platemap lacks "
                f"(it has {[c.removeprefix('Metadata_') for c in platemap.columns]})",
                path=folder.platemap_path,
            )
    control = manifest.negative_control
    if control is not None and control.value not in set(platemap[metadata_name(control.column)]):
        # A typo here would silently normalize every plate to all its cells instead of its controls.
        values = sorted(set(platemap[metadata_name(control.column)]))
        raise MdpError(f"negative_control value {control.value!r} matches no well of platemap column "
                       f"{control.column!r} (its values: {values[:20]})", path=folder.root / "plate.yaml")
    clashing = sorted(set(metadata_name(k) for k in manifest.annotations) & set(platemap.columns))
    if clashing:
        raise MdpError(f"manifest annotations {[c.removeprefix('Metadata_') for c in clashing]} are also platemap "
                       "columns; name each value once", path=folder.root / "plate.yaml")
    contents = check_contents(folder, platemap, allow_incomplete=allow_incomplete or accepted_image_count is not None)
    check_pixels(manifest.barcode, {name: (contents.channels[parsed.channel_token], folder.images_dir / name)
                                    for name, parsed in contents.images.items()},
                 manifest.float_images, folder.images_dir)
    found = len(contents.images)
    if accepted_image_count is not None and found != accepted_image_count:
        raise MdpError(f"plate {manifest.barcode} was registered incomplete with {accepted_image_count} images and "
                       f"now has {found}; register it again (`mdp register`) to take the change",
                       path=folder.images_dir)
    accepted = found if found < manifest.expected_image_count else None
    channels = tuple(sorted(set(contents.channels.values())))
    fingerprints = fingerprint_images({name: folder.images_dir / name for name in contents.images}) \
        if fingerprint else {}
    return Plate(manifest, platemap, datetime.now(timezone.utc).isoformat(), landing, (), accepted, channels,
                 fingerprints)


class PlateRegistry:
    """The registered plates, one JSON record each under `root`."""

    def __init__(self, root: Path):
        self.root = root

    def _path(self, barcode: str) -> Path:
        return self.root / f"{barcode}.json"

    def get(self, barcode: str) -> Plate | None:
        path = self._path(barcode)
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise MdpError(f"plate registration record cannot be read: {exc}", path=path) from None
        return Plate.from_record(record, path)

    def load(self, barcode: str) -> Plate:
        plate = self.get(barcode)
        if plate is None:
            known = self.barcodes()
            raise MdpError(f"plate {barcode!r} is not registered (registered: {known[:20]}"
                           f"{' ...' if len(known) > 20 else ''}); `mdp register FOLDER` registers a plate")
        return plate

    def barcodes(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.json")) if self.root.is_dir() else []

    def register(self, plate: Plate) -> Plate:
        """Record a plate. A plate registered before keeps its origin (a different one is refused here:
        reclassify instead) and its images' content (an image that changed is refused, naming it; images not
        fingerprinted yet are added); the rest of its record is replaced by the new registration."""
        known = self.get(plate.barcode)
        if known is not None:
            check_same_access(known, plate.manifest, self._path(plate.barcode), plate.landing)
            changed = sorted(name for name, f in plate.image_fingerprints.items()
                             if name in known.image_fingerprints and known.image_fingerprints[name].sha256 != f.sha256)
            if changed:
                raise MdpError(f"plate {plate.barcode}: landing images differ from the content (sha256) recorded at "
                               f"registration: {changed[:20]}{' ...' if len(changed) > 20 else ''}; the landing zone "
                               "holds what the instrument wrote: restore those files, or register the new images "
                               "under a new barcode", path=self._path(plate.barcode))
            plate = Plate(plate.manifest, plate.platemap, plate.registered_at, plate.landing, known.reclassifications,
                          plate.accepted_image_count, plate.channels,
                          {**known.image_fingerprints, **plate.image_fingerprints})
        self.write(plate)
        return plate

    def fingerprinted(self, plate: Plate, images_dir: Path, names: list[str]) -> Plate:
        """The plate with every named image fingerprinted: those registered without (by the intake sensor) are
        hashed now and recorded."""
        missing = {name: images_dir / name for name in names if name not in plate.image_fingerprints}
        if not missing:
            return plate
        plate = replace(plate, image_fingerprints={**plate.image_fingerprints, **fingerprint_images(missing)})
        self.write(plate)
        return plate

    def write(self, plate: Plate) -> None:
        with atomic_path(self._path(plate.barcode)) as partial:
            partial.write_text(json.dumps(plate.to_record(), indent=1, default=str))

    def reclassify(self, barcode: str, origin: Origin, identifiable_patient_data: bool, released: bool,
                   reason: str, who: str) -> tuple[Plate, Plate]:
        """Change a registered plate's access class, recorded with when, who and why; returns (before, after)."""
        if not reason.strip():
            raise MdpError(f"reclassifying plate {barcode} needs a reason")
        before = self.load(barcode)
        values = {**before.manifest.model_dump(), "origin": origin,
                  "identifiable_patient_data": identifiable_patient_data, "released": released}
        try:
            manifest = PlateManifest.model_validate(values)
        except ValueError as exc:
            raise MdpError(f"plate {barcode} cannot be reclassified so: {exc}") from None
        change = {"when": datetime.now(timezone.utc).isoformat(), "who": who, "reason": reason,
                  "from": before.access.__dict__, "to": {**before.access.__dict__, "origin": origin,
                  "identifiable_patient_data": identifiable_patient_data, "released": released}}
        after = Plate(manifest, before.platemap, before.registered_at, before.landing,
                      (*before.reclassifications, change), before.accepted_image_count, before.channels,
                      before.image_fingerprints)
        self.write(after)
        return before, after


def check_same_access(registered: Plate, manifest: PlateManifest, where: Path | None = None, landing: str = "") -> None:
    """The landing manifest must still say what the plate was registered as (origin, patient data, release)."""
    changed = [f"{name}: registered {getattr(registered.manifest, name)!r}, now {getattr(manifest, name)!r}"
               for name in ("origin", "identifiable_patient_data", "released")
               if getattr(registered.manifest, name) != getattr(manifest, name)]
    if changed:
        manifest_at = f" in {landing.rstrip('/')}/plate.yaml" if landing else ""
        raise MdpError(f"plate {registered.barcode}: its access class changed since registration ({'; '.join(changed)}"
                       f"{manifest_at}); the plate stops here, nothing was read or written; "
                       "editing plate.yaml does not reclassify a plate: use `mdp reclassify PLATE --origin ... "
                       "--reason ...`", path=where)
