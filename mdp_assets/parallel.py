"""Sites in parallel processes: the one helper every per-site level uses (ingest, image QC, illumination,
correction, built-in segmentation).

`map_sites(fn, items, workers)` runs `fn` over `items` in up to `workers` processes and returns the results
in the order of `items`, so a level's output does not depend on how many processes made it; `imap_sites`
yields them in that order as they come, at most two per worker waiting (bounded memory for large results). `workers` 0 means one process per
core this process may use; 1, or a single item, runs in this process with no pool. `fn` and the items must be
picklable (module-level functions, `functools.partial` of them).

Processes start from a fork server (never by forking the caller, whose Dagster threads may hold locks). The
server is started once per process and imports every module in SITE_MODULES first, so each level's workers are
forked with their code loaded (importing it in every worker cost about 2 s a level). An exception in a worker
is raised here as it was raised there; a worker that died (killed, out of memory) is an MdpError.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from mdp_assets.errors import MdpError

# The modules whose functions run in site workers (checked by test_parallel_sites). Imported by the fork server
# when it starts: it starts once per process, so the first level's module alone would be loaded otherwise.
SITE_MODULES = (
    "mdp_assets.plates.inventory",
    "mdp_assets.plates.pixels",
    "mdp_assets.science.image_qc",
    "mdp_assets.science.illumination",
    "mdp_assets.science.segmentation",
    "mdp_assets.science.features",
)

T = TypeVar("T")
R = TypeVar("R")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which cgroups and SLURM set), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_workers(workers: int) -> int:
    """The number of processes `workers` means: itself, or one per available core for 0."""
    if workers < 0:
        raise MdpError(f"workers must be 0 (one per core) or more, got {workers}")
    return workers or available_cores()


def imap_sites(fn: Callable[[T], R], items: Iterable[T], workers: int = 0) -> Iterator[R]:
    """`fn(item)` for every item, yielded in input order, computed in up to `workers` processes."""
    items = list(items)
    count = min(resolve_workers(workers), len(items))
    if count <= 1:
        for item in items:
            yield fn(item)
        return
    context = multiprocessing.get_context("forkserver")
    module = getattr(getattr(fn, "func", fn), "__module__", None)
    context.set_forkserver_preload(list(dict.fromkeys(m for m in (__name__, *SITE_MODULES, module)
                                                      if m and m != "__main__")))
    pool = ProcessPoolExecutor(max_workers=count, mp_context=context)
    waiting: deque = deque()
    try:
        # At most two results per worker wait at once: memory follows the workers, not the items.
        for item in items:
            waiting.append(pool.submit(fn, item))
            if len(waiting) >= 2 * count:
                yield waiting.popleft().result()
        while waiting:
            yield waiting.popleft().result()
    except BrokenProcessPool as exc:
        raise MdpError(f"a worker process died (killed, or out of memory?) while running {_name(fn)} over "
                       f"{len(items)} items in {count} processes: {exc}") from exc
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def map_sites(fn: Callable[[T], R], items: Iterable[T], workers: int = 0) -> list[R]:
    """`fn(item)` for every item, in input order, computed in up to `workers` processes (0: one per core)."""
    return list(imap_sites(fn, items, workers))


def _name(fn: Callable) -> str:
    return getattr(getattr(fn, "func", fn), "__qualname__", repr(fn))
