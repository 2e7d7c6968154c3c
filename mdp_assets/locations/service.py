"""The service code location: Postgres instance, S3 landing zone, every level in the object store, every step
in the run worker's process (docker compose and deploy/local-stack.sh)."""

from mdp_assets.definitions import service_definitions

defs = service_definitions()
