"""Storage tiers: where a stored partition physically lives.

Every backend stores a partition (a folder of files plus `_partition.json`) under a key
`<asset>/<partition>`, writes it so that it is complete or absent, verifies every file's sha256, and
can hand back a local folder to read. `_partition.json` is always written last and removed first, so it
marks a complete partition on every backend.

- filesystem: a folder (internal drive, external drive, HPC mount); one rename makes a partition visible.
- s3: an S3-compatible bucket (AWS or any endpoint_url); every object is uploaded with its SHA-256, which
  the store verifies; reads are downloaded into a local cache and checked again.
- git: a git repository; a partition is committed with a message naming plate, level and code version.
  Pushing is the repository's own business (its remote and hooks).
- ephemeral: "immediate deletion": a folder whose data files are released (deleted) once every level
  that reads them is made; the partition record and provenance stay.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import json
import shutil
import os
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mdp_assets.errors import MdpError
from mdp_assets.checksums import FileRecord, atomic_path, record_files, recover_replace, remove_path, sha256_file
from mdp_assets.faults import fault_point
from mdp_assets.storage.provenance import RO_CRATE_FILE as PROVENANCE_FILE

PARTITION_RECORD = "_partition.json"


class DamagedPartition(MdpError):
    """A stored partition whose files no longer match the checksums recorded when it was stored: nothing of it
    is served. `problems` lists (relpath, missing | corrupt)."""

    def __init__(self, tier: str, key: str, problems: Sequence[tuple[str, str]]):
        self.tier, self.key, self.problems = tier, key, list(problems)
        level, _, plate = key.partition("/")
        named = ", ".join(f"{relpath} ({status})" for relpath, status in self.problems[:10])
        more = f" and {len(self.problems) - 10} more" if len(self.problems) > 10 else ""
        super().__init__(f"stored data damaged: {level} of {plate if plate != '__all__' else 'all plates'} in tier "
                         f"{tier!r}: {named}{more} no longer match(es) the sha256 recorded when stored; nothing of it "
                         f"was read. `mdp repair {plate if plate != '__all__' else ''} --level {level}` restores it "
                         "from another verified copy or makes it again".replace("  ", " "))


def _file_status(path: Path, expected: FileRecord) -> str:
    if not path.is_file():
        return "missing"
    if path.stat().st_size != expected.bytes:
        return "corrupt"
    return "ok" if sha256_file(path) == expected.sha256 else "corrupt"


def damaged_files(folder: Path, expected: Sequence[FileRecord]) -> list[tuple[str, str]]:
    """Each recorded file of a local partition folder hashed as it streams from disk (two at a time: hashing
    releases the GIL); returns the (relpath, missing | corrupt) that do not match."""
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        statuses = list(pool.map(lambda record: _file_status(folder / record.relpath, record), expected))
    return [(record.relpath, status) for record, status in zip(expected, statuses) if status != "ok"]


def fetch_verified(tier: TierStore, key: str, expected: Sequence[FileRecord], cache_root: Path) -> Path:
    """The partition `key` of any tier as a local folder whose every recorded file matches its sha256, else
    DamagedPartition. Every backend gets this: one that hashes while it downloads defines its own
    `fetch_verified` (S3); any other's `local_folder` is hashed here, file by file as it streams."""
    own = getattr(tier, "fetch_verified", None)
    if own is not None:
        return own(key, expected, cache_root)
    folder = tier.local_folder(key, cache_root)
    problems = damaged_files(folder, expected)
    if problems:
        raise DamagedPartition(tier.name, key, problems)
    return folder


def _verify(folder: Path, expected: list[FileRecord], where: str) -> None:
    found = {r.relpath: r for r in record_files(folder)}
    bad = [r.relpath for r in expected if found.get(r.relpath) != r]
    if bad:
        raise MdpError(f"checksum mismatch after writing to {where}: {bad[:5]}", path=folder)


