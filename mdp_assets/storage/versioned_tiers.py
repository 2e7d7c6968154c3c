"""Versioned long-term tiers: a git repository of partition records whose data files live in a versioned
store, written and read with that store's own client.

- dvc: a partition's data files are one DVC-tracked folder (`<key>/data`, pointer `<key>/data.dvc`), pushed
  to the tier's DVC remote (S3 or any S3-compatible endpoint; credentials from the environment when the tier
  is opened, never written to the repository). DVC addresses every file by its md5.
- git-lfs: a partition's data files are Git LFS objects (their oid is the sha256 mdp records), uploaded to
  the tier's LFS server by the `git-lfs` client; git holds their pointers.

Either way git commits the record, the provenance and the pointers, and pushes them to the tier's git
remote when it has one. The record is written only once the store holds every data file, each downloaded
again and its sha256 checked; then the local copies are dropped, so the store holds the data and every
read and every `mdp verify` downloads it afresh and checks each file. The record carries the tool's content
hash of each file (`versioned`); `read_record` adds the commit that holds it. The catalog shows both.
A crash before the record leaves nothing; after it (uncommitted), `recover` commits a partition whose
store holds every file, else restores what the repository last committed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from mdp_assets.checksums import FileRecord, atomic_path, remove_path, sha256_file
from mdp_assets.errors import MdpError
from mdp_assets.faults import fault_point
from mdp_assets.storage.provenance import RO_CRATE_FILE
from mdp_assets.storage.tiers import PARTITION_RECORD, DamagedPartition, GitTier, damaged_files

BOOKKEEPING = (PARTITION_RECORD, RO_CRATE_FILE)  # kept in git itself: small, read by every locate


class VersionedTier(GitTier):
    """What the DVC and Git LFS tiers share: the repository, its one writer at a time, crash recovery and
    verification by download. Subclasses upload (`_upload`), download (`_download`) and drop local copies."""

    tool = ""

    def __init__(self, name: str, root: Path, git_remote: str | None = None, env: dict[str, str] | None = None):
        super().__init__(name, root)
        self.git_remote, self.env = git_remote, {**(env or {})}
        self._owner: int | None = None
        self._checked: dict[str, dict[str, str]] = {}  # key -> relpath -> status, for one verification run

    # -- the repository ---------------------------------------------------------------------------------
    @contextmanager
    def _one_writer(self) -> Iterator[None]:
        """The repository-wide writer lock of a git tier, re-entrant within this object's thread (a delete
        inside a write takes it again); another thread or process waits for it."""
        if self._owner == threading.get_ident():
            yield
            return
        with super()._one_writer():
            self._owner = threading.get_ident()
            try:
                yield
            finally:
                self._owner = None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._one_writer():
            self._ensure()
            yield

    def _run(self, command: list[str], what: str, stdin: bytes | None = None, stdout: Any = None) -> str:
        env = {**os.environ, **self.env}
        result = subprocess.run(command, cwd=self.root, input=stdin, stdout=stdout or subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env)
        if result.returncode != 0:
            message = result.stderr.decode(errors="replace").strip().splitlines()[-3:]
            raise MdpError(f"tier {self.name!r}: {what} failed: {' / '.join(message)}", path=self.root)
        return result.stdout.decode(errors="replace") if stdout is None else ""

    def _ensure(self) -> None:
        """Create the repository on first use, and (re)write the settings the policy gives every time."""
        if not (self.root / ".git").exists():
            self._git("init", "-q")
            self._init_tool()
            self._git("add", "-A")
            self._git("commit", "-q", "-m", f"mdp: {self.tool} tier {self.name}")
        self._configure()
        if self.git_remote:
            remotes = self._git("remote").split()
            self._git("remote", "set-url" if "origin" in remotes else "add", "origin", self.git_remote)

    def _push(self) -> None:
        if self.git_remote:
            branch = self._git("rev-parse", "--abbrev-ref", "HEAD").strip()
            self._git("push", "-q", "origin", f"HEAD:refs/heads/{branch}")

    def _commit(self, key: str, message: str) -> None:
        self._git("add", "-A", "--", key)
        if self._git("status", "--porcelain", "--", key).strip():
            self._git("commit", "-q", "-m", message or f"mdp: store {key}", "--", key)
        self._push()

    def read_record(self, key: str) -> dict[str, Any] | None:
        record = super().read_record(key)
        if record is not None and (self.root / ".git").exists():
            commit = self._git("log", "-1", "--format=%H", "--", f"{key}/{PARTITION_RECORD}").strip()
            record["versioned"] = {**record.get("versioned", {}), "commit": commit or None}
        return record

    # -- writing ----------------------------------------------------------------------------------------
    def write(self, source: Path, key: str, data_files: list[FileRecord], move: bool, message: str = "",
              record: dict[str, Any] | None = None) -> None:
        """Upload the data files, check each one downloaded again, then write and commit the record."""
        record = record if record is not None else json.loads((source / PARTITION_RECORD).read_text())
        with self._locked():
            folder = self.folder(key)
            self._forget(key)
            remove_path(folder)
            folder.mkdir(parents=True)
            objects = self._upload(source, key, data_files)
            problems = self._check_download(key, data_files)
            if problems:
                self._forget(key)
                self._restore_committed(key)
                raise MdpError(f"tier {self.name!r}: {key} did not come back whole from the {self.tool} store: "
                               f"{problems[:5]}; nothing was stored")
            if (source / RO_CRATE_FILE).exists():
                shutil.copy2(source / RO_CRATE_FILE, folder / RO_CRATE_FILE)
            versioned = {"tier": self.name, "tool": self.tool, "objects": objects, **self._store_fields(key)}
            with atomic_path(folder / PARTITION_RECORD) as partial:
                partial.write_text(json.dumps({**record, "versioned": versioned}, indent=1, default=str))
            fault_point("write.uncommitted")
            self._commit(key, message)
            self._forget(key)
        if move:
            shutil.rmtree(source)

    def _store_fields(self, key: str) -> dict[str, Any]:
        """What else the record says about where the store keeps this partition."""
        return {}

    # -- reading and verifying ---------------------------------------------------------------------------
    def _check_download(self, key: str, expected: Sequence[FileRecord]) -> list[tuple[str, str]]:
        with tempfile.TemporaryDirectory(dir=self.root.parent, prefix=f".{self.root.name}.check-") as tmp:
            return self._download_checked(key, expected, Path(tmp))

    def _download_checked(self, key: str, expected: Sequence[FileRecord], target: Path) -> list[tuple[str, str]]:
        """Download a partition's data files into `target`; the (relpath, missing | corrupt) that differ."""
        with self._locked():
            try:
                self._download(key, expected, target)
            finally:
                self._forget(key)
        return damaged_files(target, expected)

    def fetch_verified(self, key: str, expected: Sequence[FileRecord], cache_root: Path) -> Path:
        """The partition downloaded into the local cache, every file checked against its sha256 (a cached copy
        is reused while it still matches); DamagedPartition names what the store no longer holds intact."""
        folder = cache_root / self.name / key
        if folder.is_dir() and not damaged_files(folder, expected):
            return folder
        with atomic_path(folder) as partial:
            partial.mkdir(parents=True)
            problems = self._download_checked(key, expected, partial)
            if problems:
                raise DamagedPartition(self.name, key, problems)
            if (self.folder(key) / RO_CRATE_FILE).exists():  # provenance travels with the data
                shutil.copy2(self.folder(key) / RO_CRATE_FILE, partial / RO_CRATE_FILE)
        return folder

    def local_folder(self, key: str, cache_root: Path) -> Path:
        record = self.read_record(key)
        if record is None:
            raise MdpError(f"no partition at {self.uri(key)}")
        return self.fetch_verified(key, [FileRecord(**f) for f in record["files"]], cache_root)

    def _status_of(self, key: str) -> dict[str, str]:
        """Each data file's status as the store holds it now (downloaded once per key per verification)."""
        if key not in self._checked:
            record = self.read_record(key)
            expected = [FileRecord(**f) for f in (record or {}).get("files", [])]
            problems = dict(self._check_download(key, expected)) if expected else {}
            self._checked[key] = {f.relpath: problems.get(f.relpath, "ok") for f in expected}
        return self._checked[key]

    def check_file(self, key: str, relpath: str, sha256: str) -> str:
        """Record and provenance: as in a git tier. A data file: downloaded from the store and hashed."""
        if relpath in BOOKKEEPING:
            return super().check_file(key, relpath, sha256)
        record = self.read_record(key)
        recorded = {f["relpath"]: f["sha256"] for f in (record or {}).get("files", [])}
        if relpath not in recorded:
            return "missing"
        status = self._status_of(key).get(relpath, "missing")
        return "corrupt" if status == "ok" and recorded[relpath] != sha256 else status

    def file_sha256(self, key: str, relpath: str) -> tuple[int, str] | None:
        if relpath in BOOKKEEPING:
            return super().file_sha256(key, relpath)
        record = self.read_record(key)
        found = next((FileRecord(**f) for f in (record or {}).get("files", []) if f["relpath"] == relpath), None)
        if found is None:
            return None
        with tempfile.TemporaryDirectory(dir=self.root.parent, prefix=f".{self.root.name}.check-") as tmp:
            self._download_checked(key, [found], Path(tmp))
            path = Path(tmp) / relpath
            return (path.stat().st_size, sha256_file(path)) if path.is_file() else None

    def restore_file(self, key: str, relpath: str, source: Path) -> None:
        """The store keeps content-addressed objects its client will not upload again: `mdp repair` makes the
        level again instead (or restore the object in the store by hand)."""
        raise MdpError(f"tier {self.name!r} ({self.tool}) does not overwrite a stored object: restore "
                       f"{key}/{relpath} in the {self.tool} store by hand, or make the level again")

    # -- deleting and crash recovery ------------------------------------------------------------------------
    def delete(self, key: str, message: str = "") -> None:
        """Remove the partition from the repository's tip (its objects stay in the store: history keeps them)."""
        with self._locked():
            super().delete(key, message)
            self._push()

    def _restore_committed(self, key: str) -> None:
        if self._git("ls-tree", "HEAD", "--", key).strip():
            self._git("checkout", "-q", "HEAD", "--", key)
        else:
            self._git("rm", "-r", "-q", "--cached", "--ignore-unmatch", "--", key)
            remove_path(self.folder(key))
        self._git("clean", "-q", "-fdx", "--", key)

    def recover(self, key: str) -> list[str]:
        """A record a crash left uncommitted is committed when the store holds every file it lists; anything
        else uncommitted under `key` goes back to what the repository last committed."""
        notes = super(GitTier, self).recover(key)  # the folder's own leftovers (a delete cut short)
        if not (self.root / ".git").exists():
            return notes
        with self._locked():
            leftovers = self._forget(key)
            if not self._git("status", "--porcelain", "--ignored", "--", key).strip():
                return notes + leftovers
            record_path = self.folder(key) / PARTITION_RECORD
            record = json.loads(record_path.read_text()) if record_path.is_file() else None
            whole = record is not None and record.get("versioned", {}).get("tier") == self.name and not \
                self._check_download(key, [FileRecord(**f) for f in record["files"]])
            if whole:
                self._commit(key, f"mdp: commit {key}, left uncommitted by a crash")
                notes.append(f"{self.uri(key)}: committed a whole partition a crash left uncommitted")
            else:
                self._restore_committed(key)
                notes.append(f"{self.uri(key)}: restored the committed partition over an incomplete one")
        return notes

    def clean_partials(self) -> list[str]:
        notes = super(GitTier, self).clean_partials()
        if not (self.root / ".git").exists():
            return notes
        with self._locked():
            changed = self._git("status", "--porcelain", "--ignored", "--untracked-files=all").splitlines()
        keys = sorted({"/".join(line[3:].strip('"').split("/")[:2]) for line in changed
                       if line[3:].count("/") >= 2 and not line[3:].startswith(".")})
        return notes + [note for key in keys for note in self.recover(key)]


