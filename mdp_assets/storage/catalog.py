"""The catalog: a DuckDB database of every stored file of every level in every tier.

One row per file: plate, level, asset key, partition, tier, uri, relpath, bytes, sha256, created,
last moved, code version, data version, and the result of the last verification; in a versioned tier (dvc,
git-lfs) also the tool's content hash of the file and the tier repository's commit that holds it. The IO manager replaces
a partition's rows whenever it stores the partition; `rebuild` makes the same rows from scratch by
scanning the tiers' partition records and asking the Dagster event log for code and data versions.

Many writers (groups, levels and plates finishing at once, the lifecycle, verification): DuckDB lets one process
hold a database file open for writing, and refuses the others. So every connection first takes a lock file
beside the catalog (`<catalog>.lock`, flock): writers one at a time, readers together, waiting their turn (up
to `wait_s`) instead of failing; a write is one transaction (a partition's rows deleted and inserted, the
primary key refusing duplicates), so no row is lost or written twice however many processes finish at once.
A connection still retries briefly while something outside mdp (the duckdb shell) holds the file.
"""

from __future__ import annotations

import fcntl
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import astuple, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from mdp_assets.errors import MdpError
from mdp_assets.checksums import sha256_file
from mdp_assets.faults import fault_point
from mdp_assets.storage.provenance import RO_CRATE_FILE as PROVENANCE_FILE
from mdp_assets.storage.tiers import PARTITION_RECORD

UNPARTITIONED = "__all__"

SCHEMA = """
CREATE TABLE IF NOT EXISTS stored_files (
    plate VARCHAR,
    level VARCHAR,
    asset_key VARCHAR NOT NULL,
    partition VARCHAR NOT NULL,
    tier VARCHAR NOT NULL,
    uri VARCHAR NOT NULL,
    relpath VARCHAR NOT NULL,
    bytes BIGINT NOT NULL,
    sha256 VARCHAR NOT NULL,
    created TIMESTAMPTZ,
    last_moved TIMESTAMPTZ,
    code_version VARCHAR,
    data_version VARCHAR,
    status VARCHAR NOT NULL DEFAULT 'ok',
    checked_at TIMESTAMPTZ,
    content_hash VARCHAR,
    tier_commit VARCHAR,
    PRIMARY KEY (asset_key, partition, relpath)
);
CREATE TABLE IF NOT EXISTS landing_releases (
    plate VARCHAR PRIMARY KEY,
    released_at TIMESTAMPTZ,
    tier VARCHAR,
    landing VARCHAR,
    files BIGINT,
    bytes BIGINT,
    data_version VARCHAR,
    policy VARCHAR
)
"""
# Catalogs made before the versioned tiers get their columns (empty for what they already list).
MIGRATIONS = ("ALTER TABLE stored_files ADD COLUMN IF NOT EXISTS content_hash VARCHAR",
              "ALTER TABLE stored_files ADD COLUMN IF NOT EXISTS tier_commit VARCHAR")


@dataclass(frozen=True)
class CatalogRow:
    plate: str | None
    level: str | None
    asset_key: str
    partition: str
    tier: str
    uri: str
    relpath: str
    bytes: int
    sha256: str
    created: datetime | None
    last_moved: datetime | None
    code_version: str | None
    data_version: str | None
    content_hash: str | None = None  # a versioned tier's own address of the file (DVC md5, LFS oid)
    tier_commit: str | None = None  # the tier repository's commit holding the partition


COLUMNS = [f.name for f in fields(CatalogRow)]


_HELD = threading.local()  # lock file -> exclusive?, of the catalog locks this thread holds
LOCK_WAIT_S = 600.0  # a write takes milliseconds: a queue of hundreds of writers is served well within this


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


