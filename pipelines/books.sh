#!/usr/bin/env bash
# Books: every file of CORPUS is one document (--group file); tokenize -> train -> evaluate.
#
#   pipelines/books.sh CORPUS RECIPE WORKDIR
#   e.g. pipelines/books.sh /data/gutenberg recipes/book_1m.yaml runs/books
#
# For cron and batch jobs: a lock (a second run exits at once with code 75), a log per run in
# WORKDIR/logs/, exit codes passed through. Details and environment: pipelines/_batch.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$ROOT/pipelines/_lib.sh"
. "$ROOT/pipelines/_batch.sh"
batch_pipeline file books.sh "$@"
