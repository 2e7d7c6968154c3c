"""Named fault points for the fault-injection tests: a real crash at an exact point of a write, replace,
lifecycle move or catalog update.

`fault_point(name)` does nothing unless the environment variable MDP_FAULT names that point when it is
called (read at call time, never at import); then the process kills itself with SIGKILL, as an operator's
`kill -9` or a power cut would: no cleanup, no `finally`, no exit handlers. Every point is listed in POINTS,
so the suite injects a fault at each one.
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "MDP_FAULT"

POINTS = {
    "write.staged": "a step's output is staged and its partition record written, before it enters the tier",
    "write.partial": "the new copy is whole under its hidden temporary name, before anything is replaced",
    "replace.parked": "the old partition folder is parked as .old-*, before the new one is renamed into place",
    "replace.renamed": "the new partition is in place, before the parked old one is removed",
    "write.uncommitted": "a git, dvc or git-lfs tier's new partition is in place, before it is committed",
    "write.tiered": "the new partition is stored, before older copies in later tiers are removed",
    "write.before_catalog": "the tiers hold the new partition, before the catalog rows are replaced",
    "catalog.uncommitted": "inside the catalog transaction: old rows deleted, new ones inserted, not committed",
    "move.copied": "a lifecycle copy is whole and verified in the next tier, before the catalog records it",
    "move.cataloged": "the catalog records the move, before the source copy is deleted",
    "delete.hidden": "a deleted partition's folder is renamed out of sight, before it is removed",
    "release.marked": "a transient partition is marked released, before its data files are deleted",
}


def fault_point(name: str) -> None:
    """Die here, at once and uncleanly, when MDP_FAULT names this point."""
    if name not in POINTS:
        raise ValueError(f"unknown fault point {name!r}")
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
