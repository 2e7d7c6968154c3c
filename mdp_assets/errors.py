"""The one root exception type of mdp.

Every error mdp raises on purpose is an MdpError whose message names the file (or plate, or asset)
and the problem, so a data manager can act on it without reading a traceback.
"""

from __future__ import annotations

from pathlib import Path


class MdpError(Exception):
    """Root of every error mdp raises on purpose."""

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        self.path = str(path) if path is not None else None
        super().__init__(f"{self.path}: {message}" if self.path else message)
