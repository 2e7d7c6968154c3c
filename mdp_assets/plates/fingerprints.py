"""Landing images fingerprinted by content: a changed image is found before any level uses it.

Name, size and modification time are no fingerprint: an image rewritten with its size and `os.utime` looks
the same. Each image's sha256 is recorded with the plate (by `mdp register` and `mdp demo` when they
register it; for plates the intake sensor registers, whose ticks must stay short, by the plate's first
`raw_images` step, before anything else reads them), with the file's status as it was hashed: size,
modification and change times (st_ctime moves on every write and every utime, and no user can set it
back) and inode. A level that reads the images first compares each one's status, cheaply; an image whose
status differs is hashed again, and one whose content differs stops the level, naming the file.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple, dataclass
from pathlib import Path

from mdp_assets.checksums import sha256_file
from mdp_assets.errors import MdpError

MAX_LISTED = 20


@dataclass(frozen=True)
class ImageFingerprint:
    sha256: str
    bytes: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    def to_record(self) -> list:
        return list(astuple(self))

    @classmethod
    def from_record(cls, values: list) -> ImageFingerprint:
        return cls(*values)


def _status(path: Path) -> tuple[int, int, int, int]:
    status = os.stat(path)
    return status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino


def fingerprint_file(path: Path) -> ImageFingerprint:
    """The file's sha256 with its status; a file written while it is hashed is an error (the instrument is
    still writing it)."""
    before = _status(path)
    digest = sha256_file(path)
    if _status(path) != before:
        raise MdpError("the image changed while it was being fingerprinted (still being written?)", path=path)
    return ImageFingerprint(digest, *before)


def fingerprint_images(paths: dict[str, Path], max_workers: int = 4) -> dict[str, ImageFingerprint]:
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        return dict(zip(paths, pool.map(fingerprint_file, paths.values())))


def changed_images(registered: dict[str, ImageFingerprint], paths: dict[str, Path]) -> list[str]:
    """The images whose content is no longer what was registered (or that are gone, or were never registered)."""
    changed = []
    for name, path in sorted(paths.items()):
        known = registered.get(name)
        if known is None:
            changed.append(f"{name} (not fingerprinted at registration)")
            continue
        try:
            status = _status(path)
        except OSError:
            changed.append(f"{name} (gone)")
            continue
        if status == (known.bytes, known.mtime_ns, known.ctime_ns, known.inode):
            continue  # not written since it was hashed: the kernel moves ctime on any write
        if status[0] != known.bytes or sha256_file(path) != known.sha256:
            changed.append(name)
    return changed


def check_unchanged(plate: str, level: str, registered: dict[str, ImageFingerprint], paths: dict[str, Path],
                    where: Path | None = None) -> None:
    """Stop `level` of `plate` if any image it is about to read differs from its registered content."""
    if not registered:
        raise MdpError(f"plate {plate}, level {level}: the plate's images were never fingerprinted (make raw_images "
                       "first: it records their sha256)", path=where)
    changed = changed_images(registered, paths)
    if changed:
        listed = ", ".join(changed[:MAX_LISTED]) + (f" and {len(changed) - MAX_LISTED} more"
                                                     if len(changed) > MAX_LISTED else "")
        raise MdpError(f"plate {plate}, level {level}: {len(changed)} landing image(s) differ from the content "
                       f"(sha256) recorded at registration: {listed}; nothing was read from them. The landing zone "
                       "holds what the instrument wrote: restore those files, or register the plate's new images "
                       "under a new barcode", path=where)
