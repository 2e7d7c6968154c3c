"""Content checksums and atomic writes: nothing half-written is ever visible under its final name."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from mdp_assets.faults import fault_point

_CHUNK = 1 << 20


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file, read in chunks (md5 for services that report it, sha256 for everything of ours)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    return file_digest(path, "sha256")


def copy_hashed(source: Path, target: Path) -> tuple[int, str]:
    """Copy `source` to `target` in chunks (never a whole file in memory), hashing the bytes as they are
    written; the target is flushed to disk before returning (size, sha256)."""
    digest, size = hashlib.sha256(), 0
    with open(source, "rb") as reader, open(target, "wb") as writer:
        while chunk := reader.read(_CHUNK):
            digest.update(chunk)
            writer.write(chunk)
            size += len(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    return size, digest.hexdigest()


class HashingWriter:
    """A binary file opened for writing that hashes every byte written to it (so a file is hashed once,
    while it is written, not read back for its checksum)."""

    def __init__(self, path: Path):
        self.path, self._handle, self._digest, self.size = path, open(path, "wb"), hashlib.sha256(), 0
        self.closed = False

    def write(self, data: bytes) -> int:
        self._digest.update(data)
        self.size += len(data)
        return self._handle.write(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._handle.flush()

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            self._handle.close()
            self.closed = True

    def __enter__(self) -> HashingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def record(self, root: Path) -> FileRecord:
        """The written file's record, relative to `root` (after close)."""
        return FileRecord(self.path.relative_to(root).as_posix(), self.size, self._digest.hexdigest())


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class FileRecord:
    """One stored file: its path relative to the partition folder, size and checksum."""

    relpath: str
    bytes: int
    sha256: str


def record_files(root: Path, known: Iterable[FileRecord] = ()) -> list[FileRecord]:
    """Checksum every regular file below root, in a stable order. Files in `known` (hashed while they were
    written or copied; same size now) are taken as recorded, not read again."""
    hashed = {r.relpath: r for r in known}
    records = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relpath, size = path.relative_to(root).as_posix(), path.stat().st_size
        found = hashed.get(relpath)
        records.append(found if found is not None and found.bytes == size else FileRecord(relpath, size, sha256_file(path)))
    return records


def tree_digest(records: Iterable[FileRecord]) -> str:
    """One checksum for a set of files: sha256 over the sorted 'relpath sha256 bytes' lines."""
    lines = sorted(f"{r.relpath} {r.sha256} {r.bytes}" for r in records)
    return sha256_text("\n".join(lines))


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `final`; on success it replaces `final` in one rename.

    On error the temporary file or folder is removed and `final` is untouched.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = final.with_name(f".{final.name}.partial-{uuid.uuid4().hex[:12]}")
    try:
        yield temporary
        replace_atomically(temporary, final)
    finally:
        remove_path(temporary)


def replace_atomically(source: Path, final: Path) -> None:
    """Put `source` at `final` (same filesystem), replacing what was there without a gap for files."""
    if source.is_dir() and final.exists():
        # Directories cannot be swapped in one rename: park the old one, rename, then drop the old one.
        # A crash in between leaves the old one whole under its parked name; recover_replace() puts it back.
        parked = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:12]}")
        os.replace(final, parked)
        fault_point("replace.parked")
        os.replace(source, final)
        fault_point("replace.renamed")
        remove_path(parked)
    else:
        os.replace(source, final)


def parked_copies(final: Path) -> list[Path]:
    """Old folders a directory replace parked beside `final` (newest first)."""
    if not final.parent.is_dir():
        return []
    found = [p for p in final.parent.glob(f".{final.name}.old-*") if p.is_dir()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def recover_replace(final: Path) -> str | None:
    """Finish or undo a directory replace a crash interrupted: with `final` gone, its parked old folder (whole:
    it was renamed, never written) is put back; with `final` in place, parked leftovers are removed. Callers
    hold the writer's lock, so no replace is in progress. Returns what was done."""
    parked = parked_copies(final)
    if not parked:
        return None
    if not final.exists():
        os.replace(parked[0], final)
        for leftover in parked[1:]:
            remove_path(leftover)
        return f"{final}: restored the previous copy a crash left parked ({parked[0].name})"
    for leftover in parked:
        remove_path(leftover)
    return f"{final}: removed {len(parked)} parked old cop{'y' if len(parked) == 1 else 'ies'} of a finished replace"


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