# -- DVC --------------------------------------------------------------------------------------------------

def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class DvcTier(VersionedTier):
    """Data files in a DVC remote (`dvc add`, `dvc push`, `dvc pull`), pointers and records in git."""

    kind = "dvc"
    tool = "dvc"
    DATA = "data"

    def __init__(self, name: str, root: Path, remote_url: str, dvc: str = "dvc", endpoint_url: str | None = None,
                 region: str | None = None, git_remote: str | None = None, env: dict[str, str] | None = None):
        super().__init__(name, root, git_remote, {"DVC_NO_ANALYTICS": "1", **(env or {})})
        self.remote_url, self.dvc, self.endpoint_url, self.region = remote_url, dvc, endpoint_url, region

    def _dvc(self, *args: str) -> str:
        return self._run([self.dvc, *args], f"dvc {args[0]}")

    def _init_tool(self) -> None:
        self._dvc("init", "-q")

    def _configure(self) -> None:
        """The remote as the policy names it, in `.dvc/config.local` (never committed): a changed endpoint
        or bucket takes effect at once, and no credential is ever written (DVC reads them from the environment)."""
        lines = ["[core]", "    remote = mdp", "['remote \"mdp\"']", f"    url = {self.remote_url}"]
        lines += [f"    endpointurl = {self.endpoint_url}"] if self.endpoint_url else []
        lines += [f"    region = {self.region}"] if self.region else []
        (self.root / ".dvc" / "config.local").write_text("\n".join(lines) + "\n")

    def _upload(self, source: Path, key: str, data_files: list[FileRecord]) -> dict[str, str]:
        data = self.folder(key) / self.DATA
        objects = {}
        for item in data_files:
            target = data / item.relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / item.relpath, target)
            objects[item.relpath] = f"md5:{_md5(target)}"
        self._dvc("add", "-q", f"{key}/{self.DATA}")
        self._dvc("push", "-q", f"{key}/{self.DATA}.dvc")
        return objects

    def _store_fields(self, key: str) -> dict[str, Any]:
        out = yaml.safe_load((self.folder(key) / f"{self.DATA}.dvc").read_text())["outs"][0]
        return {"dvc_md5": out["md5"], "remote": self.remote_url}

    def _download(self, key: str, expected: Sequence[FileRecord], target: Path) -> None:
        if not (self.folder(key) / f"{self.DATA}.dvc").is_file():
            return
        try:
            self._dvc("pull", "-q", f"{key}/{self.DATA}.dvc")
        except MdpError:
            pass  # what could not be pulled is missing below
        data = self.folder(key) / self.DATA
        for item in expected:
            if (data / item.relpath).is_file():
                (target / item.relpath).parent.mkdir(parents=True, exist_ok=True)
                shutil.move(data / item.relpath, target / item.relpath)

    def _forget(self, key: str) -> list[str]:
        """Drop the local copies: the checked-out data folder and DVC's local cache (the remote keeps them)."""
        notes = []
        data = self.folder(key) / self.DATA
        if data.exists():
            remove_path(data)
            notes.append(f"{self.uri(key)}: removed a local copy of the data ({self.DATA}/)")
        remove_path(self.root / ".dvc" / "cache")
        return notes