@contextmanager
def catalog_lock(path: Path, exclusive: bool, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the catalog's lock file: alone (`exclusive`, to write) or beside other readers; wait for it up to
    `wait_s`, then fail naming the catalog."""
    held = getattr(_HELD, "modes", None) or {}
    _HELD.modes = held
    key = str(lock_path(path).resolve())
    if key in held:  # a connection opened inside another of this thread's: the outer one's lock covers it
        if exclusive and not held[key]:
            raise MdpError("a catalog write inside a read of the same thread would wait for itself", path=path)
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path(path), "a+b") as handle:
        deadline, delay = time.monotonic() + wait_s, 0.002
        while True:
            try:
                fcntl.flock(handle, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise MdpError(f"catalog stayed locked by other writers for {wait_s:.0f} s", path=path) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        held[key] = exclusive
        try:
            yield
        finally:
            del held[key]
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def connect(path: Path, read_only: bool = False, wait_s: float = LOCK_WAIT_S) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to the catalog, holding its lock (see the module's docstring) until it is closed."""
    if read_only and not path.exists():
        raise MdpError("no catalog yet: materialize something first, or run `mdp catalog --rebuild`", path=path)
    with catalog_lock(path, exclusive=not read_only, wait_s=wait_s):
        deadline = time.monotonic() + 60.0
        while True:
            try:
                connection = duckdb.connect(str(path), read_only=read_only)
                break
            except duckdb.IOException as exc:  # held by a process outside mdp
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise MdpError(f"catalog is busy or unreadable: {exc}", path=path) from exc
                time.sleep(0.2)
        try:
            if not read_only:
                connection.execute(SCHEMA)
                for migration in MIGRATIONS:
                    connection.execute(migration)
            yield connection
        finally:
            connection.close()


def rows_for_partition(
    folder: Path,
    tier: str,
    level: str | None,
    code_version: str | None,
    data_version: str | None,
    last_moved: datetime | None = None,
) -> list[CatalogRow]:
    """Catalog rows for one partition in a local folder."""
    record = json.loads((folder / PARTITION_RECORD).read_text())
    return rows_for_record(record, lambda relpath: (folder / relpath).as_uri(), bookkeeping_in(folder), tier, level,
                           code_version, data_version, last_moved)


def bookkeeping_in(folder: Path) -> list[tuple[str, int, str]]:
    """(name, bytes, sha256) of the record and provenance files in a local partition folder."""
    return [(n, (folder / n).stat().st_size, sha256_file(folder / n))
            for n in (PARTITION_RECORD, PROVENANCE_FILE) if (folder / n).exists()]


def rows_for_record(
    record: dict,
    uri_of: Callable[[str], str],
    bookkeeping: list[tuple[str, int, str]],
    tier: str,
    level: str | None,
    code_version: str | None,
    data_version: str | None,
    last_moved: datetime | None = None,
) -> list[CatalogRow]:
    """Catalog rows for one stored partition: its data files from the partition record, and the record and
    provenance files themselves (`bookkeeping`, checksummed by the caller: a record cannot hold its own)."""
    partition = record["partition"] or UNPARTITIONED
    created = datetime.fromisoformat(record["written_at"])
    moves = record.get("moves") or []
    if last_moved is None and moves:
        last_moved = datetime.fromisoformat(moves[-1]["when"])
    files = [f for f in record["files"] if not record.get("released_at")]
    files += [{"relpath": n, "bytes": b, "sha256": s} for n, b, s in bookkeeping]
    versioned = record.get("versioned") or {}
    if versioned.get("tier") != tier:
        versioned = {}  # written by another tier before a lifecycle move: not this copy's
    return [
        CatalogRow(
            plate=record["partition"],
            level=level,
            asset_key=record["asset"],
            partition=partition,
            tier=tier,
            uri=uri_of(f["relpath"]),
            relpath=f["relpath"],
            bytes=int(f["bytes"]),
            sha256=f["sha256"],
            created=created,
            last_moved=last_moved,
            code_version=code_version,
            data_version=data_version,
            content_hash=(versioned.get("objects") or {}).get(f["relpath"]),
            tier_commit=versioned.get("commit"),
        )
        for f in files
    ]


def _insert(con: duckdb.DuckDBPyConnection, rows: list[CatalogRow]) -> None:
    if rows:
        con.executemany(
            f"INSERT INTO stored_files ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
            [astuple(r) for r in rows],
        )


def bookkeeping_of(store, key: str) -> list[tuple[str, int, str]]:
    """(name, bytes, sha256) of a stored partition's record and provenance files, as they are now."""
    found = [(name, store.file_sha256(key, name)) for name in (PARTITION_RECORD, PROVENANCE_FILE)]
    return [(name, *size_and_digest) for name, size_and_digest in found if size_and_digest is not None]


def replace_partition(path: Path, asset_key: str, partition: str, rows: Iterable[CatalogRow]) -> None:
    rows = list(rows)
    with connect(path) as con:
        con.execute("BEGIN")
        con.execute("DELETE FROM stored_files WHERE asset_key = ? AND partition = ?", [asset_key, partition])
        _insert(con, rows)
        fault_point("catalog.uncommitted")
        con.execute("COMMIT")


def partition_files(path: Path, keys: list[str] | None = None) -> dict[str, set[tuple[str, str, str, datetime]]]:
    """What the catalog lists per partition (`<asset>/<partition>`, of `keys` only when given): (tier, relpath,
    sha256, created) of every file."""
    if not path.exists():
        return {}
    sql = "SELECT asset_key, partition, tier, relpath, sha256, created FROM stored_files"
    with connect(path, read_only=True) as con:
        if keys is None:
            rows = con.execute(sql).fetchall()
        else:
            rows = con.execute(sql + " WHERE list_contains(?, asset_key || '/' || partition)", [list(keys)]).fetchall()
    found: dict[str, set[tuple[str, str, str, datetime]]] = {}
    for asset_key, partition, tier, relpath, sha, created in rows:
        found.setdefault(f"{asset_key}/{partition}", set()).add((tier, relpath, sha, created))
    return found


VersionLookup = Callable[[str, str | None], tuple[str | None, str | None, str | None]]


def rebuild(path: Path, stores: list, versions: VersionLookup) -> int:
    """Rebuild the catalog from scratch by scanning every tier store's partition records;
    `versions(asset, partition)` gives (level, code version, data version) from the event log."""
    rows: list[CatalogRow] = []
    for store in stores:
        for key in store.partition_keys():
            record = store.read_record(key)
            if record is None:
                continue
            level, code_version, data_version = versions(record["asset"], record["partition"])
            rows.extend(rows_for_record(record, lambda relpath, k=key: store.uri(k, relpath), bookkeeping_of(store, key),
                                        store.name, level, code_version, data_version))
    with connect(path) as con:
        con.execute("BEGIN")
        con.execute("DELETE FROM stored_files")
        _insert(con, rows)
        con.execute("COMMIT")
    return len(rows)


@dataclass(frozen=True)
class FileProblem:
    asset_key: str
    partition: str
    uri: str
    status: str  # missing | corrupt

    def __str__(self) -> str:
        return f"{self.status}: {self.uri} ({self.asset_key} of {self.partition})"


FileCheck = Callable[[str, str, str, str, str], str]


def verify(path: Path, check: FileCheck, asset_keys: list[str] | None = None) -> tuple[int, list[FileProblem]]:
    """Check every cataloged file (of `asset_keys` only, when given) with `check(tier, asset_key, partition,
    relpath, sha256)`, which re-reads it wherever its tier keeps it and says ok, missing, corrupt or
    uncommitted; record each row's status. The catalog is not held while files are read, so runs can write to
    it meanwhile."""
    sql = "SELECT tier, asset_key, partition, relpath, uri, sha256 FROM stored_files"
    with connect(path, read_only=True) as con:
        if asset_keys is None:
            rows = con.execute(sql).fetchall()
        else:
            rows = con.execute(sql + " WHERE list_contains(?, asset_key)", [list(asset_keys)]).fetchall()
    problems, statuses = [], []
    now = datetime.now(timezone.utc)
    for tier, asset_key, partition, relpath, uri, expected in rows:
        status = check(tier, asset_key, partition, relpath, expected)
        if status != "ok":
            problems.append(FileProblem(asset_key, partition, uri, status))
        statuses.append((status, now, asset_key, partition, relpath, expected))
    with connect(path) as con:
        # Only rows still describing the file that was checked (a run may have replaced it meanwhile).
        con.executemany("UPDATE stored_files SET status = ?, checked_at = ? "
                        "WHERE asset_key = ? AND partition = ? AND relpath = ? AND sha256 = ?", statuses)
    return len(rows), problems


def mark_status(path: Path, asset_key: str, partition: str, tier: str, statuses: dict[str, str]) -> None:
    """Record what a read found wrong with a partition's files (relpath -> missing | corrupt)."""
    if not path.exists() or not statuses:
        return
    now = datetime.now(timezone.utc)
    with connect(path) as con:
        con.executemany("UPDATE stored_files SET status = ?, checked_at = ? "
                        "WHERE asset_key = ? AND partition = ? AND tier = ? AND relpath = ?",
                        [(status, now, asset_key, partition, tier, relpath) for relpath, status in statuses.items()])


def damaged_levels(path: Path, partition: str) -> dict[str, str]:
    """Levels of a partition whose stored files the last verification found missing, corrupt or uncommitted."""
    if not path.exists():
        return {}
    with connect(path, read_only=True) as con:
        rows = con.execute("SELECT asset_key, string_agg(DISTINCT status, ', ') FROM stored_files "
                           "WHERE partition = ? AND status <> 'ok' GROUP BY asset_key", [partition]).fetchall()
    return {asset: statuses for asset, statuses in rows}


def record_landing_release(path: Path, release: dict, rows: Iterable[CatalogRow]) -> None:
    """Log that a plate's landing images were released after their verified copy, and replace the raw_images
    partition's rows (its record now names the release) in one transaction."""
    rows = list(rows)
    with connect(path) as con:
        con.execute("BEGIN")
        con.execute("DELETE FROM stored_files WHERE asset_key = 'raw_images' AND partition = ?", [release["plate"]])
        _insert(con, rows)
        con.execute("INSERT OR REPLACE INTO landing_releases VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [release["plate"], release["released_at"], release["tier"], release["landing"], release["files"],
                     release["bytes"], release["data_version"], release["policy"]])
        con.execute("COMMIT")