class FilesystemTier:
    kind = "filesystem"

    def __init__(self, name: str, root: Path):
        self.name, self.root = name, root

    def folder(self, key: str) -> Path:
        return self.root / key

    def uri(self, key: str, relpath: str = "") -> str:
        return (self.folder(key) / relpath).as_uri() if relpath else self.folder(key).as_uri()

    def read_record(self, key: str) -> dict[str, Any] | None:
        path = self.folder(key) / PARTITION_RECORD
        return json.loads(path.read_text()) if path.exists() else None

    def write(
        self, source: Path, key: str, data_files: list[FileRecord], move: bool, message: str = "",
        record: dict[str, Any] | None = None,
    ) -> None:
        """Store the folder `source` (data files plus bookkeeping) as `key`, complete or not at all.

        With `move` the source may be renamed into place (a staging folder on the same filesystem);
        otherwise it is copied and every data file's checksum is verified before the partition appears.
        `record` replaces the source's partition record (a lifecycle move records itself there)."""
        final = self.folder(key)
        with self._key_lock(key), atomic_path(final) as partial:
            renamed = False
            if move:
                try:
                    source.rename(partial)
                    renamed = True
                except OSError:
                    pass
            if not renamed:
                shutil.copytree(source, partial, ignore=shutil.ignore_patterns(PARTITION_RECORD))
                _verify(partial, data_files, f"tier {self.name!r}")
                if record is None:
                    shutil.copy2(source / PARTITION_RECORD, partial / PARTITION_RECORD)
                if move:
                    shutil.rmtree(source)
            if record is not None:
                (partial / PARTITION_RECORD).write_text(json.dumps(record, indent=1, default=str))
            fault_point("write.partial")
        self._committed(key, message)

    @contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        """One writer (or recoverer) of a partition at a time, across processes; the kernel drops the lock of
        a process that dies, so a crashed writer never blocks recovery."""
        path = self.root.parent / f".{self.root.name}.locks" / f"{key}.lock"  # beside the tier: not in a repository
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def recover(self, key: str) -> list[str]:
        """Repair what a crash left of a write, replace or delete of `key`, never deleting the only complete
        copy: a parked old folder comes back when the new one never arrived; a leftover temporary copy is
        removed when the partition is in place, and becomes the partition when it is whole and there is none."""
        notes = []
        final = self.folder(key)
        with self._key_lock(key):
            restored = recover_replace(final)
            if restored:
                notes.append(restored)
            for partial in sorted(final.parent.glob(f".{final.name}.partial-*")) if final.parent.is_dir() else []:
                if (final / PARTITION_RECORD).exists() or not _whole(partial):
                    remove_path(partial)
                    notes.append(f"{partial}: removed a half-written copy")
                else:
                    remove_path(final)  # a folder without a record is no partition
                    os.replace(partial, final)
                    notes.append(f"{final}: kept the only complete copy a crash left under {partial.name}")
            for leftover in sorted(final.parent.glob(f".{final.name}.deleting-*")) if final.parent.is_dir() else []:
                remove_path(leftover)
                notes.append(f"{leftover}: finished removing a deleted partition")
        return notes

    def _committed(self, key: str, message: str) -> None:
        """Hook for backends that must do more once a partition is in place."""

    def replace_record(self, key: str, record: dict[str, Any], message: str = "") -> None:
        """Replace a stored partition's record (in one rename), its data files untouched."""
        with self._key_lock(key), atomic_path(self.folder(key) / PARTITION_RECORD) as partial:
            partial.write_text(json.dumps(record, indent=1, default=str))
        self._committed(key, message or f"mdp: update the record of {key}")

    def local_folder(self, key: str, cache_root: Path) -> Path:
        return self.folder(key)

    def delete(self, key: str, message: str = "") -> None:
        folder = self.folder(key)
        if not folder.exists():
            return
        with self._key_lock(key):
            # Out of sight in one rename: a half-deleted partition is never "present".
            hidden = folder.with_name(f".{folder.name}.deleting-{uuid.uuid4().hex[:12]}")
            os.replace(folder, hidden)
            fault_point("delete.hidden")
            remove_path(hidden)

    def partition_keys(self) -> Iterator[str]:
        if self.root.is_dir():
            for record in sorted(self.root.rglob(PARTITION_RECORD)):
                relative = record.parent.relative_to(self.root)
                if not any(part.startswith(".") for part in relative.parts):
                    yield relative.as_posix()

    def file_sha256(self, key: str, relpath: str) -> tuple[int, str] | None:
        path = self.folder(key) / relpath
        return (path.stat().st_size, sha256_file(path)) if path.is_file() else None

    def check_file(self, key: str, relpath: str, sha256: str) -> str:
        """ok, missing or corrupt: the file as it is now against the checksum it was stored with."""
        found = self.file_sha256(key, relpath)
        return "missing" if found is None else "ok" if found[1] == sha256 else "corrupt"

    def restore_file(self, key: str, relpath: str, source: Path) -> None:
        """Put a verified good copy of one file of a stored partition back in place (one rename)."""
        target = self.folder(key) / relpath
        with self._key_lock(key), atomic_path(target) as partial:
            shutil.copyfile(source, partial)
            partial.chmod(target.stat().st_mode if target.exists() else 0o644)
        self._committed(key, f"mdp: repair {key}/{relpath} from a verified copy")

    def earlier_copy(self, key: str, relpath: str, target: Path) -> bool:
        """Write an earlier version of a file to `target` where the backend keeps history (git); else False."""
        return False

    def clean_partials(self) -> list[str]:
        """Recover every partition a killed process left mid-write, mid-replace or mid-delete (hidden names
        holding '.partial-', '.old-' or '.deleting-'); see `recover`."""
        keys = set()
        if self.root.is_dir():
            for marker in ("partial", "old", "deleting"):
                for path in self.root.rglob(f".*.{marker}-*"):
                    relative = path.parent.relative_to(self.root)
                    if any(part.startswith(".") for part in relative.parts):
                        continue
                    name = path.name[1:].rsplit(f".{marker}-", 1)[0]
                    keys.add((relative / name).as_posix())
        return [note for key in sorted(keys) for note in self.recover(key)]