# -- Git LFS ------------------------------------------------------------------------------------------------

LFS_ATTRIBUTES = """* filter=lfs diff=lfs merge=lfs -text
.gitattributes !filter !diff !merge text
.gitignore !filter !diff !merge text
_partition.json !filter !diff !merge text
ro-crate-metadata.json !filter !diff !merge text
"""


def lfs_pointer(item: FileRecord) -> bytes:
    """The Git LFS pointer of a file: its oid is the sha256 mdp records."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{item.sha256}\nsize {item.bytes}\n".encode()


def _is_pointer(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(40).startswith(b"version https://git-lfs.github.com/spec/")


class GitLfsTier(VersionedTier):
    """Data files as Git LFS objects on an LFS server (Debian's `git-lfs` client), pointers and records in git."""

    kind = "git-lfs"
    tool = "git-lfs"

    def __init__(self, name: str, root: Path, lfs_url: str, git_remote: str | None = None,
                 env: dict[str, str] | None = None):
        super().__init__(name, root, git_remote, env)
        self.lfs_url = lfs_url

    def _init_tool(self) -> None:
        self._git("lfs", "install", "--local")
        (self.root / ".gitattributes").write_text(LFS_ATTRIBUTES)

    def _configure(self) -> None:
        self._git("config", "lfs.url", self.lfs_url)
        self._git("config", "lfs.locksverify", "false")

    def _lfs_remote(self) -> str:
        return "origin" if self.git_remote else self.lfs_url

    def _upload(self, source: Path, key: str, data_files: list[FileRecord]) -> dict[str, str]:
        folder = self.folder(key)
        for item in data_files:
            target = folder / item.relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / item.relpath, target)
        self._git("add", "-A", "--", key)  # LFS's clean filter stores each object and stages its pointer
        oids = sorted({item.sha256 for item in data_files})
        for start in range(0, len(oids), 100):
            self._git("lfs", "push", "--object-id", self._lfs_remote(), *oids[start:start + 100])
        self._forget(key)
        return {item.relpath: f"sha256:{item.sha256}" for item in data_files}

    def _store_fields(self, key: str) -> dict[str, Any]:
        return {"lfs_url": self.lfs_url}

    def _download(self, key: str, expected: Sequence[FileRecord], target: Path) -> None:
        """Each file through `git lfs smudge` from its pointer: fetched from the server (no local copy is
        kept). The client refuses bytes that do not hash to the oid ("expected OID ..."): that file is left
        empty (corrupt); one the server does not have is left out (missing)."""
        for item in expected:
            path = target / item.relpath
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as handle:
                done = subprocess.run(["git", "lfs", "smudge", "--", f"{key}/{item.relpath}"], cwd=self.root,
                                      input=lfs_pointer(item), stdout=handle, stderr=subprocess.PIPE,
                                      env={**os.environ, **self.env})
            if done.returncode != 0:
                path.write_bytes(b"") if b"expected OID" in done.stderr else path.unlink()
        remove_path(self.root / ".git" / "lfs" / "objects")

    def _forget(self, key: str) -> list[str]:
        """Drop the local LFS objects (the server keeps them); the working tree keeps pointers only."""
        remove_path(self.root / ".git" / "lfs" / "objects")
        folder = self.folder(key)
        notes = []
        for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
            if path.is_file() and path.name not in BOOKKEEPING and not _is_pointer(path):
                sha = sha256_file(path)
                path.write_bytes(lfs_pointer(FileRecord(path.relative_to(folder).as_posix(), path.stat().st_size, sha)))
                notes.append(f"{self.uri(key, path.relative_to(folder).as_posix())}: kept its pointer only")
        return notes
