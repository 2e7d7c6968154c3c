"""Landing zones: where plates arrive, as a local folder or an S3 prefix.

Both give the intake logic the same two operations: `snapshot()` lists every plate folder with its files'
sizes and modification times, and `fetch()` makes some of a plate's files available as local files.
For a folder that is the folder itself. For S3, files are downloaded into a local mirror under the data
root (each file written atomically and checked against the listed size), so validation and the
`raw_images` level read the same bytes the bucket holds. Nothing is ever written to the landing zone; its
image files are deleted (`delete`) only when the storage policy releases them after a verified copy
(storage/raw_images.py).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from mdp_assets.errors import MdpError
from mdp_assets.checksums import atomic_path
from mdp_assets.plates.intake import FolderSnapshot, snapshot_landing_zone


class LandingZone(Protocol):
    def snapshot(self) -> list[FolderSnapshot]: ...

    def fetch(self, snapshot: FolderSnapshot, relpaths: Iterable[str]) -> Path: ...

    def source_uri(self, plate: str, relpath: str) -> str: ...

    def open_plate(self, plate: str) -> Path: ...

    def delete(self, plate: str, relpath: str) -> None: ...


class FolderLanding:
    def __init__(self, root: Path):
        self.root = root

    def snapshot(self) -> list[FolderSnapshot]:
        return snapshot_landing_zone(self.root)

    def fetch(self, snapshot: FolderSnapshot, relpaths: Iterable[str]) -> Path:
        return snapshot.path

    def source_uri(self, plate: str, relpath: str) -> str:
        return (self.root / plate / relpath).resolve().as_uri()

    def open_plate(self, plate: str) -> Path:
        return self.root / plate

    def delete(self, plate: str, relpath: str) -> None:
        (self.root / plate / relpath).unlink(missing_ok=True)


class S3Landing:
    """Plates under `s3://<bucket>/<prefix><plate>/...`, mirrored on demand into `mirror_root/<plate>/`."""

    def __init__(self, client: Any, bucket: str, prefix: str, mirror_root: Path):
        self.client, self.bucket, self.mirror_root = client, bucket, mirror_root
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"

    def _list(self, prefix: str) -> dict[str, dict[str, tuple[int, int]]]:
        plates: dict[str, dict[str, tuple[int, int]]] = defaultdict(dict)
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                relative = item["Key"][len(self.prefix):]
                plate, _, relpath = relative.partition("/")
                if not relpath or relpath.endswith("/") or any(p.startswith(".") for p in relpath.split("/")):
                    continue
                mtime_ns = int(item["LastModified"].timestamp() * 1e9)
                plates[plate][relpath] = (int(item["Size"]), mtime_ns)
        return plates

    def snapshot(self) -> list[FolderSnapshot]:
        listing = self._list(self.prefix)
        return [FolderSnapshot(plate, self.mirror_root / plate, files) for plate, files in sorted(listing.items())]

    def open_plate(self, plate: str) -> Path:
        """Mirror the whole plate as the bucket lists it now (files gone from the bucket leave the mirror)."""
        files = self._list(f"{self.prefix}{plate}/").get(plate)
        if not files:
            raise MdpError(f"no plate {plate!r} under s3://{self.bucket}/{self.prefix}")
        snapshot = FolderSnapshot(plate, self.mirror_root / plate, files)
        self.fetch(snapshot, files)
        for local in [p for p in snapshot.path.rglob("*") if p.is_file()]:
            if local.relative_to(snapshot.path).as_posix() not in files:
                local.unlink()
        return snapshot.path

    def fetch(self, snapshot: FolderSnapshot, relpaths: Iterable[str]) -> Path:
        for relpath in relpaths:
            if relpath not in snapshot.files:
                continue
            size, mtime_ns = snapshot.files[relpath]
            local = snapshot.path / relpath
            if local.exists() and local.stat().st_size == size and local.stat().st_mtime_ns == mtime_ns:
                continue
            key = f"{self.prefix}{snapshot.name}/{relpath}"
            with atomic_path(local) as partial:
                self.client.download_file(self.bucket, key, str(partial))
                if partial.stat().st_size != size:
                    raise MdpError(f"downloaded {partial.stat().st_size} bytes of s3://{self.bucket}/{key}, listed {size}")
                os.utime(partial, ns=(mtime_ns, mtime_ns))
        return snapshot.path

    def source_uri(self, plate: str, relpath: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{plate}/{relpath}"

    def delete(self, plate: str, relpath: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=f"{self.prefix}{plate}/{relpath}")
        (self.mirror_root / plate / relpath).unlink(missing_ok=True)
