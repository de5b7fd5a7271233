#!/usr/bin/env bash
# The quickstart: the built-in corpus (this interpreter's standard library, each package one
# long document) -> a small LongNet trained on 8K-token sequences -> perplexity by position on
# held-out packages (5% of the packages, chosen by a hash of their content, never trained on)
# -> a short continuation of a held-out package, its prompt ending mid-segment.
#
#   pipelines/quickstart.sh [WORKDIR]          (default: runs/quickstart)
#
# Writes WORKDIR/data (token shards), WORKDIR/run (checkpoints, metrics.jsonl), WORKDIR/eval.json
# and WORKDIR/eval.png (when matplotlib is installed), and prints the perplexity table and
# the model's continuation of the first held-out document.
# Safe to re-run: tokenize sees its manifest is current, train sees the run is finished (or
# resumes an interrupted one), and only the evaluation and the continuation run again (seconds).
#
# Environment, all optional (the defaults are the quickstart; smaller values shrink it):
#   LONGNET_PYTHON                   python that has longnet installed (default: python3)
#   LONGNET_QUICKSTART_STEPS         train.steps (default: the recipe's, 100; warm-up 10%)
#   LONGNET_QUICKSTART_SEQ_LEN       train.seq_len (default: the recipe's, 8K)
#   LONGNET_QUICKSTART_CONTEXT       eval --context and --min-tokens (default: SEQ_LEN, else 8K)
#   LONGNET_QUICKSTART_DOCS          held-out documents evaluated (default 4)
#   LONGNET_QUICKSTART_PROMPT_TOKENS tokens of the held-out document to continue (default 1500:
#                                    mid-segment in every branch)
#   LONGNET_QUICKSTART_NEW_TOKENS    tokens generated (default 48)
#   LONGNET_QUICKSTART_HOLDOUT       fraction of the documents held out (default 0.05)
#   LONGNET_QUICKSTART_VOCAB_SIZE    tokenizer vocabulary (default 8192)
#   LONGNET_QUICKSTART_SAMPLE_BYTES  text sampled to train the tokenizer (default 32M)
#   LONGNET_QUICKSTART_INCLUDE       files of the standard library to read, globs separated by
#                                    spaces (default "*.py"; e.g. "json/*.py email/*.py")
#   LONGNET_QUICKSTART_TOKENIZE_ARGS more tokenize arguments, e.g. "--workers 1"
#   LONGNET_QUICKSTART_TRAIN_ARGS    more train arguments, e.g. "--set model.depth=2"
# Exit codes: those of the failing step (1 failed, 2 bad usage or input).
set -euo pipefail

PIPELINE=quickstart.sh
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=pipelines/_lib.sh
. "$ROOT/pipelines/_lib.sh"

if [[ $# -gt 1 || ${1:-} == -* ]]; then
    echo "usage: pipelines/quickstart.sh [WORKDIR]   (default: runs/quickstart)" >&2
    exit 2
fi
WORKDIR=${1:-runs/quickstart}
STEPS=${LONGNET_QUICKSTART_STEPS:-}
SEQ_LEN=${LONGNET_QUICKSTART_SEQ_LEN:-}
CONTEXT=${LONGNET_QUICKSTART_CONTEXT:-${SEQ_LEN:-8K}}
DOCS=${LONGNET_QUICKSTART_DOCS:-4}
PROMPT_TOKENS=${LONGNET_QUICKSTART_PROMPT_TOKENS:-1500}
NEW_TOKENS=${LONGNET_QUICKSTART_NEW_TOKENS:-48}
HOLDOUT=${LONGNET_QUICKSTART_HOLDOUT:-0.05}
VOCAB_SIZE=${LONGNET_QUICKSTART_VOCAB_SIZE:-8192}
SAMPLE_BYTES=${LONGNET_QUICKSTART_SAMPLE_BYTES:-32M}
read -r -a INCLUDE <<<"${LONGNET_QUICKSTART_INCLUDE:-*.py}"
read -r -a TOKENIZE_ARGS <<<"${LONGNET_QUICKSTART_TOKENIZE_ARGS:-}"
read -r -a TRAIN_ARGS <<<"${LONGNET_QUICKSTART_TRAIN_ARGS:-}"

require_longnet
mkdir -p "$WORKDIR"
started=$SECONDS

step "[1/4] tokenize the standard library of $LONGNET_PYTHON into $WORKDIR/data"
include=()
for pattern in "${INCLUDE[@]}"; do
    include+=(--include "$pattern")
done
longnet tokenize --stdlib --group repo "${include[@]}" --vocab-size "$VOCAB_SIZE" \
    --holdout "$HOLDOUT" --sample-bytes "$SAMPLE_BYTES" --out "$WORKDIR/data" ${TOKENIZE_ARGS[@]+"${TOKENIZE_ARGS[@]}"}

step "[2/4] train recipes/quickstart.yaml into $WORKDIR/run"
overrides=(--set "data.shards=$WORKDIR/data")
if [[ -n $STEPS ]]; then
    overrides+=(--set "train.steps=$STEPS" --set "train.warmup_steps=$((STEPS / 10))")
fi
if [[ -n $SEQ_LEN ]]; then
    overrides+=(--set "train.seq_len=$SEQ_LEN")
fi
longnet train "$ROOT/recipes/quickstart.yaml" --out "$WORKDIR/run" "${overrides[@]}" \
    ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"}

step "[3/4] evaluate on held-out documents: perplexity by position, $CONTEXT tokens of context"
plot=()
if have_matplotlib; then
    plot=(--plot "$WORKDIR/eval.png")
else
    echo "$PIPELINE: matplotlib is not installed: no plot (pip install '.[plot]' adds it)" >&2
fi
longnet eval "$WORKDIR/run" --data "$WORKDIR/data" --split heldout --context "$CONTEXT" \
    --min-tokens "$CONTEXT" --docs "$DOCS" --json "$WORKDIR/eval.json" ${plot[@]+"${plot[@]}"}

step "[4/4] continue the first held-out document: its first $PROMPT_TOKENS tokens, then $NEW_TOKENS sampled"
echo "--- the model writes ---"
longnet generate "$WORKDIR/run" --doc heldout --data "$WORKDIR/data" \
    --prompt-tokens "$PROMPT_TOKENS" --max-new-tokens "$NEW_TOKENS" --seed 0
echo "---"

echo "$PIPELINE: done in $((SECONDS - started)) s: $WORKDIR/eval.json${plot[*]:+, $WORKDIR/eval.png}; list runs with: longnet runs --runs-dir $WORKDIR" >&2