def landing_release(path: Path, plate: str) -> dict | None:
    """The recorded release of a plate's landing images, or None (never released)."""
    if not path.exists():
        return None
    with connect(path, read_only=True) as con:
        try:
            found = con.execute("SELECT * FROM landing_releases WHERE plate = ?", [plate])
        except duckdb.CatalogException:
            return None  # a catalog written before landing releases existed: none was ever recorded
        row = found.fetchone()
        return dict(zip([d[0] for d in found.description], row)) if row else None


CANNED_QUERIES = {
    "by-tier-and-level": "SELECT tier, level, count(*) AS files, sum(bytes) AS bytes FROM stored_files "
    "GROUP BY ALL ORDER BY tier, level",
    "by-plate": "SELECT plate, count(DISTINCT asset_key) AS levels, count(*) AS files, sum(bytes) AS bytes "
    "FROM stored_files GROUP BY ALL ORDER BY plate",
    "problems": "SELECT asset_key, partition, uri, status, checked_at FROM stored_files WHERE status <> 'ok' ORDER BY 1, 2",
    "totals": "SELECT count(*) AS files, sum(bytes) AS bytes FROM stored_files",
    # Where each plate's raw image bytes are: copied into a tier (its images/ files), or left in the landing
    # zone (reference mode: only the inventory is stored); and whether the landing copy was released.
    "raw-images": "SELECT f.plate, f.tier, CASE WHEN count(*) FILTER (WHERE f.relpath LIKE 'images/%') > 0 "
    "THEN 'copy' ELSE 'reference' END AS mode, count(*) FILTER (WHERE f.relpath LIKE 'images/%') AS images, "
    "coalesce(sum(f.bytes) FILTER (WHERE f.relpath LIKE 'images/%'), 0) AS image_bytes, "
    "any_value(r.released_at) AS landing_released_at FROM stored_files f "
    "LEFT JOIN landing_releases r ON r.plate = f.plate WHERE f.asset_key = 'raw_images' GROUP BY f.plate, f.tier "
    "ORDER BY f.plate",
    "deposits": "SELECT deposit_id, target, created, plates, levels, files, bytes, sha256, "
    "coalesce(uploaded, 'not uploaded') AS uploaded FROM deposits ORDER BY created",
}


