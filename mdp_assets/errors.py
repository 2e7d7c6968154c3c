"""The one root exception type of mdp.

Every error mdp raises on purpose is an MdpError whose message names the file (or plate, or asset)
and the problem, so a data manager can act on it without reading a traceback.
"""

from __future__ import annotations

from pathlib import Path


MAX_MESSAGE_CHARS = 8000  # an error quoting a 50 MB file must not carry it into the event log or a sensor tick


def bounded(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]} ... ({len(text) - limit} more characters left out)"


class MdpError(Exception):
    """Root of every error mdp raises on purpose; its message is bounded in size."""

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        self.path = bounded(str(path), 1000) if path is not None else None
        super().__init__(bounded(f"{self.path}: {message}" if self.path else message))
