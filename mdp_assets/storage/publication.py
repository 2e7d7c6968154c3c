"""Deposits for publication: what Zenodo, Figshare and the Image Data Resource (IDR) take, built from stored levels.

A deposit is a folder in the policy's publication tier (`public-archive`): the chosen levels of the chosen
plates (well profiles, embeddings, the consensus; images where the target takes them), a README, the licence,
an RO-Crate (`ro-crate-metadata.json`, RO-Crate 1.1) whose CreateAction names every stored partition it came
from, a `SHA256SUMS` file, `deposit.json` (mdp's record), and the target's own metadata:

- zenodo: `zenodo-metadata.json`, the body of the REST API's `PUT /api/deposit/depositions/:id`;
- figshare: `figshare-article.json`, the body of `POST /v2/account/articles`;
- idr: the submission files of IDR's idr-metadata templates (`idr0000-study.txt`, and under `screenA/` the
  library file and one processed-data file per level), the images under `images/<plate>/`.

Nothing is published that the policy's origin rules forbid (`StoragePolicy.publication_problem`): every plate a
partition holds is judged, so a consensus pooling one collaborator plate is refused like the plate itself.
Each target's documented limits (files per record, bytes per file and per record) are checked before a byte is
copied; the error names the limit, where it is documented, and the file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from mdp_assets.checksums import FileRecord, atomic_path, sha256_file, tree_digest
from mdp_assets.errors import MdpError
from mdp_assets.plates.inventory import uri_to_path
from mdp_assets.plates.registry import PERTURBATION, Plate, PlateAccess, PlateRegistry
from mdp_assets.science.ome_zarr import PLATE_STORE
from mdp_assets.storage.partitions import TABLE_FILE, StoredPartition
from mdp_assets.storage.policy import StoragePolicy
from mdp_assets.storage.provenance import RO_CRATE_FILE, deposit_crate, provenance_record

DEPOSIT_RECORD = "deposit.json"
CHECKSUMS_FILE = "SHA256SUMS"
DEPOSITS_FOLDER = "deposits"  # under the publication tier's folder; no `_partition.json`, so no tier partition
DEFAULT_LEVELS = ("well_profiles", "well_embeddings", "consensus_profiles")
CONSENSUS = "consensus_profiles"
# The hook for OME-Zarr: when a plate has a stored partition of one of these levels, IDR bundles take it (the
# format IDR and the BioImage Archive prefer) instead of the plate's TIFFs.
# The levels holding a plate as OME-Zarr (defs/images): an image deposit takes the store in place of the TIFFs.
OME_ZARR_LEVELS = ("ome_zarr_plate",)
GB, TB = 1e9, 1e12


@dataclass(frozen=True)
class Target:
    """A publication service and its documented limits (None: none documented)."""

    name: str
    title: str
    per_file_bytes: float | None
    per_record_bytes: float | None
    max_files: int | None
    takes_images: bool  # images go in by default
    flat: bool  # the service shows one flat list of files (no folders)
    documented_at: str


TARGETS = {
    "zenodo": Target("zenodo", "Zenodo", 50 * GB, 50 * GB, 100, False, True,
                     "https://help.zenodo.org/docs/deposit/about-records (50 GB and 100 files per record); "
                     "https://developers.zenodo.org (REST API)"),
    "figshare": Target("figshare", "Figshare", 20 * GB, 20 * GB, None, False, True,
                       "https://info.figshare.com/user-guide/uploading-and-managing-files (figshare.com: files up to "
                       "20 GB, 20 GB of private storage an item is built in before it is published)"),
    "idr": Target("idr", "the Image Data Resource", None, 10 * TB, None, True, False,
                  "https://idr.openmicroscopy.org/about/faq/ (no size limit; depositions over 10 TB need "
                  "arrangements with the IDR team first; images readable by Bio-Formats, OME-TIFF preferred)"),
}
IDR_IMAGE_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff", ".zarr")


@dataclass(frozen=True)
class Licence:
    spdx: str
    name: str
    url: str
    zenodo_id: str
    figshare_id: int | None  # figshare.com's id (GET /v2/licenses lists a portal's own)
    idr_name: str


LICENCES = {
    "CC-BY-4.0": Licence("CC-BY-4.0", "Creative Commons Attribution 4.0 International",
                         "https://creativecommons.org/licenses/by/4.0/", "cc-by-4.0", 1, "CC BY 4.0"),
    "CC0-1.0": Licence("CC0-1.0", "Creative Commons Zero v1.0 Universal",
                       "https://creativecommons.org/publicdomain/zero/1.0/", "cc-zero", 2, "CC0 1.0"),
    "CC-BY-SA-4.0": Licence("CC-BY-SA-4.0", "Creative Commons Attribution-ShareAlike 4.0 International",
                            "https://creativecommons.org/licenses/by-sa/4.0/", "cc-by-sa-4.0", None, "CC BY-SA 4.0"),
}


def target(name: str) -> Target:
    if name not in TARGETS:
        raise MdpError(f"unknown publication target {name!r}; known: {sorted(TARGETS)}")
    return TARGETS[name]


def licence(spdx: str) -> Licence:
    if spdx not in LICENCES:
        raise MdpError(f"unknown licence {spdx!r}; mdp writes the metadata of {sorted(LICENCES)}")
    return LICENCES[spdx]


@dataclass(frozen=True)
class Source:
    """A stored partition going into a deposit, and every plate whose data it holds."""

    stored: StoredPartition
    tier: str
    plates: tuple[tuple[str, PlateAccess | None], ...]

    @property
    def partition(self) -> str | None:
        return None if self.stored.partition == "__all__" else self.stored.partition

    @property
    def what(self) -> str:
        return f"{self.stored.asset} of {self.partition or 'all plates'}"


@dataclass(frozen=True)
class DepositFile:
    """One file of a deposit: where it goes, where it comes from, its size and sha256, what it is."""

    relpath: str
    source: Path
    bytes: int
    sha256: str
    made_from: str
    kind: str = "data"  # data | image | table (converted to the target's text format when written)


@dataclass
class DepositRequest:
    target: Target
    plates: list[str]
    levels: list[str]
    include_images: bool
    licence: Licence
    title: str
    creators: list[str]
    description: str
    who: str
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))


# -- origin -----------------------------------------------------------------------------------------------
def plates_of(stored: StoredPartition, registry: PlateRegistry) -> tuple[tuple[str, PlateAccess | None], ...]:
    """Every plate a stored partition holds data of, as registered now: its own plate, or for a partition pooling
    plates (the consensus) each plate its record's access list and its provenance's inputs name."""
    if stored.partition != "__all__":
        names = [stored.partition]
    else:
        names = [a["plate"] for a in stored.record.get("access") or []]
        names += [i["partition"] for i in (stored.record.get("provenance") or {}).get("inputs") or []
                  if i.get("partition")]
    plates = []
    for name in sorted(set(names)):
        registered = registry.get(name)
        plates.append((name, registered.access if registered is not None else None))
    return tuple(plates)


def check_publishable(policy: StoragePolicy, sources: Iterable[Source]) -> None:
    """Refuse, naming each plate and the rule, when any source holds data of a plate that may not be published."""
    problems = []
    for source in sources:
        for plate, access in source.plates:
            if access is None:
                problems.append(f"{source.what} holds plate {plate}, which is not registered (origin unknown)")
                continue
            rule = policy.publication_problem(access.origin, access.identifiable_patient_data, access.released)
            if rule:
                held = f"plate {plate}" if source.partition == plate else f"{source.what}, which pools plate {plate},"
                problems.append(f"{held} may not be published: {rule}")
    if problems:
        raise MdpError("publication refused: " + "; ".join(dict.fromkeys(problems)))


# -- what goes in -----------------------------------------------------------------------------------------
def image_files(raw_images: pd.DataFrame) -> list[tuple[str, Path, int, str]]:
    """(file name, where it is now, bytes, sha256) of a plate's images, from its raw_images inventory."""
    return [(name, uri_to_path(uri), int(size), digest) for name, uri, size, digest
            in zip(raw_images["file_name"], raw_images["uri"], raw_images["bytes"], raw_images["sha256"])]


