#!/usr/bin/env bash
# Build the versioned-tier tools in their own virtual environment: DVC with its S3 remote (the `dvc` tier runs
# its CLI) and giftless, a Git LFS server (the `git-lfs` tier's tests run it on 127.0.0.1; a lab may too).
# Not in mdp's own venv: dvc-s3 needs aiobotocore, which pins botocore to an older minor release than the
# boto3 dagster-aws and moto use, and giftless pins Flask 2.3 where moto's server wants Flask 3.
# Idempotent: an environment that already has these versions is left as it is.
# Usage: deploy/versioned/build-env.sh [DEST]   (default: .mdp/versioned)
set -euo pipefail
DEST="$(realpath -m "${1:-.mdp/versioned}")"
PYTHON="${PYTHON:-python3}"
DVC=3.67.1
DVC_S3=3.3.0
GIFTLESS=0.6.2

check() {
    [ -x "$1/bin/dvc" ] && [ -x "$1/bin/python" ] &&
        "$1/bin/python" - "$DVC" "$DVC_S3" "$GIFTLESS" <<'PY'
import sys
from importlib.metadata import version
# Every module the tests' server uses: their imports are the dependencies giftless's wheel does not declare.
import giftless.app, giftless.auth.allow_anon, giftless.storage.local_storage, giftless.transfer.basic_streaming  # noqa
want = dict(zip(("dvc", "dvc-s3", "giftless"), sys.argv[1:]))
sys.exit(0 if all(version(name) == v for name, v in want.items()) else 1)
PY
}

if check "$DEST" 2>/dev/null; then
    echo "versioned-tier tools (dvc $DVC, dvc-s3 $DVC_S3, giftless $GIFTLESS) already built in $DEST"; exit 0
fi
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "needs Python >= 3.10 (giftless); set PYTHON=")'

rm -rf "$DEST.partial"
"$PYTHON" -m venv "$DEST.partial"
PIP="$DEST.partial/bin/python -m pip install --quiet --disable-pip-version-check"
$PIP --upgrade pip
$PIP "dvc==$DVC" "dvc-s3==$DVC_S3"
# giftless's wheel declares no dependencies: these are its requirements/main.in (local storage only: no
# cloud backends), at the versions its own lock file pins (python-dotenv newer: DVC's pydantic-settings needs it).
$PIP "giftless==$GIFTLESS" "figcan==0.0.4" "flask==2.3.3" "flask-classful==0.16.0" "flask-marshmallow==0.15.0" \
     "marshmallow==3.21.1" "webargs==8.4.0" "werkzeug==3.0.3" "PyJWT==2.8.0" "python-dotenv>=1.2.2,<2" \
     "python-dateutil>=2.8,<3" "pyyaml>=6,<7" "cachetools>=5.3,<6" "typing-extensions>=4.9" "importlib-metadata"
"$DEST.partial/bin/python" -m pip check
rm -rf "$DEST" && mv "$DEST.partial" "$DEST"
# The venv's scripts name the .partial folder in their #! line: rewrite them for the final path.
for script in "$DEST"/bin/*; do
    if [ -f "$script" ] && head -c 200 "$script" | grep -q "$DEST.partial"; then
        sed -i "1s|$DEST.partial|$DEST|" "$script"
    fi
done
sed -i "s|$DEST.partial|$DEST|g" "$DEST/bin/activate" "$DEST/pyvenv.cfg" 2>/dev/null || true
check "$DEST"
echo "versioned-tier tools built in $DEST: $("$DEST/bin/dvc" --version | head -1) (dvc), giftless $GIFTLESS"
