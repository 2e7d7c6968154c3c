"""The process the fault-injection suite kills: it does one real piece of mdp's work on a test deployment
(MDP_CONFIG) and its persistent instance, and MDP_FAULT makes it SIGKILL itself at the named point.

  python -m mdp_assets_tests.fault_driver write PLATE LEVEL...   plate_job for those levels, in this process
  python -m mdp_assets_tests.fault_driver lifecycle AS_OF        the lifecycle as of an ISO time
  python -m mdp_assets_tests.fault_driver release PLATE          release the plate's consumed transient levels
"""

from __future__ import annotations

import sys
from datetime import datetime

from mdp_assets.config import load_deployment
from mdp_assets.definitions import build_definitions
from mdp_assets.services import runs
from mdp_assets.services.lifecycle import release_consumed, run_lifecycle
from mdp_assets.services.reprocess import consumers_of
from mdp_assets.storage.resource import MdpStorage


def main(argv: list[str]) -> int:
    deployment = load_deployment(None)
    storage = MdpStorage.from_deployment(deployment)
    instance = runs.instance_for(deployment)
    command, *rest = argv
    if command == "write":
        plate, *levels = rest
        defs = build_definitions(deployment, storage=storage)
        result = defs.resolve_job_def("plate_job").execute_in_process(
            instance=instance, partition_key=plate, op_selection=levels, raise_on_error=False)
        return 0 if result.success else 1
    if command == "lifecycle":
        report = run_lifecycle(storage, datetime.fromisoformat(rest[0]))
        return 1 if report.failures else 0
    if command == "release":
        defs = build_definitions(deployment, storage=storage)
        release_consumed(instance, storage, consumers_of(defs.assets or []), plates=[rest[0]])
        return 0
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