def ome_zarr_source(sources: list[Source], plate: str) -> Source | None:
    """The plate's stored OME-Zarr partition among the sources, when one was gathered (see OME_ZARR_LEVELS)."""
    return next((s for s in sources if s.stored.asset in OME_ZARR_LEVELS and s.partition == plate), None)


def plan_files(request: DepositRequest, sources: list[Source],
               images: dict[str, list[tuple[str, Path, int, str]]]) -> list[DepositFile]:
    """Where each stored file goes in the target's layout: one flat list for Zenodo and Figshare
    (`well_profiles__PLATE.parquet`), IDR's processed-data text files and `images/<plate>/` for IDR."""
    planned: list[DepositFile] = []
    idr = request.target.name == "idr"
    for source in sources:
        if source.stored.asset in OME_ZARR_LEVELS:
            for record in source.stored.files:
                inside = record.relpath.removeprefix(PLATE_STORE + "/")  # the store's own files, under the plate's name
                planned.append(DepositFile(f"images/{source.partition}.ome.zarr/{inside}",
                                           source.stored.root / record.relpath, record.bytes, record.sha256,
                                           source.what, "image"))
            continue
        for record in source.stored.files:
            if idr and record.relpath == TABLE_FILE:
                name = f"screenA/idr0000-screenA-processed-{source.stored.asset}.txt"
                # One processed-data file per level across plates: its rows are written when the deposit is built.
                planned.append(DepositFile(name, source.stored.root / record.relpath, record.bytes, record.sha256,
                                           source.what, "table"))
                continue
            stem = source.stored.asset + (f"__{source.partition}" if source.partition else "")
            name = f"{stem}.parquet" if record.relpath == TABLE_FILE else f"{stem}__{record.relpath.replace('/', '__')}"
            planned.append(DepositFile(name if request.target.flat else f"{source.stored.asset}/{name}",
                                       source.stored.root / record.relpath, record.bytes, record.sha256, source.what))
    for plate, files in images.items():
        if any(s.stored.asset in OME_ZARR_LEVELS and s.partition == plate for s in sources):
            continue  # the OME-Zarr plate stands for the TIFFs
        for name, path, size, digest in files:
            relpath = f"images__{plate}__{name}" if request.target.flat else f"images/{plate}/{name}"
            planned.append(DepositFile(relpath, path, size, digest, f"raw_images of {plate}", "image"))
    return planned


