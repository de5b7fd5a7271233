#!/usr/bin/env bash
# The context study: does a LongNet model read long documents better than a dense one?
#
#   pipelines/context_study.sh [WORKDIR]          (default: runs/context_study)
#
# Tokenizes the built-in corpus once (this interpreter's standard library, each .py file one
# document, a fifth of the documents held out by content hash), trains the three recipes of
# recipes/study/ on the same number of training tokens, and scores them side by side on the
# held-out documents: perplexity on the same final tokens with 2K, 8K and 32K tokens of context
# (the LongNet paper's Table 2), perplexity by position, and the copy probe. Writes
# WORKDIR/study.md (the table), WORKDIR/study.json, WORKDIR/study.png (with matplotlib), and
# prints the table when done.
#
#   dense_2k    full causal attention trained on 2K sequences (the paper's Transformer baseline)
#   longnet_8k  dilated attention trained on 8K sequences, branches reaching 32K
#   dense_8k    full causal attention trained on 8K sequences (the costly upper bound)
#
# Like books.sh: a lock (a second run exits at once with code 75), a log per run in
# WORKDIR/logs/, exit codes passed through (1 failed, 2 bad usage or input, 130/143
# interrupted). Resumable: an interrupted study continues where it stopped; a finished one is a
# no-op that prints its table.
#
# Environment, all optional:
#   LONGNET_PYTHON             python that has longnet installed (default: python3)
#   LONGNET_STUDY_SCALE        cpu (default: about an hour on 2 CPU cores), gpu (about an hour
#                              per model on one modern GPU, ~1B tokens each; give it a corpus
#                              larger than the standard library), or smoke (a minute: checks the
#                              pipeline end to end, its figures mean nothing)
#   LONGNET_STUDY_CORPUS       stdlib (default), site-packages (the installed packages' .py
#                              source: ~200 MB, 62M training tokens) or a corpus directory
#   LONGNET_STUDY_STEPS        train.steps of every model (same tokens per step for all three)
#   LONGNET_STUDY_HOLDOUT      tokenize --holdout (default 0.2: on CPython 3.11's standard
#                              library, 10 held-out files of at least 32K tokens)
#   LONGNET_STUDY_VOCAB_SIZE   tokenizer vocabulary (default 2048)
#   LONGNET_STUDY_CONTEXTS     eval --context (default 2K,8K,32K)
#   LONGNET_STUDY_DISTANCES    copy-probe distances (default 512,2K,8K,16K)
#   LONGNET_STUDY_DOCS         held-out documents scored (default: all that are long enough)
#   LONGNET_STUDY_TRAIN_ARGS   more train arguments for all three, e.g. "--set train.threads=2"
#   LONGNET_DEVICES            train --devices (processes per node: N, or auto = one per GPU);
#                              unset: longnet train's default
set -euo pipefail

PIPELINE=context_study.sh
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=pipelines/_lib.sh
. "$ROOT/pipelines/_lib.sh"
# shellcheck source=pipelines/_batch.sh
. "$ROOT/pipelines/_batch.sh"

