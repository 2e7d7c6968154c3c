"""The service code location: Postgres instance, S3 landing zone, every level in the object store, every step
in the run worker's process (docker compose and deploy/local-stack.sh). The deployment is the `mdp.yaml`
that `MDP_CONFIG` names (deploy/mdp.yaml)."""

import dagster as dg

from mdp_assets.config import load_deployment
from mdp_assets.definitions import build_definitions


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(load_deployment())