def deposit_item(relpath: str) -> str:
    """What a target counts as one file: an OME-Zarr store (`images/P.ome.zarr`) is one image, whatever it holds."""
    store, separator, _ = relpath.partition(".ome.zarr/")
    return f"{store}.ome.zarr" if separator else relpath


def check_limits(target_: Target, files: list[DepositFile], extra_files: int = 0, extra_bytes: int = 0) -> None:
    """The target's documented limits: files per record, bytes per file and per record. `extra_*` count what the
    deposit adds (README, licence, metadata). Refused naming the limit, where it is documented, and the file."""
    where = f"(documented at {target_.documented_at})"
    count = len({deposit_item(f.relpath) for f in files}) + extra_files
    if target_.max_files is not None and count > target_.max_files:
        largest = sorted(files, key=lambda f: -f.bytes)[:3]
        raise MdpError(f"{target_.title} takes at most {target_.max_files} files per record {where}; this deposit "
                       f"has {count} (e.g. {[f.relpath for f in largest]}); publish fewer levels or plates per "
                       "deposit, or leave the images out")
    if target_.name == "idr":
        for item in files:
            if item.kind == "image" and not deposit_item(item.relpath).lower().endswith(IDR_IMAGE_SUFFIXES):
                raise MdpError(f"the Image Data Resource takes images Bio-Formats reads {where}; {item.relpath} "
                               f"(from {item.made_from}) is not one of {list(IDR_IMAGE_SUFFIXES)}")
    if target_.per_file_bytes is not None:
        for item in files:
            if item.bytes > target_.per_file_bytes:
                raise MdpError(f"{target_.title} takes files of at most {target_.per_file_bytes:.0f} bytes {where}; "
                               f"{item.relpath} (from {item.made_from}) has {item.bytes}")
    total = sum(f.bytes for f in files) + extra_bytes
    if target_.per_record_bytes is not None and total > target_.per_record_bytes:
        largest = max(files, key=lambda f: f.bytes)
        raise MdpError(f"{target_.title} takes at most {target_.per_record_bytes:.0f} bytes per record {where}; this "
                       f"deposit has {total} (largest file {largest.relpath}, {largest.bytes} bytes)")


