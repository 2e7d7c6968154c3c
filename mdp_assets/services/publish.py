"""Publication: `mdp publish PLATES... --to zenodo|figshare|idr` builds a deposit that obeys the plates' origin.

The levels are read from wherever they are stored, every file checked against its sha256; every plate they
hold (a consensus pools several) is judged by the policy's publication rules before anything is written; the
target's documented limits are checked; the deposit (`storage/publication.py`) is built in staging and appears
whole in the publication tier (`<tier>/deposits/<id>/`), is recorded in the catalog (`deposits`,
`deposit_files`) and, given a Dagster instance, as an observation on each published level's page.
`upload_deposit` sends a Zenodo deposit through Zenodo's REST API (storage/zenodo.py).
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from mdp_assets.checksums import sha256_file
from mdp_assets.errors import MdpError
from mdp_assets.plates.inventory import uri_to_path
from mdp_assets.storage import catalog
from mdp_assets.storage.publication import (CONSENSUS, DEFAULT_LEVELS, DEPOSIT_RECORD, DEPOSITS_FOLDER,
                                            OME_ZARR_LEVELS, DepositFile, DepositRequest, Source, build_deposit,
                                            check_limits, check_publishable, image_files, licence, move_into,
                                            plan_files, plates_of, target)
from mdp_assets.storage.resource import MdpStorage
from mdp_assets.storage.tiers import FilesystemTier
from mdp_assets.storage.zenodo import ZENODO, ZenodoUploader

RAW_IMAGES = "raw_images"
ZENODO_TOKEN_ENV = "ZENODO_ACCESS_TOKEN"


@dataclass(frozen=True)
class Published:
    deposit_id: str
    folder: Path
    record: dict[str, Any]
    files: list[tuple[str, int, str]]  # every file of the deposit: relpath, bytes, sha256

    def lines(self) -> list[str]:
        return [f"deposit {self.deposit_id} for {self.record['target']}: {self.folder}",
                f"  plates {', '.join(self.record['plates'])}; levels {', '.join(self.record['levels'])}",
                f"  {len(self.files)} files, {sum(size for _, size, _ in self.files)} bytes; sha256 "
                f"{self.record['provenance']['outputs']['sha256']} (every file's in SHA256SUMS and the catalog)"]


def publish(storage: MdpStorage, plates: list[str], to: str, levels: list[str] | None = None,
            include_images: bool | None = None, license_id: str | None = None, title: str | None = None,
            creators: list[str] | None = None, description: str = "", who: str = "",
            instance: dg.DagsterInstance | None = None) -> Published:
    """Build (never upload) the deposit of `plates` for the target `to`; refused naming the plate and the rule
    when any plate, or any plate a chosen level pools, may not be published."""
    if not plates:
        raise MdpError("mdp publish needs at least one plate")
    policy = storage.policy()
    service = target(to)
    registry = storage.registry()
    for plate in plates:
        registry.load(plate)  # unknown plates are named before anything is read
    tier_name = policy.publication.tier
    tier = storage.tier(tier_name, policy) if tier_name in policy.tiers else None
    if not isinstance(tier, FilesystemTier) or policy.tiers[tier_name].access != "public":
        raise MdpError(f"storage policy {policy.name!r}: publication.tier {tier_name!r} must be a public filesystem "
                       "tier (the folder deposits are built in)")
    chosen = list(dict.fromkeys(levels or DEFAULT_LEVELS))
    store = storage.store()
    sources: list[Source] = []
    for level in chosen:
        if level not in policy.levels:
            raise MdpError(f"unknown level {level!r}; the policy's levels: {sorted(policy.levels)}")
        if level == CONSENSUS:
            if store.locate(CONSENSUS, None) is None:
                if levels:
                    raise MdpError("consensus_profiles is not materialized; `mdp reprocess` makes it")
                continue
            stored = store.read(CONSENSUS, None)
            sources.append(Source(stored, store.locate(CONSENSUS, None).tier, plates_of(stored, registry)))
            continue
        for plate in plates:
            stored = store.read(level, plate)
            sources.append(Source(stored, store.locate(level, plate).tier, plates_of(stored, registry)))
    images: dict[str, list] = {}
    image_sources: list[Source] = []  # what the images come from: the plate's OME-Zarr level, or its inventory
    if service.takes_images if include_images is None else include_images:
        for plate in plates:
            # An OME-Zarr plate, when one is stored, stands for the TIFFs where the target takes folders (IDR);
            # Zenodo and Figshare list files flat and count each, and a store is hundreds of chunk files.
            ome_zarr = None if service.flat else next(
                (lvl for lvl in OME_ZARR_LEVELS if lvl in policy.levels and store.locate(lvl, plate)), None)
            level = ome_zarr or RAW_IMAGES
            stored = store.read(level, plate)
            image_sources.append(Source(stored, store.locate(level, plate).tier, plates_of(stored, registry)))
            if ome_zarr is None:
                images[plate] = image_files(stored.read_table())
    check_publishable(policy, sources + image_sources)
    request = DepositRequest(service, plates, chosen, bool(image_sources),
                             licence(license_id or policy.publication.license),
                             title or f"Cell Painting profiles of plates {', '.join(plates)}",
                             creators or [who or "mdp"], description, who or "unknown")
    planned = plan_files(request, sources + [s for s in image_sources if s.stored.asset in OME_ZARR_LEVELS], images)
    sources += image_sources
    check_limits(service, planned, extra_files=6)
    deposit_id = f"{to}-{request.created.replace(':', '').replace('-', '').replace('+0000', 'Z')}-{uuid.uuid4().hex[:8]}"
    final = tier.folder(f"{DEPOSITS_FOLDER}/{deposit_id}")
    with storage.staging_dir(f"deposit-{to}") as staged:
        record = build_deposit(staged, request, sources, planned, registry, deposit_id, final.as_uri())
        everything = [DepositFile(p.relative_to(staged).as_posix(), p, p.stat().st_size, "", "written")
                      for p in sorted(staged.rglob("*")) if p.is_file()]
        check_limits(service, everything)  # the deposit as built, metadata included
        move_into(staged, final, record)
    files = [(f["relpath"], f["bytes"], f["sha256"]) for f in record["files"]]
    files += [(name, *_size_and_sha256(final / name)) for name in (DEPOSIT_RECORD, "ro-crate-metadata.json")]
    catalog.record_deposit(storage.catalog_path, tier_name, record, files)
    if instance is not None:
        for source in sources:
            instance.report_runless_asset_event(dg.AssetObservation(
                dg.AssetKey(source.stored.asset), partition=source.partition,
                metadata={"published_to": to, "deposit": deposit_id, "deposit_uri": dg.MetadataValue.url(final.as_uri()),
                          "data_version": str(source.stored.record.get("data_version")), "by": request.who}))
    return Published(deposit_id, final, record, files)


def _size_and_sha256(path: Path) -> tuple[int, str]:
    return path.stat().st_size, sha256_file(path)


def upload_deposit(storage: MdpStorage, deposit_id: str, base_url: str = ZENODO, publish_record: bool = False,
                   token_env: str = ZENODO_TOKEN_ENV) -> dict[str, Any]:
    """Upload a built Zenodo deposit (every file, then its metadata; published only with `publish_record`) and
    record where it went in the catalog. The token is read from the environment variable `token_env` now."""
    folder = _deposit_folder(storage, deposit_id)
    record = json.loads((folder / DEPOSIT_RECORD).read_text())
    if record["target"] != "zenodo":
        raise MdpError(f"deposit {deposit_id} was built for {record['target']}; mdp uploads Zenodo deposits only "
                       "(submit Figshare and IDR deposits as their READMEs say)")
    damaged = [f["relpath"] for f in record["files"] if _size_and_sha256(folder / f["relpath"])[1] != f["sha256"]]
    if damaged:
        raise MdpError(f"deposit {deposit_id}: {damaged[:10]} no longer match their sha256; nothing was uploaded",
                       path=folder)
    metadata = json.loads((folder / "zenodo-metadata.json").read_text())["metadata"]
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    uploaded = ZenodoUploader(base_url, os.environ.get(token_env, "")).upload(folder, names, metadata, publish_record)
    catalog.record_upload(storage.catalog_path, deposit_id, uploaded)
    return uploaded


def verify_deposits(storage: MdpStorage) -> tuple[int, list[str]]:
    """Re-read every file of every recorded deposit and compare its sha256 with the catalog's (`mdp verify`)."""
    if not catalog.has_deposits(storage.catalog_path):
        return 0, []
    _, rows = catalog.query(storage.catalog_path, "SELECT d.uri, f.deposit_id, f.relpath, f.sha256 FROM deposit_files f "
                                                  "JOIN deposits d USING (deposit_id) ORDER BY 2, 3")
    problems = []
    for uri, deposit_id, relpath, expected in rows:
        path = uri_to_path(uri) / relpath
        status = "missing" if not path.is_file() else "ok" if sha256_file(path) == expected else "corrupt"
        if status != "ok":
            problems.append(f"{status}: {path} (deposit {deposit_id})")
    return len(rows), problems


def _deposit_folder(storage: MdpStorage, deposit_id: str) -> Path:
    policy = storage.policy()
    tier = storage.tier(policy.publication.tier, policy)
    folder = tier.folder(f"{DEPOSITS_FOLDER}/{deposit_id}") if isinstance(tier, FilesystemTier) else None
    if folder is None or "/" in deposit_id or not (folder / DEPOSIT_RECORD).is_file():
        raise MdpError(f"no deposit {deposit_id!r} in tier {policy.publication.tier!r} (`mdp catalog --query "
                       "deposits` lists them)")
    return folder


__all__ = ["publish", "upload_deposit", "verify_deposits", "Published"]
