#!/usr/bin/env bash
# Build the headless CellProfiler 4.2.8.1 environment: its own Python 3.9 virtual environment (CellProfiler
# 4.2 does not install on 3.11), Java for python-javabridge/bioformats, no wxPython (no GUI).
# Idempotent: an environment that already imports cellprofiler 4.2.8.1 is left as it is.
# Usage: deploy/cellprofiler/build-env.sh [DEST]   (default: .mdp/cellprofiler)
set -euo pipefail
DEST="${1:-.mdp/cellprofiler}"
CP_VERSION=4.2.8.1

if [ -x "$DEST/bin/python" ] && "$DEST/bin/python" -c "import cellprofiler, cellprofiler_core, dagster_pipes; assert cellprofiler.__version__ == '$CP_VERSION'" 2>/dev/null; then
    echo "cellprofiler $CP_VERSION already built in $DEST"; exit 0
fi

PY39=""
for candidate in "${PYTHON39:-}" "$(command -v pyenv >/dev/null 2>&1 && echo "$(pyenv root)/versions/3.9.18/bin/python")" "$(command -v python3.9 || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 9))'; then PY39="$candidate"; break; fi
done
[ -n "$PY39" ] || { echo "cellprofiler: no Python 3.9 found (set PYTHON39=/path/to/python3.9)" >&2; exit 2; }

if ! command -v javac >/dev/null 2>&1 || ! dpkg -s default-libmysqlclient-dev >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jdk-headless default-libmysqlclient-dev pkg-config >/dev/null
    else
        echo "cellprofiler: needs a JDK (javac) and libmysqlclient headers (apt-get install default-jdk-headless default-libmysqlclient-dev)" >&2; exit 2
    fi
fi
export JAVA_HOME="$(dirname "$(dirname "$(readlink -f "$(command -v javac)")")")"

rm -rf "$DEST.partial"
"$PY39" -m venv "$DEST.partial"
PIP="$DEST.partial/bin/python -m pip install --quiet --disable-pip-version-check"
$PIP --upgrade "pip<25"
$PIP numpy==1.23.5 "cython<3" "setuptools<70" wheel
$PIP --no-build-isolation python-javabridge==4.0.3
# CellProfiler's and cellprofiler-core's own pins, without wxPython (headless).
$PIP "numpy==1.23.5" "scipy==1.9.0" "scikit-image==0.18.3" "tifffile<2022.4.22" "centrosome>=1.2.3,<1.3" \
     "mysqlclient==1.4.6" "python-bioformats>=4.0.7,<5" "prokaryote==2.4.4" "h5py~=3.7.0" "docutils==0.15.2" \
     "pyzmq~=22.3" "sentry-sdk==0.18.0" "boto3>=1.12.28" "imageio>=2.5,<2.28" "inflect>=2.1,<7" "Jinja2>=2.11.2" \
     "joblib>=0.13" "mahotas>=1.4" "matplotlib>=3.1.3,<3.8" "Pillow>=7.1.0,<10" "requests>=2.22" \
     "scikit-learn>=0.20,<1" "six" "psutil>=5.7.0" "dagster-pipes==1.12.1"
$PIP --no-deps "cellprofiler-core==$CP_VERSION" "cellprofiler==$CP_VERSION"
"$DEST.partial/bin/python" -c "import cellprofiler, cellprofiler_core, dagster_pipes; print('cellprofiler', cellprofiler.__version__)"
rm -rf "$DEST" && mv "$DEST.partial" "$DEST"
# The venv's scripts name the .partial folder; CellProfiler is always run as `$DEST/bin/python -m ...`.
echo "cellprofiler $CP_VERSION built in $DEST (JAVA_HOME=$JAVA_HOME)"