# -- writing the deposit ----------------------------------------------------------------------------------
def _copy_verified(item: DepositFile, destination: Path) -> None:
    """Copy one file, hashing as it streams; a copy whose sha256 is not the stored one is refused."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(item.source, "rb") as source, open(destination, "wb") as target_file:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
            target_file.write(chunk)
    if digest.hexdigest() != item.sha256:
        raise MdpError(f"{item.source} (from {item.made_from}) no longer matches the sha256 recorded when it was "
                       f"stored ({item.sha256}); nothing was published. `mdp verify` and `mdp repair` restore it")


def _tables_to_text(folder: Path, tables: list[DepositFile]) -> None:
    """IDR's processed-data files: tab-delimited text, one per level, the plates' rows one after another."""
    by_file: dict[str, list[DepositFile]] = {}
    for item in tables:
        by_file.setdefault(item.relpath, []).append(item)
    for relpath, items in by_file.items():
        frames = []
        for item in items:
            if sha256_file(item.source) != item.sha256:
                raise MdpError(f"{item.source} (from {item.made_from}) no longer matches its stored sha256; "
                               "nothing was published")
            frames.append(pd.read_parquet(item.source))
        table = pd.concat(frames, ignore_index=True)
        (folder / relpath).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(folder / relpath, sep="\t", index=False, lineterminator="\n")


def _field_count(plate: Plate) -> int:
    """A registered plate's fields: its single-plane images over its channels."""
    return len(plate.image_fingerprints) // max(len(plate.channels), 1)


def build_deposit(folder: Path, request: DepositRequest, sources: list[Source], files: list[DepositFile],
                  registry: PlateRegistry, deposit_id: str, uri: str) -> dict[str, Any]:
    """Fill `folder` (a fresh staging folder) with the deposit; returns its record (`deposit.json`)."""
    for item in files:
        if item.kind != "table":
            _copy_verified(item, folder / item.relpath)
    _tables_to_text(folder, [f for f in files if f.kind == "table"])
    plates = sorted({plate for s in sources for plate, _ in s.plates} | set(request.plates))
    (folder / "LICENSE.txt").write_text(licence_text(request))
    if request.target.name == "zenodo":
        (folder / "zenodo-metadata.json").write_text(json.dumps({"metadata": zenodo_metadata(request, plates)}, indent=1))
    elif request.target.name == "figshare":
        (folder / "figshare-article.json").write_text(json.dumps(figshare_article(request, plates), indent=1))
    else:
        write_idr_files(folder, request, sources, files, registry)
    (folder / "README.md").write_text(readme(request, sources, plates, files))
    written = _records(folder)
    (folder / CHECKSUMS_FILE).write_text("".join(f"{r.sha256}  {r.relpath}\n" for r in written))
    written = _records(folder)
    origins = sorted({a.origin for s in sources for _, a in s.plates if a is not None})
    provenance = provenance_record(
        asset=f"deposit:{request.target.name}", partition=deposit_id, code_version=None,
        parameters={"target": request.target.name, "plates": request.plates, "levels": request.levels,
                    "include_images": request.include_images, "license": request.licence.spdx},
        run_id=f"mdp publish by {request.who}",
        # A public record: the sources are named by level, plate, tier and data version, not by the lab's paths.
        inputs=[{"asset": s.stored.asset, "partition": s.partition, "tier": s.tier, "run_id": s.stored.record.get("run_id"),
                 "data_version": s.stored.record.get("data_version"), "sha256": s.stored.record.get("data_version")}
                for s in sources],
        outputs={"uri": "./", "sha256": tree_digest(written), "bytes": sum(r.bytes for r in written),
                 "files": len(written)},
        origin=", ".join(origins) or None)
    record = {
        "deposit_id": deposit_id, "target": request.target.name, "created": request.created, "who": request.who,
        "title": request.title, "creators": request.creators, "license": request.licence.spdx, "plates": plates,
        "levels": sorted({s.stored.asset for s in sources} | ({"raw_images"} if any(
            f.kind == "image" and f.made_from.startswith("raw_images") for f in files) else set())),
        "files": [r.__dict__ for r in written],
        "sources": [{"relpath": f.relpath, "made_from": f.made_from, "sha256": f.sha256} for f in files],
        "provenance": provenance,
    }
    (folder / DEPOSIT_RECORD).write_text(json.dumps(record, indent=1, default=str))
    record["uri"] = uri  # where it is kept here: the catalog's, not the published record's
    crate_files = _records(folder, keep_record=True)
    (folder / RO_CRATE_FILE).write_text(json.dumps(deposit_crate(
        provenance, [r.__dict__ for r in crate_files], title=request.title, description=request.description,
        creators=request.creators, licence_url=request.licence.url, licence_name=request.licence.name,
        date_published=request.created), indent=1))
    return record


