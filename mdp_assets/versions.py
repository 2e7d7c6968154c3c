"""Code versions of processing steps: the engine revision plus a hash of the step's parameters.

Dagster compares an asset's code_version with the one its latest materialization recorded, so
changing a parameter (or bumping the engine revision) marks that level stale.
"""

from __future__ import annotations

import json
from typing import Any

from mdp_assets.checksums import sha256_text

BUILTIN_ENGINE_REVISION = "builtin-1"


def step_version(step: str, parameters: dict[str, Any], engine: str = BUILTIN_ENGINE_REVISION) -> str:
    payload = json.dumps([step, engine, [parameters]], sort_keys=True, default=str)
    return f"{engine}-{sha256_text(payload)[:12]}"
