# mdp: set-up and everyday commands. See README.md.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MDP_HOME ?= $(CURDIR)/.mdp
# The deployment every command, the UI and the tests build from (its paths resolve against its own folder).
export MDP_CONFIG ?= $(CURDIR)/mdp.yaml
export DAGSTER_HOME ?= $(MDP_HOME)/dagster_home

CELLPROFILER_ENV ?= $(MDP_HOME)/cellprofiler
VERSIONED_TOOLS_ENV ?= $(MDP_HOME)/versioned

.PHONY: install demo dev test cellprofiler versioned-tools system-packages stack-start stack-stop clean-demo

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "mdp needs Python >= 3.11; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m pip check
	touch $@

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml mdp.yaml | install
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/mdp config instance > $@

## demo: demo plates through every level on the embedded default (no servers), then a summary
demo: install $(DAGSTER_HOME)/dagster.yaml
	@$(MAKE) --no-print-directory cellprofiler || echo "mdp: CellProfiler cannot be built on this machine; the demo uses the built-in engine"
	$(BIN)/mdp demo

## dev: the Dagster UI on http://127.0.0.1:3000 over the same instance and data
dev: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

## cellprofiler: the headless CellProfiler 4.2.8.1 environment (Python 3.9, Java), idempotent
cellprofiler:
	deploy/cellprofiler/build-env.sh $(CELLPROFILER_ENV)

## versioned-tools: dvc + dvc-s3 (the dvc tier) and giftless (the git-lfs tier's test server), own venv, idempotent
versioned-tools:
	deploy/versioned/build-env.sh $(VERSIONED_TOOLS_ENV)

## test: the whole test suite (slow tests included; the service tests need Postgres and Chromium)
test: install system-packages versioned-tools
	$(BIN)/python -m pytest

## system-packages: Debian's postgresql, chromium, chromium-driver, slurm, munge and git-lfs, when missing (as root)
system-packages:
	deploy/system-packages.sh

## stack-start / stack-stop: the service on this machine without containers (deploy/README.md)
stack-start: install
	deploy/local-stack.sh start

stack-stop:
	deploy/local-stack.sh stop

clean-demo:
	rm -rf $(MDP_HOME)