def _records(folder: Path, keep_record: bool = False) -> list[FileRecord]:
    """Every file of the deposit but the RO-Crate (and, unless `keep_record`, deposit.json), with its sha256."""
    left_out = {RO_CRATE_FILE} | (set() if keep_record else {DEPOSIT_RECORD})
    return [FileRecord(p.relative_to(folder).as_posix(), p.stat().st_size, sha256_file(p))
            for p in sorted(folder.rglob("*")) if p.is_file() and p.relative_to(folder).as_posix() not in left_out]


# -- the targets' metadata ----------------------------------------------------------------------------------
def _description_text(request: DepositRequest, plates: list[str]) -> str:
    return (f"{request.description.strip()} Plates: {', '.join(plates)}. Levels: {', '.join(request.levels)}. Made "
            "with mdp (image-based profiling of Cell Painting plates); every file's sha256 is in SHA256SUMS and the "
            "RO-Crate (ro-crate-metadata.json) records the stored partitions it came from.").strip()


def zenodo_metadata(request: DepositRequest, plates: list[str]) -> dict[str, Any]:
    """Zenodo's deposition metadata (REST API, `PUT /api/deposit/depositions/:id` body's `metadata`)."""
    return {
        "upload_type": "dataset",
        "publication_date": request.created[:10],
        "title": request.title,
        "creators": [{"name": name} for name in request.creators],
        "description": f"<p>{_html(_description_text(request, plates))}</p>",
        "access_right": "open",
        "license": request.licence.zenodo_id,
        "keywords": ["Cell Painting", "image-based profiling", "morphological profiling", *plates],
        "notes": "Built by mdp publish; files checksummed in SHA256SUMS.",
    }


def figshare_article(request: DepositRequest, plates: list[str]) -> dict[str, Any]:
    """Figshare's article metadata (`POST /v2/account/articles` body). Figshare needs categories before an item
    is published: the README names that step."""
    article: dict[str, Any] = {
        "title": request.title,
        "description": _description_text(request, plates),
        "authors": [{"name": name} for name in request.creators],
        "defined_type": "dataset",
        "keywords": ["Cell Painting", "image-based profiling", *plates],
        "categories": [],
    }
    if request.licence.figshare_id is not None:
        article["license"] = request.licence.figshare_id
    return article


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _tsv(rows: list[list[str]]) -> str:
    return "".join("\t".join(str(v).replace("\t", " ").replace("\n", " ") for v in row) + "\n" for row in rows)


