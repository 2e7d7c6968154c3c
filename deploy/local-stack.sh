#!/usr/bin/env bash
# The production-like stack on this machine, without containers (see tools/local_stack.py):
# Postgres, an S3 server, the code server, the daemon and the webserver as separate processes.
#   deploy/local-stack.sh start|stop|status|env [--state DIR] [--quiet-period SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" -m tools.local_stack "$@"
