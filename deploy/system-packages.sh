#!/usr/bin/env bash
# Debian packages the service tests use: Postgres (the local stack's database), headless Chromium with its
# driver (the browser test), SLURM with munge (the one-node cluster of deploy/slurm/cluster.sh), and the Git LFS client (the git-lfs tier). Installs what is missing when run as root with apt; otherwise says what to install.
set -euo pipefail
need=()
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1 || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v slurmctld >/dev/null 2>&1 || need+=(slurmctld)
command -v slurmd >/dev/null 2>&1 || need+=(slurmd)
command -v sbatch >/dev/null 2>&1 || need+=(slurm-client)
command -v munged >/dev/null 2>&1 || need+=(munge)
command -v git-lfs >/dev/null 2>&1 || need+=(git-lfs)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
    echo "mdp tests need: ${need[*]} (apt-get install ${need[*]})" >&2; exit 2
fi