def write_idr_files(folder: Path, request: DepositRequest, sources: list[Source], files: list[DepositFile],
                    registry: PlateRegistry) -> None:
    """IDR's submission files, after its idr-metadata templates (github.com/IDR/idr0000-lastname-example): the
    study file, the screen's library file (one row per well) and its processed-data files."""
    plates = [registry.load(p) for p in request.plates]
    library_rows = [["Plate", "Well", "Characteristics [Organism]", "Characteristics [Cell Line or Strain]",
                     "Reagent Identifier", "Control Type", "Quality Control", "Channels", "Comments"]]
    for plate in plates:
        controls = plate.control_wells()
        wells = plate.well_metadata()
        for row in wells.itertuples(index=False):
            well = getattr(row, "Metadata_Well")
            reagent = getattr(row, PERTURBATION, "") if PERTURBATION in wells.columns else ""
            library_rows.append([plate.barcode, well, "", "", reagent,
                                 "negative control" if well in controls else "", "", ";".join(plate.channels),
                                 f"origin {plate.manifest.origin}"])
    (folder / "screenA").mkdir(parents=True, exist_ok=True)
    (folder / "screenA" / "idr0000-screenA-library.txt").write_text(_tsv(library_rows))
    processed = sorted({f.relpath for f in files if f.kind == "table"})
    images = [f for f in files if f.kind == "image"]
    last, _, first = (request.creators[0] if request.creators else "").partition(",")
    study = [
        ["# Written by mdp publish after IDR's idr0000-study_HCS.txt template; fields marked 'fill in' need a person"],
        ["Comment[IDR Study Accession]", ""],
        ["Study Title", request.title],
        ["Study Type", "high content screen"], ["Study Type Term Source REF", "EFO"],
        ["Study Type Term Accession", "EFO_0007550"],
        ["Study Description", _description_text(request, [p.barcode for p in plates])],
        ["Study Key Words", "Cell Painting", "image-based profiling"],
        ["Study Organism", "fill in"], ["Study Organism Term Source REF", "NCBITaxon"],
        ["Study Screens Number", "1"],
        ["Study Public Release Date", request.created[:10]],
        ["Study Person Last Name", last.strip()], ["Study Person First Name", first.strip()],
        ["Study Person Roles", "submitter"],
        ["Study License", request.licence.idr_name], ["Study License URL", request.licence.url],
        ["Term Source Name", "NCBITaxon", "EFO", "CMPO", "Fbbi"],
        ["Term Source File", "http://purl.obolibrary.org/obo/", "http://www.ebi.ac.uk/efo/",
         "http://www.ebi.ac.uk/cmpo/", "http://purl.obolibrary.org/obo/"],
        ["Screen Number", "1"],
        ["Screen Description", f"Cell Painting plates {', '.join(p.barcode for p in plates)}"],
        # IDR counts fields (one 5D image: every channel of a site) and planes (one single-plane TIFF each).
        ["Screen Size", f"Plates: {len(plates)}", f"5D Images: {sum(_field_count(p) for p in plates)}",
         f"Planes: {sum(len(p.image_fingerprints) for p in plates)}", "",
         f"Total Tb: {sum(f.bytes for f in images) / TB:.6f}"],
        ["Screen Imaging Method", "fluorescence microscopy"], ["Screen Imaging Method Term Source REF", "Fbbi"],
        ["Screen Technology Type", "compound screen"], ["Screen Type", "primary screen"],
        ["Library File Name", "idr0000-screenA-library.txt"], ["Library File Format", "tab-delimited text"],
        ["Library Type", "compound library"],
        ["Raw Image Data Format", "OME-Zarr" if any(".ome.zarr/" in f.relpath for f in images) else "TIFF"],
        ["Raw Image Organization", "images/<plate>/: one file per well, site and channel, named as the instrument "
                                   "wrote them"],
        ["Processed Data File Name", *[Path(p).name for p in processed]],
        ["Processed Data File Format", *["tab-delimited text" for _ in processed]],
        ["Processed Data File Description", *[_processed_description(p) for p in processed]],
        ["Processed Data Column Link To Library File",
         *["Reagent Identifier" if CONSENSUS in p else "Plate_Well" for p in processed]],
    ]
    (folder / "idr0000-study.txt").write_text(_tsv(study))


