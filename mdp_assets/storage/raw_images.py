"""The raw image bytes in the tiers: copied from the landing zone into the `raw_images` partition, and the
landing zone released only when the policy says so.

In `copy` mode (the policy's `raw_images.mode`) the partition holds the inventory (`table.parquet`) and every
image under `images/<file name>`: each file is streamed from the landing zone (never whole in memory), hashed
as it is copied, compared with the content registered for it, and hashed again where it was written (the
verification read). The partition then enters its tier whole or not at all like any other (staging + rename),
its record lists every image's sha256, and the lifecycle moves, verifies and repairs the images as it does any
level. In `reference` mode only the inventory is stored and levels read the landing zone.

The landing zone is released (its image files deleted) only under `raw_images.landing.release:
after_verified_copy`, once the stored copy is verified and `after_days` have passed; a landing file whose
content is not the stored one is never deleted. Each release is recorded in the partition record (and its
provenance) and in the catalog's `landing_releases` table.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from mdp_assets.checksums import FileRecord, copy_hashed, sha256_file
from mdp_assets.errors import MdpError
from mdp_assets.storage.partitions import STORED_FILE_COLUMN
from mdp_assets.storage.policy import StoragePolicy
from mdp_assets.storage.tiers import DamagedPartition, fetch_verified

IMAGES_DIR = "images"
LEVEL = "raw_images"

__all__ = ["IMAGES_DIR", "STORED_FILE_COLUMN", "copy_images", "stored_relpath", "due_landing_releases",
           "landing_release_problems", "LandingRelease"]


def stored_relpath(file_name: str) -> str:
    return f"{IMAGES_DIR}/{file_name}"


def _copy_one(source: Path, target: Path, expected_sha256: str) -> FileRecord:
    size, digest = copy_hashed(source, target)
    if digest != expected_sha256:
        raise MdpError(f"{source.name}: the landing image read while copying (sha256 {digest[:12]}) is not the "
                       f"content registered for it ({expected_sha256[:12]}); nothing was stored", path=source)
    if target.stat().st_size != size or sha256_file(target) != digest:  # the verification read of the copy
        raise MdpError(f"{target.name}: the copy does not read back as written; nothing was stored", path=target)
    return FileRecord(target.relative_to(target.parent.parent).as_posix(), size, digest)


def copy_images(images_dir: Path, expected: Mapping[str, str], staged: Path, max_workers: int = 2) -> tuple[FileRecord, ...]:
    """Copy the named landing images (file name -> registered sha256) into `staged/images/`, each streamed,
    hashed while copied, compared with its registered content and verified where it was written. Returns the
    files' records (relative to `staged`). Any difference is an MdpError naming the file."""
    target_dir = staged / IMAGES_DIR
    target_dir.mkdir(parents=True, exist_ok=True)
    names = sorted(expected)
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, os.cpu_count() or 1))) as pool:
        return tuple(pool.map(lambda n: _copy_one(images_dir / n, target_dir / n, expected[n]), names))


@dataclass(frozen=True)
class LandingRelease:
    """A plate whose landing images may be released now: its raw_images partition and where it is stored."""

    plate: str
    key: str
    tier: str
    record: dict[str, Any]


def due_landing_releases(policy: StoragePolicy, located: list[Any], now: datetime) -> list[LandingRelease]:
    """The raw_images partitions (of `located`: lifecycle.Located) whose landing images the policy releases
    now: copy mode, `after_verified_copy`, stored at least `after_days` ago, not released yet."""
    rule = policy.raw_images.landing
    if policy.raw_images.mode != "copy" or rule.release != "after_verified_copy":
        return []
    due = []
    for item in located:
        record = item.record
        if item.asset != LEVEL or record.get("landing_release") or record.get("released_at") or \
                not any(f["relpath"].startswith(f"{IMAGES_DIR}/") for f in record["files"]):
            continue  # released already, or a partition of reference mode (no images stored)
        if now - datetime.fromisoformat(record["written_at"]) >= timedelta(days=rule.after_days):
            due.append(LandingRelease(item.partition, item.key, item.tier, record))
    return due


def landing_release_problems(due: LandingRelease, tier: Any, cache_root: Path) -> list[str]:
    """Why the landing images of `due` may not be released: the stored copy must be whole (every image
    verified against its recorded sha256) first."""
    images = [FileRecord(**f) for f in due.record["files"] if f["relpath"].startswith(f"{IMAGES_DIR}/")]
    if not images:
        return [f"{due.key}: the stored partition holds no images"]
    try:
        fetch_verified(tier, due.key, images, cache_root)
    except DamagedPartition as damaged:
        return [f"{due.key}: {damaged}"]
    return []


def release_files(landing_files: Mapping[str, Path], stored: Mapping[str, FileRecord],
                  delete: Callable[[str], None]) -> tuple[list[str], list[str], int]:
    """Delete each landing file (file name -> local path) whose content is the stored copy's; returns (released,
    kept because they differ, bytes freed). Files already gone count as released (a crashed release resumed)."""
    released, kept, freed = [], [], 0
    for name, path in sorted(landing_files.items()):
        record = stored.get(name)
        if record is None:
            continue
        if not path.exists():
            released.append(name)
            continue
        if path.stat().st_size != record.bytes or sha256_file(path) != record.sha256:
            kept.append(name)
            continue
        delete(name)
        released.append(name)
        freed += record.bytes
    return released, kept, freed
