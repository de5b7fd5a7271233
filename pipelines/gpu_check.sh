#!/usr/bin/env bash
# The CUDA path end to end on one NVIDIA GPU, in about 3 minutes (a budget of 180 s by default,
# each step under its own time limit), printed as one table:
#   pytest -m gpu over tests/; `longnet bench attention` (CUDA, bf16, D = 64, fwd+bwd) at 32K,
#   256K and 1M beside dense SDPA flash attention up to 256K, in attained TFLOP/s and their
#   ratio; one paper_base layer fwd+bwd at 1M tokens with its peak memory; 10 training steps of
#   recipes/paper_base.yaml as a fraction of the bf16 matmul peak measured in the same run;
#   `longnet eval` at a 1M-token context on a tiny model whose reach is 1M, trained a few steps
#   on a corpus made here. A step past its limit is a FAILED row; a step the budget no longer
#   covers is a "skipped: budget" row.
# Targets printed beside the figures: dilated >= 0.5x dense TFLOP/s at 32K; paper_base >= 0.35
# of the bf16 peak.
#
#   pipelines/gpu_check.sh [--work DIR] [--steps tests,attention,layer,train,eval]
#                          [--budget-s SECONDS] [--json FILE]
#
# Runs tools/gpu_check.py from a checkout (PYTHONPATH=.; the tool is not part of the installed
# package), needs no network and no optional extras; without pytest the gpu tests are a skipped
# row. Logs every command's output to DIR/gpu_check.log (default runs/gpu_check).
# Environment: LONGNET_PYTHON, the python with torch (default: python3).
# Exit codes: 0 every step ran (a figure below its target is shown, not fatal), 1 a step failed,
# 2 no CUDA device here (one line on stderr) or bad usage.
set -uo pipefail

PIPELINE=gpu_check.sh
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# shellcheck source=pipelines/_lib.sh
. "$ROOT/pipelines/_lib.sh"
require_longnet # a python without torch: exit 2 with one line, not a traceback
exec "$LONGNET_PYTHON" "$ROOT/tools/gpu_check.py" "$@"