def tier_bytes(path: Path, tier: str) -> int:
    if not path.exists():
        return 0
    with connect(path, read_only=True) as con:
        return int(con.execute("SELECT coalesce(sum(bytes), 0) FROM stored_files WHERE tier = ?", [tier]).fetchone()[0])


def record_move(path: Path, asset_key: str, partition: str, rows: Iterable[CatalogRow], move: dict) -> None:
    """Replace a partition's rows after a lifecycle move and log the move (from, to, when, checksum)."""
    replace_partition(path, asset_key, partition, rows)
    with connect(path) as con:
        con.execute(MOVES_SCHEMA)
        con.execute("INSERT INTO moves VALUES (?, ?, ?, ?, ?, ?)",
                    [asset_key, partition, move["from"], move["to"], move["when"], move["sha256"]])


MOVES_SCHEMA = """
CREATE TABLE IF NOT EXISTS moves (
    asset_key VARCHAR, partition VARCHAR, from_tier VARCHAR, to_tier VARCHAR, moved_at TIMESTAMPTZ, sha256 VARCHAR
)
"""


PINS_SCHEMA = "CREATE TABLE IF NOT EXISTS pinned_plates (plate VARCHAR PRIMARY KEY, pinned_at TIMESTAMPTZ, reason VARCHAR)"


