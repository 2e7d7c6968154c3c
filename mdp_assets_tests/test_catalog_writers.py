"""The catalog under many writers: processes finishing at once each write their partitions' rows, readers read
meanwhile, and afterwards every row is there exactly once; a writer waits for the lock instead of failing."""

from __future__ import annotations

import multiprocessing
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from mdp_assets.errors import MdpError
from mdp_assets.storage import catalog

WRITERS = 12
WRITES = 3
FILES = 3


def _rows(asset: str, partition: str, writer: int) -> list[catalog.CatalogRow]:
    now = datetime.now(timezone.utc)
    return [catalog.CatalogRow(partition, asset, asset, partition, "hot", f"file:///{asset}/{partition}/f{n}",
                               f"f{n}.parquet", 100 + n, f"{writer:02d}{'0' * 62}", now, None, "v1", "d1")
            for n in range(FILES)]


def _writer(path: str, writer: int, barrier) -> None:
    barrier.wait()  # every writer starts at once
    for level in range(WRITES):
        asset = f"level_{level}"
        catalog.replace_partition(Path(path), asset, f"PLATE_{writer:02d}", _rows(asset, f"PLATE_{writer:02d}", writer))
        # One partition every writer replaces (a level re-made by several runs): one writer's rows remain.
        catalog.replace_partition(Path(path), "shared", "ALL", _rows("shared", "ALL", writer))
        catalog.partition_files(Path(path))  # a reader among the writers


@pytest.mark.slow
def test_many_processes_writing_at_once_leave_every_row_exactly_once(tmp_path: Path):
    path = tmp_path / "catalog.duckdb"
    context = multiprocessing.get_context("forkserver")
    barrier = context.Barrier(WRITERS)
    processes = [context.Process(target=_writer, args=(str(path), w, barrier)) for w in range(WRITERS)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    assert [p.exitcode for p in processes] == [0] * WRITERS, "a writer failed"
    _, rows = catalog.query(path, "SELECT asset_key, partition, relpath, sha256 FROM stored_files")
    per_plate = [r for r in rows if r[0] != "shared"]
    assert len(per_plate) == len(set(per_plate)) == WRITERS * WRITES * FILES
    assert {(a, p) for a, p, _, _ in per_plate} == {(f"level_{lv}", f"PLATE_{w:02d}")
                                                      for lv in range(WRITES) for w in range(WRITERS)}
    shared = [r for r in rows if r[0] == "shared"]
    assert len(shared) == FILES and len({sha for *_, sha in shared}) == 1, "one writer's rows, each once"


def _hold_lock(path: str, seconds: float, held) -> None:
    with catalog.catalog_lock(Path(path), exclusive=True):
        held.set()
        time.sleep(seconds)


def test_a_writer_waits_for_another_writer_and_gives_up_only_after_its_wait(tmp_path: Path):
    path = tmp_path / "catalog.duckdb"
    context = multiprocessing.get_context("forkserver")
    held = context.Event()
    holder = context.Process(target=_hold_lock, args=(str(path), 2.0, held))
    holder.start()
    assert held.wait(60)
    with pytest.raises(MdpError, match="stayed locked"):
        with catalog.connect(path, wait_s=0.3):
            pass
    started = time.monotonic()
    catalog.replace_partition(path, "level", "P", _rows("level", "P", 1))
    assert time.monotonic() - started > 0.5, "it waited for the holder"
    holder.join(30)
    assert catalog.partition_files(path)["level/P"], "and then wrote"