def _processed_description(relpath: str) -> str:
    level = relpath.rsplit("-processed-", 1)[-1].removesuffix(".txt")
    return {"well_profiles": "per-well median profiles, normalized to negative controls and feature-selected",
            "well_embeddings": "per-well embeddings (principal components of the well profiles)",
            CONSENSUS: "one consensus profile per perturbation across plates"}.get(level, f"mdp level {level}")


def licence_text(request: DepositRequest) -> str:
    copyright_holders = "; ".join(request.creators) or "the authors"
    return (f"{request.licence.name} ({request.licence.spdx})\n\nCopyright {request.created[:4]} {copyright_holders}."
            f"\n\nThe files of this deposit are licensed under the {request.licence.name} licence. Its legal code is at"
            f"\n{request.licence.url}legalcode\nand a summary at {request.licence.url}\n")


def readme(request: DepositRequest, sources: list[Source], plates: list[str], files: list[DepositFile]) -> str:
    lines = [f"# {request.title}", "", request.description.strip() or "Cell Painting profiles made with mdp.", "",
             f"Deposit for {request.target.title}, built {request.created} by {request.who} with `mdp publish`.",
             f"Licence: {request.licence.name} ({request.licence.spdx}), see LICENSE.txt.", "",
             "## Contents", ""]
    for source in sources:
        lines.append(f"- {source.what}: data version {str(source.stored.record.get('data_version'))[:16]}, "
                     f"stored in tier {source.tier!r}")
    image_count = sum(1 for f in files if f.kind == "image")
    lines += [f"- images: {image_count} file(s)" if image_count else "- images: not included", "",
              f"Plates: {', '.join(plates)}.",
              "", "## Checking the files", "",
              f"`sha256sum -c {CHECKSUMS_FILE}` checks every file. `ro-crate-metadata.json` (RO-Crate 1.1) lists each "
              f"file with its sha256 and the stored partitions it was made from; `{DEPOSIT_RECORD}` is mdp's record.",
              "", "## Before submitting", ""]
    lines += {
        "zenodo": ["`zenodo-metadata.json` is the deposition metadata for Zenodo's REST API. `mdp publish --upload` "
                   "creates the deposition, uploads every file to its bucket and sets this metadata (publishing "
                   "only with `--publish-record`)."],
        "figshare": ["`figshare-article.json` is the article metadata for Figshare's API (`POST /v2/account/articles`). "
                     "Add the item's categories (ids from `GET /v2/categories`) before publishing; the licence id is "
                     "figshare.com's (a Figshare for Institutions portal lists its own with `GET /v2/licenses`)."],
        "idr": ["`idr0000-study.txt` and `screenA/idr0000-screenA-library.txt` follow IDR's idr-metadata templates; "
                "fill in the organism, cell line and protocols (marked 'fill in' or left blank), then contact the "
                "IDR team, who assign the accession and take the images by their own transfer (Aspera or FTP)."],
    }[request.target.name]
    return "\n".join(lines) + "\n"


def move_into(staged: Path, final: Path, record: dict[str, Any]) -> None:
    """The built deposit into the publication tier, whole or not at all: renamed when on the same filesystem,
    else copied and every file verified against the record before the one rename that makes it appear."""
    if final.exists():
        raise MdpError(f"a deposit is already at {final}", path=final)
    with atomic_path(final) as partial:
        try:
            staged.rename(partial)
        except OSError:
            shutil.copytree(staged, partial)
            damaged = [f["relpath"] for f in record["files"] if sha256_file(partial / f["relpath"]) != f["sha256"]]
            if damaged:
                raise MdpError(f"copying the deposit into {final.parent} damaged {damaged[:10]}; nothing was published")
            shutil.rmtree(staged)
