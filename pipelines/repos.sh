#!/usr/bin/env bash
# Repositories: every immediate subdirectory of CORPUS is one document, its files concatenated
# after '==> path <==' headers (--group repo); tokenize -> train -> evaluate.
#
#   pipelines/repos.sh CORPUS RECIPE WORKDIR
#   e.g. pipelines/repos.sh /data/repos recipes/repo_256k.yaml runs/repos
#
# For cron and batch jobs: a lock (a second run exits at once with code 75), a log per run in
# WORKDIR/logs/, exit codes passed through. Details and environment: pipelines/_batch.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$ROOT/pipelines/_lib.sh"
. "$ROOT/pipelines/_batch.sh"
batch_pipeline repo repos.sh "$@"
