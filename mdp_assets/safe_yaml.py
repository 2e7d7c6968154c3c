"""YAML as mdp accepts it from people: plain data, bounded in size, no anchors or aliases.

Manifests and configuration files are written by hand and may come from outside the lab; an alias bomb
("billion laughs") or a huge file must be refused before it is expanded, with the file named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mdp_assets.errors import MdpError


def load_yaml(text: str, path: Path | None, what: str, max_bytes: int) -> Any:
    """The data in `text`; an MdpError naming `path` if it is too large, not YAML, or uses anchors/aliases."""
    if len(text.encode("utf-8", errors="replace")) > max_bytes:
        raise MdpError(f"{what} is over {max_bytes} bytes; refusing to read it", path=path)
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise MdpError(f"{what}: YAML anchors and aliases are not allowed "
                               f"(line {event.start_mark.line + 1})", path=path)
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MdpError(f"{what} is not valid YAML: {_short(exc)}", path=path) from None


def _short(error: yaml.YAMLError, limit: int = 300) -> str:
    text = str(error)
    return text if len(text) <= limit else text[:limit] + " ..."