def _whole(folder: Path) -> bool:
    """A folder holding a partition record and every file it lists, each with its sha256."""
    try:
        record = json.loads((folder / PARTITION_RECORD).read_text())
    except (OSError, ValueError):
        return False
    return not damaged_files(folder, [FileRecord(**f) for f in record["files"]])


class GitTier(FilesystemTier):
    kind = "git"

    @contextmanager
    def _one_writer(self) -> Iterator[None]:
        """Runs and plates finish at once: git's own index.lock refuses a second writer, so writers take turns
        on a lock file beside the repository (held across init, add and commit)."""
        self.root.parent.mkdir(parents=True, exist_ok=True)
        with open(self.root.parent / f".{self.root.name}.commit-lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _git(self, *args: str) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        if not (self.root / ".git").exists():
            subprocess.run(["git", "init", "-q", str(self.root)], check=True, capture_output=True)
        command = ["git", "-C", str(self.root), "-c", "user.name=mdp", "-c", "user.email=mdp@localhost", *args]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise MdpError(f"git {' '.join(args[:2])} failed: {result.stderr.strip() or result.stdout.strip()}", path=self.root)
        return result.stdout

    def _committed(self, key: str, message: str) -> None:
        fault_point("write.uncommitted")
        with self._one_writer():
            self._git("add", "-A", "--", key)
            if self._git("status", "--porcelain", "--", key).strip():
                self._git("commit", "-q", "-m", message or f"mdp: store {key}", "--", key)

    def delete(self, key: str, message: str = "") -> None:
        super().delete(key)
        with self._one_writer():
            self._git("add", "-A", "--", key)
            if self._git("status", "--porcelain", "--", key).strip():
                self._git("commit", "-q", "-m", message or f"mdp: remove {key}", "--", key)

    def recover(self, key: str) -> list[str]:
        """As for a folder; then a whole partition a crash left uncommitted is committed, and anything else
        uncommitted under `key` goes back to what the repository holds."""
        notes = super().recover(key)
        if not (self.root / ".git").exists() or not self._git("status", "--porcelain", "--", key).strip():
            return notes
        with self._one_writer():
            if (self.folder(key) / PARTITION_RECORD).exists() and _whole(self.folder(key)):
                self._git("add", "-A", "--", key)
                self._git("commit", "-q", "-m", f"mdp: commit {key}, left uncommitted by a crash", "--", key)
                notes.append(f"{self.uri(key)}: committed a whole partition a crash left uncommitted")
            else:
                self._git("checkout", "-q", "HEAD", "--", key) if self._git("ls-tree", "HEAD", "--", key).strip() \
                    else remove_path(self.folder(key))
                self._git("clean", "-q", "-fd", "--", key)
                notes.append(f"{self.uri(key)}: restored the committed partition over an incomplete one")
        return notes

    def earlier_copy(self, key: str, relpath: str, target: Path) -> bool:
        """The committed version of a file, as the repository holds it."""
        if not (self.root / ".git").exists():
            return False
        with open(target, "wb") as handle:
            shown = subprocess.run(["git", "-C", str(self.root), "show", f"HEAD:{key}/{relpath}"], stdout=handle,
                                   stderr=subprocess.DEVNULL)
        return shown.returncode == 0

    def check_file(self, key: str, relpath: str, sha256: str) -> str:
        """As for a folder, and the file must be committed as it is (else "uncommitted")."""
        status = super().check_file(key, relpath, sha256)
        if status == "ok" and self._git("status", "--porcelain", "--", f"{key}/{relpath}").strip():
            return "uncommitted"
        return status

    def log(self, key: str) -> list[str]:
        return [line for line in self._git("log", "--format=%s", "--", key).splitlines() if line]


class EphemeralTier(FilesystemTier):
    kind = "ephemeral"

    def recover(self, key: str) -> list[str]:
        """As for a folder; and a release a crash cut short (marked released, files not all deleted) is finished."""
        notes = super().recover(key)
        record = self.read_record(key)
        if record is not None and record.get("released_at"):
            left = [self.folder(key) / f["relpath"] for f in record["files"] if (self.folder(key) / f["relpath"]).exists()]
            if left:
                self.release_files(key, record)
                notes.append(f"{self.uri(key)}: finished releasing {len(left)} file(s) a crash left")
        return notes

    def clean_partials(self) -> list[str]:
        notes = super().clean_partials()
        for key in list(self.partition_keys()):
            record = self.read_record(key)
            if record is not None and record.get("released_at") and any(
                    (self.folder(key) / f["relpath"]).exists() for f in record["files"]):
                notes += self.recover(key)
        return notes

    def release_files(self, key: str, record: dict[str, Any]) -> int:
        folder = self.folder(key)
        freed = 0
        for item in record["files"]:
            path = folder / item["relpath"]
            if path.exists():
                freed += path.stat().st_size
                path.unlink()
        for directory in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
            if not any(directory.iterdir()):
                directory.rmdir()
        return freed

    def release(self, key: str, when: str) -> int:
        """Delete a partition's data, keeping its record and provenance; returns the bytes freed."""
        folder = self.folder(key)
        record = self.read_record(key)
        if record is None or record.get("released_at"):
            return 0
        # Marked released first: a crash while deleting leaves a released partition, never a partial one served.
        with atomic_path(folder / PARTITION_RECORD) as partial:
            partial.write_text(json.dumps({**record, "released_at": when}, indent=1, default=str))
        fault_point("release.marked")
        return self.release_files(key, record)


class S3Tier:
    kind = "s3"

    def __init__(self, name: str, client: Any, bucket: str, prefix: str):
        self.name, self.client, self.bucket = name, client, bucket
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"

    def _key(self, key: str, relpath: str) -> str:
        return f"{self.prefix}{key}/{relpath}"

    def uri(self, key: str, relpath: str = "") -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}" + (f"/{relpath}" if relpath else "")

    def read_record(self, key: str) -> dict[str, Any] | None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key, PARTITION_RECORD))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None
        return json.loads(body)

    def _upload(self, path: Path, object_key: str, sha256_hex: str) -> None:
        checksum = base64.b64encode(binascii.unhexlify(sha256_hex)).decode()
        with open(path, "rb") as handle:
            # The store recomputes the SHA-256 and refuses the object if it differs.
            self.client.put_object(Bucket=self.bucket, Key=object_key, Body=handle, ChecksumSHA256=checksum)

    def write(
        self, source: Path, key: str, data_files: list[FileRecord], move: bool, message: str = "",
        record: dict[str, Any] | None = None,
    ) -> None:
        # Data files were hashed as they were written (or verified as they were fetched): each is uploaded with
        # that recorded SHA-256, which the store checks against the bytes it receives; only the small
        # bookkeeping files are hashed here.
        known = {r.relpath: r for r in data_files}
        bad = [r.relpath for r in data_files
               if not (source / r.relpath).is_file() or (source / r.relpath).stat().st_size != r.bytes]
        if bad:
            raise MdpError(f"source differs from its record before upload: {bad[:5]}", path=source)
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            relpath = path.relative_to(source).as_posix()
            if relpath != PARTITION_RECORD:
                self._upload(path, self._key(key, relpath),
                             known[relpath].sha256 if relpath in known else sha256_file(path))
        for item in data_files:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key, item.relpath))
            if int(head["ContentLength"]) != item.bytes:
                raise MdpError(f"{self.uri(key, item.relpath)} holds {head['ContentLength']} bytes, expected {item.bytes}")
        if record is None:
            self._upload(source / PARTITION_RECORD, self._key(key, PARTITION_RECORD), sha256_file(source / PARTITION_RECORD))
        else:
            body = json.dumps(record, indent=1, default=str).encode()
            checksum = base64.b64encode(hashlib.sha256(body).digest()).decode()
            self.client.put_object(Bucket=self.bucket, Key=self._key(key, PARTITION_RECORD), Body=body, ChecksumSHA256=checksum)
        if move:
            shutil.rmtree(source)

    def replace_record(self, key: str, record: dict[str, Any], message: str = "") -> None:
        """Replace a stored partition's record (one object, uploaded with its SHA-256)."""
        body = json.dumps(record, indent=1, default=str).encode()
        checksum = base64.b64encode(hashlib.sha256(body).digest()).decode()
        self.client.put_object(Bucket=self.bucket, Key=self._key(key, PARTITION_RECORD), Body=body, ChecksumSHA256=checksum)

    def local_folder(self, key: str, cache_root: Path) -> Path:
        """Download a partition into the local cache (reused while its checksums still match)."""
        record = self.read_record(key)
        if record is None:
            raise MdpError(f"no partition at {self.uri(key)}")
        return self.fetch_verified(key, [FileRecord(**f) for f in record["files"]], cache_root)

    def fetch_verified(self, key: str, expected: Sequence[FileRecord], cache_root: Path) -> Path:
        """The partition in the local cache, each object hashed as it streams down (one pass, no re-read); a
        cached copy is reused while its files still match. An object that differs from its record is never
        put in the cache: DamagedPartition names it."""
        folder = cache_root / self.name / key
        if folder.is_dir() and not damaged_files(folder, expected):
            return folder
        with atomic_path(folder) as partial:
            partial.mkdir(parents=True)
            problems = []
            for item in expected:
                target = partial / item.relpath
                target.parent.mkdir(parents=True, exist_ok=True)
                found = self._download_hashed(self._key(key, item.relpath), target)
                if found != (item.bytes, item.sha256):
                    problems.append((item.relpath, "missing" if found is None else "corrupt"))
            if problems:
                raise DamagedPartition(self.name, key, problems)
            if self._exists(key, PROVENANCE_FILE):  # provenance travels with the data
                self.client.download_file(self.bucket, self._key(key, PROVENANCE_FILE), str(partial / PROVENANCE_FILE))
        return folder

    def _download_hashed(self, object_key: str, target: Path) -> tuple[int, str] | None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=object_key)["Body"]
        except self.client.exceptions.NoSuchKey:
            return None
        digest, size = hashlib.sha256(), 0
        with open(target, "wb") as handle:
            for chunk in body.iter_chunks(chunk_size=1 << 20):
                digest.update(chunk)
                handle.write(chunk)
                size += len(chunk)
        return size, digest.hexdigest()

    def _exists(self, key: str, relpath: str) -> bool:
        listed = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._key(key, relpath), MaxKeys=1)
        return any(item["Key"] == self._key(key, relpath) for item in listed.get("Contents", []))

    def delete(self, key: str, message: str = "") -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key, PARTITION_RECORD))
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}{key}/"):
            for item in page.get("Contents", []):
                self.client.delete_object(Bucket=self.bucket, Key=item["Key"])

    def partition_keys(self) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                if item["Key"].endswith("/" + PARTITION_RECORD):
                    yield item["Key"][len(self.prefix): -len("/" + PARTITION_RECORD)]

    def file_sha256(self, key: str, relpath: str) -> tuple[int, str] | None:
        """Size and sha256 of an object, hashed as it streams (never the whole object in memory)."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key, relpath))["Body"]
        except self.client.exceptions.NoSuchKey:
            return None
        digest, size = hashlib.sha256(), 0
        for chunk in body.iter_chunks(chunk_size=1 << 20):
            digest.update(chunk)
            size += len(chunk)
        return size, digest.hexdigest()

    def check_file(self, key: str, relpath: str, sha256: str) -> str:
        found = self.file_sha256(key, relpath)
        return "missing" if found is None else "ok" if found[1] == sha256 else "corrupt"

    def clean_partials(self, older_than_s: float = 3600) -> list[str]:
        """Delete objects of partitions that never got their _partition.json (a killed upload), once they
        are older than `older_than_s` (so an upload in progress is left alone)."""
        by_key: dict[str, list[dict]] = {}
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                relative = item["Key"][len(self.prefix):]
                parts = relative.split("/")
                if len(parts) > 2:  # <asset>/<partition>/<file...>
                    by_key.setdefault("/".join(parts[:2]), []).append(item)
        now = datetime.now(timezone.utc)
        removed = []
        for key, items in by_key.items():
            names = {i["Key"].rsplit("/", 1)[1] for i in items}
            if PARTITION_RECORD in names or any((now - i["LastModified"]).total_seconds() < older_than_s for i in items):
                continue
            for item in items:
                self.client.delete_object(Bucket=self.bucket, Key=item["Key"])
                removed.append(f"removed an object of a half-written upload: {self.uri(key)}/{item['Key'].rsplit('/', 1)[1]}")
        return removed

    def restore_file(self, key: str, relpath: str, source: Path) -> None:
        self._upload(source, self._key(key, relpath), sha256_file(source))

    def earlier_copy(self, key: str, relpath: str, target: Path) -> bool:
        return False

    def recover(self, key: str) -> list[str]:
        """An S3 partition appears when its _partition.json is uploaded last; nothing to recover per key."""
        return []


TierStore = FilesystemTier | S3Tier