def pin(path: Path, plate: str, reason: str) -> None:
    with connect(path) as con:
        con.execute(PINS_SCHEMA)
        con.execute("INSERT OR REPLACE INTO pinned_plates VALUES (?, ?, ?)", [plate, datetime.now(timezone.utc), reason])


def unpin(path: Path, plate: str) -> None:
    with connect(path) as con:
        con.execute(PINS_SCHEMA)
        con.execute("DELETE FROM pinned_plates WHERE plate = ?", [plate])


def pinned(path: Path) -> set[str]:
    if not path.exists():
        return set()
    with connect(path) as con:
        con.execute(PINS_SCHEMA)
        return {row[0] for row in con.execute("SELECT plate FROM pinned_plates").fetchall()}


def last_materialized(path: Path) -> dict[str, datetime]:
    """Per plate, when any of its levels was last written (what "active" means for the lifecycle)."""
    if not path.exists():
        return {}
    with connect(path, read_only=True) as con:
        rows = con.execute("SELECT plate, max(created) FROM stored_files WHERE plate IS NOT NULL GROUP BY plate").fetchall()
    return {plate: created for plate, created in rows}


DEPOSITS_SCHEMA = """
CREATE TABLE IF NOT EXISTS deposits (
    deposit_id VARCHAR PRIMARY KEY, target VARCHAR, created TIMESTAMPTZ, who VARCHAR, tier VARCHAR, uri VARCHAR,
    plates VARCHAR, levels VARCHAR, license VARCHAR, files BIGINT, bytes BIGINT, sha256 VARCHAR, uploaded VARCHAR
);
CREATE TABLE IF NOT EXISTS deposit_files (
    deposit_id VARCHAR, relpath VARCHAR, bytes BIGINT, sha256 VARCHAR, made_from VARCHAR,
    PRIMARY KEY (deposit_id, relpath)
)
"""


def record_deposit(path: Path, tier: str, record: dict, files: list[tuple[str, int, str]]) -> None:
    """A deposit built for publication (`mdp publish`): what, when, target, which files with their sha256."""
    made_from = {s["relpath"]: s["made_from"] for s in record.get("sources") or []}
    with connect(path) as con:
        con.execute(DEPOSITS_SCHEMA)
        con.execute("BEGIN")
        con.execute("DELETE FROM deposit_files WHERE deposit_id = ?", [record["deposit_id"]])
        con.execute("INSERT OR REPLACE INTO deposits VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [record["deposit_id"], record["target"], record["created"], record["who"], tier, record["uri"],
                     ", ".join(record["plates"]), ", ".join(record["levels"]), record["license"], len(files),
                     sum(size for _, size, _ in files), record["provenance"]["outputs"]["sha256"], None])
        con.executemany("INSERT INTO deposit_files VALUES (?, ?, ?, ?, ?)",
                        [(record["deposit_id"], relpath, size, digest, made_from.get(relpath, "written by mdp publish"))
                         for relpath, size, digest in files])
        con.execute("COMMIT")


def record_upload(path: Path, deposit_id: str, uploaded: dict) -> None:
    """Where a deposit was uploaded (the service's id, links, state), beside its row."""
    with connect(path) as con:
        con.execute(DEPOSITS_SCHEMA)
        con.execute("UPDATE deposits SET uploaded = ? WHERE deposit_id = ?", [json.dumps(uploaded), deposit_id])


def has_deposits(path: Path) -> bool:
    if not path.exists():
        return False
    with connect(path, read_only=True) as con:
        return bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'deposits'")
                    .fetchone()[0])


def query(path: Path, sql: str) -> tuple[list[str], list[tuple]]:
    """Run a person's SQL over the catalog: read-only, and with no access to any other file (DuckDB's external
    access off and locked, so `read_csv('/etc/passwd')` or `COPY ... TO` fail)."""
    with connect(path, read_only=True) as con:
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        try:
            result = con.execute(sql)
        except duckdb.Error as exc:
            raise MdpError(f"catalog query refused or failed: {str(exc).splitlines()[0][:300]}", path=path) from None
        if result.description is None:
            return [], []
        return [d[0] for d in result.description], result.fetchall()