# The whole script is one function, read completely before it runs: editing or updating this
# file while a study runs (an hour or more) cannot change what the running study executes.
study_main() {
    if [[ $# -gt 1 || ${1:-} == -* ]]; then
        echo "usage: pipelines/context_study.sh [WORKDIR]   (default: runs/context_study)" >&2
        exit 2
    fi
    WORKDIR=${1:-runs/context_study}
    SCALE=${LONGNET_STUDY_SCALE:-cpu}
    RECIPES=(dense_2k longnet_8k dense_8k)

    # Per scale: tokenizer, contexts, distances, and --set overrides (common, then per recipe).
    declare -A RECIPE_SET=([dense_2k]="" [longnet_8k]="" [dense_8k]="")
    COMMON_SET=()
    VOCAB_SIZE=2048
    CONTEXTS=2K,8K,32K
    DISTANCES=512,2K,8K,16K
    INCLUDE=(--include '*.py')
    case $SCALE in
    cpu) ;;
    gpu)
        # ~1B tokens per model: 64K tokens per step (32 x 2K or 8 x 8K), 15,000 steps, bf16
        VOCAB_SIZE=8192
        COMMON_SET=(--set model.dim=512 --set model.depth=6 --set model.heads=8 --set model.dim_head=64
            --set train.precision=bf16 --set train.steps=15000 --set train.warmup_steps=500
            --set train.lr=1e-3 --set checkpoint.every=1000)
        RECIPE_SET=([dense_2k]="train.micro_batch_size=32" [longnet_8k]="train.micro_batch_size=8"
            [dense_8k]="train.micro_batch_size=8")
        ;;
    smoke)
        VOCAB_SIZE=400
        CONTEXTS=32,128,512
        DISTANCES=8,32,128,256
        INCLUDE=(--include 'json/*.py' --include 'csv.py' --include 'email/_*.py' --include 'email/m*.py')
        COMMON_SET=(--set model.dim=32 --set model.depth=1 --set model.heads=2 --set model.dim_head=16
            --set train.steps=3 --set train.warmup_steps=0 --set checkpoint.every=3 --set log.every=1
            --set train.threads=1)
        RECIPE_SET=([dense_2k]="train.seq_len=32 model.segment_lengths=[1K]"
            [longnet_8k]="train.seq_len=128 model.segment_lengths=[32,128,512]"
            [dense_8k]="train.seq_len=128 model.segment_lengths=[1K]")
        ;;
    *)
        echo "$PIPELINE: LONGNET_STUDY_SCALE must be cpu, gpu or smoke, got '$SCALE'" >&2
        exit 2
        ;;
    esac
    VOCAB_SIZE=${LONGNET_STUDY_VOCAB_SIZE:-$VOCAB_SIZE}
    CONTEXTS=${LONGNET_STUDY_CONTEXTS:-$CONTEXTS}
    DISTANCES=${LONGNET_STUDY_DISTANCES:-$DISTANCES}
    HOLDOUT=${LONGNET_STUDY_HOLDOUT:-0.2}
    if [[ -n ${LONGNET_STUDY_STEPS:-} ]]; then
        COMMON_SET+=(--set "train.steps=$LONGNET_STUDY_STEPS"
            --set "train.warmup_steps=$((LONGNET_STUDY_STEPS / 20))")
    fi
    read -r -a TRAIN_ARGS <<<"${LONGNET_STUDY_TRAIN_ARGS:-}"
    if [[ -n ${LONGNET_DEVICES:-} ]]; then
        TRAIN_ARGS+=(--devices "$LONGNET_DEVICES")
    fi
    # The corpus: a built-in one by name (stdlib, site-packages), else a directory as it is.
    case ${LONGNET_STUDY_CORPUS:-stdlib} in
    stdlib) SOURCE=(--stdlib "${INCLUDE[@]}") ;;
    site-packages)
        # smoke: two small packages pytest brings stand in for its standard-library files
        if [[ $SCALE == smoke ]]; then
            INCLUDE=(--include 'iniconfig/*.py' --include 'pluggy/*.py')
        fi
        SOURCE=(--site-packages "${INCLUDE[@]}")
        ;;
    *)
        if [[ ! -d $LONGNET_STUDY_CORPUS ]]; then
            echo "$PIPELINE: LONGNET_STUDY_CORPUS must be stdlib, site-packages or a corpus" \
                "directory, got '$LONGNET_STUDY_CORPUS'" >&2
            exit 2
        fi
        SOURCE=("$LONGNET_STUDY_CORPUS")
        ;;
    esac

    require_longnet
    batch_begin "$WORKDIR"
    echo "$PIPELINE $WORKDIR (scale $SCALE): started $(date '+%Y-%m-%d %H:%M:%S') (pid $$)"
    started=$SECONDS

    CURRENT_STEP=tokenize
    step "[1/5] tokenize ${SOURCE[*]} into $WORKDIR/data (--holdout $HOLDOUT)"
    longnet tokenize "${SOURCE[@]}" --vocab-size "$VOCAB_SIZE" --holdout "$HOLDOUT" \
        --out "$WORKDIR/data" --quiet

    number=2
    for recipe in "${RECIPES[@]}"; do
        CURRENT_STEP="train $recipe"
        step "[$number/5] train recipes/study/$recipe.yaml into $WORKDIR/$recipe"
        overrides=(--set "data.shards=$WORKDIR/data" ${COMMON_SET[@]+"${COMMON_SET[@]}"})
        for setting in ${RECIPE_SET[$recipe]}; do
            overrides+=(--set "$setting")
        done
        longnet train "$ROOT/recipes/study/$recipe.yaml" --out "$WORKDIR/$recipe" --quiet \
            "${overrides[@]}" ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"}
        number=$((number + 1))
    done

    CURRENT_STEP=eval
    runs=()
    for recipe in "${RECIPES[@]}"; do
        runs+=("$WORKDIR/$recipe")
    done
    # A finished study is a no-op: its report is newer than every run's metrics.
    fresh=1
    for run in "${runs[@]}"; do
        if [[ ! $WORKDIR/study.json -nt $run/metrics.jsonl ]]; then
            fresh=0
        fi
    done
    if [[ $fresh == 1 && -f $WORKDIR/study.md ]]; then
        echo "$PIPELINE: the study is up to date ($WORKDIR/study.md)"
    else
        step "[5/5] evaluate side by side on held-out documents: contexts $CONTEXTS, copy probe $DISTANCES"
        plot=()
        if have_matplotlib; then
            plot=(--plot "$WORKDIR/study.png")
        fi
        docs=()
        if [[ -n ${LONGNET_STUDY_DOCS:-} ]]; then
            docs=(--docs "$LONGNET_STUDY_DOCS")
        fi
        longnet eval "${runs[@]}" --data "$WORKDIR/data" --split heldout --context "$CONTEXTS" \
            --probe copy --distances "$DISTANCES" --json "$WORKDIR/eval.json" --quiet \
            ${docs[@]+"${docs[@]}"} ${plot[@]+"${plot[@]}"}
        longnet study-report "$WORKDIR/eval.json" --markdown "$WORKDIR/study.md" \
            --json "$WORKDIR/study.json" --quiet
    fi
    CURRENT_STEP=done
    echo "$PIPELINE: done in $((SECONDS - started)) s $(date '+%Y-%m-%d %H:%M:%S')"
    cat "$WORKDIR/study.md" >&4 # the table, on the caller's stdout
}

study_main "$@"; exit $?
