#!/usr/bin/env bash
# The context study: does a LongNet model read long documents better than a dense one?
#
#   pipelines/context_study.sh [WORKDIR]     (default: runs/context_study; the long scale:
#                                             ~/.cache/longnet/context_study_long)
#
# Tokenizes a built-in corpus once (each .py file one document, a fifth of the documents held
# out by content hash), trains the recipes of recipes/study/ on the same number of training
# tokens, and scores them side by side on the held-out documents: perplexity on the same final
# tokens with 2K, 8K and 32K tokens of context (the LongNet paper's Table 2), perplexity by
# position, and the copy probe at d = 128, 512, 2K, 8K and 16K. Writes WORKDIR/study.md (the
# table and the claims, each "holds" or "does not hold"), WORKDIR/study.json, WORKDIR/study.png
# (with matplotlib), and prints the table when done.
#
#   dense_2k    full causal attention trained on 2K sequences (the paper's Transformer baseline)
#   longnet_8k  dilated attention trained on 8K sequences, branches reaching 32K
#   dense_8k    full causal attention trained on 8K sequences (the costly upper bound)
#
# Scales (LONGNET_STUDY_SCALE), each with its tokens per model, its wall time and what it can
# show. Copying from context appears after a token budget that grows with the tokens per step
# (Aoyama, Wilcox & Schneider 2025: about 10^5.7 x sqrt(tokens per step), ~45M tokens at 8K
# tokens per step, ~128M at 64K); the scales are sized around that budget.
#
#   cpu (default)  the three models, 8.2M tokens each (the recipes' 1,000 steps of 8K tokens),
#                  the standard library (8.9M training tokens: 0.9 passes). About 40 minutes on a
#                  quiet 2-core CPU, estimated from the speeds below (7 + 9 + 18 min of training
#                  at ~18.7K / 15.1K / ~7.8K tokens/s: longnet_8k's measured by `longnet bench
#                  train --compare`, quiet, bf16 compiled as the recipes' train.precision auto and
#                  train.compile choose on a CPU with fast bf16; the dense models' estimated from
#                  their fp32 speeds and that profile), a minute to tokenize, one to compile and
#                  4 to evaluate; the run measured is in docs/context_study.md. Where auto picks
#                  fp32, about 1.5x longer. The same tokens as the earlier study without smeared
#                  keys, so the two compare at equal budgets.
#                  Shows LongNet holding 4x past its training length while the dense models
#                  break, and copying beginning at short distances (d = 128, 512); copying from
#                  2K back needs more tokens.
#   long           longnet_8k then dense_2k only, toward 49.2M tokens each (6,000 steps of
#                  8K), on the installed packages' source (site-packages, 62.2M training
#                  tokens: no token seen twice), a checkpoint every 500 steps, all kept, each
#                  probed (copy probe and ppl at 2K and 8K on 8 held-out documents of at least
#                  16K tokens). One run is capped at about 2 hours (LONGNET_STUDY_LONG_BUDGET_S,
#                  default 7200, tokenizing to report): each model trains for an equal share of
#                  the time left after probing (stopped by SIGTERM with a checkpoint; a model
#                  that finishes early leaves its time to the next), and the report says where
#                  each stopped. All 6,000 steps took 1.9 h for longnet_8k (7.2K tokens/s)
#                  and 1.2 h for dense_2k (11.6K) on a 2-core CPU without fast bf16, so the
#                  budget takes two runs (docs/context_study.md has their results). Shows the curve of copy ratio against
#                  training tokens (study.md's table and study_curve.png) up to and past the
#                  ~45M-token onset the fit predicts, toward the budget where LongNet's copy
#                  ratio at d = 2K falls below 0.7, and the claims where the runs stand. Its
#                  WORKDIR is outside the work tree by default (LONGNET_STUDY_LONG_DIR, else
#                  ${XDG_CACHE_HOME:-~/.cache}/longnet/context_study_long): a later run on the
#                  same machine continues it where it stopped.
#   gpu            the three models on one GPU in about 4 minutes, everything included, so that
#                  ONE command of at most 7 minutes runs gpu_check (3 minutes) and then this
#                  scale. The corpus (site-packages) is tokenized on the GPU machine itself;
#                  64K tokens per step (32 x 2K, 8 x 8K), bf16 eager; the steps, the same for all
#                  three, are sized to the time left for training from the throughput gpu_check
#                  measured (LONGNET_STUDY_GPU_CHECK: its --json file; see
#                  longnet_cli/evaluate/study_plan.py) or a previous run's study.json
#                  (LONGNET_STUDY_GPU_MEASURED); each model's training is also capped in time
#                  (stopped by SIGTERM with a checkpoint), so the scale ends within its budget
#                  whatever the estimate. Tokens per model: what fits, 100M or more if the GPU
#                  gives the study's small models ~2M tokens/s (not measured yet). Shows the
#                  claims and the copy curve (4 checkpoints per model) at the budget where
#                  copying is expected to begin. Reports go to LONGNET_STUDY_REPORT_DIR.
#   smoke          the cpu scale at a tiny size (a minute: checks the pipeline end to end; its
#                  figures mean nothing); LONGNET_STUDY_TINY=1 shrinks any scale the same way.
#
# Like books.sh: a lock (a second run exits at once with code 75), a log per run in
# WORKDIR/logs/, exit codes passed through (1 failed, 2 bad usage or input, 130/143
# interrupted). Resumable: an interrupted study continues where it stopped; a finished one is a
# no-op that prints its table.
#
# Environment, all optional:
#   LONGNET_PYTHON             python that has longnet installed (default: python3)
#   LONGNET_STUDY_SCALE        cpu (default), long, gpu or smoke (see above)
#   LONGNET_STUDY_TINY         1: the scale's code path at a tiny size (tests; figures mean nothing)
#   LONGNET_STUDY_CORPUS       stdlib, site-packages (the installed packages' .py source:
#                              ~200 MB, 62M training tokens) or a corpus directory (default:
#                              stdlib at the cpu scale, site-packages at the long and gpu ones)
#   LONGNET_STUDY_STEPS        train.steps of every model (same tokens per step for all), instead
#                              of the scale's (gpu: instead of the sizing; long: its warm-up
#                              stays, so that a later run with more steps trains the runs on)
#   LONGNET_STUDY_HOLDOUT      tokenize --holdout (default 0.2: on CPython 3.11's standard
#                              library, 10 held-out files of at least 32K tokens)
#   LONGNET_STUDY_VOCAB_SIZE   tokenizer vocabulary (default 2048)
#   LONGNET_STUDY_CONTEXTS     eval --context (default 2K,8K,32K)
#   LONGNET_STUDY_DISTANCES    copy-probe distances (default 128,512,2K,8K,16K)
#   LONGNET_STUDY_DOCS         held-out documents scored (default: all that are long enough at
#                              the cpu scale, 16 at the long and gpu scales)
#   LONGNET_STUDY_REPORT_DIR   also copy the reports there when done (study.md, study.json,
#                              study.png, study_curve.png, gpu_plan.json, and study.log, which
#                              is copied on failure too): at most 6 files
#   LONGNET_STUDY_LONG_DIR     the long scale's default WORKDIR
#   LONGNET_STUDY_GPU_CHECK    the gpu scale: gpu_check's JSON (pipelines/gpu_check.sh --json F)
#   LONGNET_STUDY_GPU_MEASURED the gpu scale: a previous gpu-scale study.json (its tokens/s)
#   LONGNET_STUDY_GPU_BUDGET_S the gpu scale's seconds, tokenizing to report (default 240)
#   LONGNET_STUDY_LONG_BUDGET_S the long scale's seconds per run, tokenizing to report (default
#                              7200): each model's training is capped at its share
#   LONGNET_STUDY_GPU_STARTUP_S the gpu scale: seconds a training process takes to start
#                              (default 15: CUDA, the corpus, the first step)
#   LONGNET_STUDY_TRAIN_ARGS   more train arguments for all, e.g. "--set train.threads=2"
#   LONGNET_DEVICES            train --devices (processes per node: N, or auto = one per GPU);
#                              unset: longnet train's default
#
# The gpu scale after gpu_check, as one command from a checkout (REPORTS: a directory):
#   export PYTHONPATH=$PWD; bash pipelines/gpu_check.sh --json REPORTS/gpu_check.json;
#   LONGNET_STUDY_SCALE=gpu LONGNET_STUDY_GPU_CHECK=REPORTS/gpu_check.json \
#     LONGNET_STUDY_REPORT_DIR=REPORTS/study bash pipelines/context_study.sh /tmp/context_study
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
    SCALE=${LONGNET_STUDY_SCALE:-cpu}
    TINY=${LONGNET_STUDY_TINY:-0}
    if [[ $SCALE == smoke ]]; then
        SCALE=cpu
        TINY=1
    fi
    case $SCALE in
    cpu) WORKDIR=${1:-runs/context_study} ;;
    long) WORKDIR=${1:-${LONGNET_STUDY_LONG_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/longnet/context_study_long}} ;;
    gpu) WORKDIR=${1:-runs/context_study_gpu} ;;
    *)
        echo "$PIPELINE: LONGNET_STUDY_SCALE must be cpu, long, gpu or smoke, got '$SCALE'" >&2
        exit 2
        ;;
    esac
    if [[ $TINY != 0 && $TINY != 1 ]]; then
        echo "$PIPELINE: LONGNET_STUDY_TINY must be 0 or 1, got '$TINY'" >&2
        exit 2
    fi
    RECIPES=(dense_2k longnet_8k dense_8k)
    CURVE_RECIPES=() # the runs whose kept checkpoints are probed along the way
    # Per scale: tokenizer, contexts, distances, and --set overrides (common, then per recipe).
    declare -A RECIPE_SET=([dense_2k]="" [longnet_8k]="" [dense_8k]="")
    COMMON_SET=()
    VOCAB_SIZE=2048
    CONTEXTS=2K,8K,32K
    CURVE_CONTEXTS=2K,8K # the perplexities of the curve's checkpoints
    DISTANCES=128,512,2K,8K,16K
    DOCS=""
    PROBE_DOCS=8
    DEFAULT_CORPUS=""
    TOKENIZE_ARGS=()
    GPU_BUDGET_S=${LONGNET_STUDY_GPU_BUDGET_S:-240}
    GPU_RESERVE_S=60 # of the gpu scale's budget: the evaluations and the report
    GPU_STARTUP_S=${LONGNET_STUDY_GPU_STARTUP_S:-15} # per training process: start, CUDA, first step
    LONG_BUDGET_S=${LONGNET_STUDY_LONG_BUDGET_S:-7200}
    LONG_RESERVE_S=420 # of the long scale's budget: the final evaluation and report (293 s)
    LONG_PROBE_S=900   # per model: probing its 12 kept checkpoints (dense_2k: 63 s each)
    LONG_MIN_CAP_S=60  # a model's training, however late it starts
    local name
    for name in LONGNET_STUDY_GPU_BUDGET_S LONGNET_STUDY_LONG_BUDGET_S; do
        if [[ -n ${!name:-} && ! ${!name} =~ ^[1-9][0-9]*$ ]]; then
            echo "$PIPELINE: $name must be a whole number of seconds, got '${!name}'" >&2
            exit 2
        fi
    done
    INCLUDE=(--include '*.py')
    case $SCALE in
    cpu) ;; # the recipes' own 1,000 steps
    long)
        RECIPES=(longnet_8k dense_2k)
        CURVE_RECIPES=(longnet_8k dense_2k)
        COMMON_SET=(--set train.steps=6000 --set train.warmup_steps=300 --set checkpoint.every=500
            --set checkpoint.keep_last=100)
        DOCS=16
        DEFAULT_CORPUS=site-packages
        ;;
    gpu)
        CURVE_RECIPES=(longnet_8k dense_2k)
        # eager: compiling would cost each of the three models its start-up again (not measured
        # on a GPU yet); LONGNET_STUDY_TRAIN_ARGS="--set train.compile=true" and a longer
        # LONGNET_STUDY_GPU_STARTUP_S try it
        COMMON_SET=(--set train.precision=bf16 --set train.compile=false --set checkpoint.keep_last=10)
        RECIPE_SET=([dense_2k]="train.micro_batch_size=32" [longnet_8k]="train.micro_batch_size=8"
            [dense_8k]="train.micro_batch_size=8")
        DOCS=16
        DEFAULT_CORPUS=site-packages
        TOKENIZE_ARGS=(--sample-bytes 8M)
        ;;
    esac
    if [[ $TINY == 1 ]]; then
        VOCAB_SIZE=400
        CONTEXTS=32,128,512
        CURVE_CONTEXTS=32,128
        DISTANCES=2,8,32,128,256
        PROBE_DOCS=2
        DEFAULT_CORPUS=""
        GPU_RESERVE_S=20
        GPU_STARTUP_S=${LONGNET_STUDY_GPU_STARTUP_S:-10}
        LONG_RESERVE_S=10 LONG_PROBE_S=10 LONG_MIN_CAP_S=15
        [[ -z $DOCS ]] || DOCS=4
        INCLUDE=(--include 'json/*.py' --include 'csv.py' --include 'email/_*.py' --include 'email/m*.py')
        COMMON_SET+=(--set model.dim=32 --set model.depth=1 --set model.heads=2 --set model.dim_head=16
            --set train.warmup_steps=0 --set log.every=1 --set train.threads=1
            --set train.compile=false) # compiling would take longer than the tiny run
        case $SCALE in
        cpu) COMMON_SET+=(--set train.steps=3 --set checkpoint.every=3) ;;
        long) COMMON_SET+=(--set train.steps=4 --set checkpoint.every=2) ;;
        esac
        RECIPE_SET[dense_2k]+=" train.seq_len=32 model.segment_lengths=[1K]"
        RECIPE_SET[longnet_8k]+=" train.seq_len=128 model.segment_lengths=[32,128,512]"
        RECIPE_SET[dense_8k]+=" train.seq_len=128 model.segment_lengths=[1K]"
    fi
    VOCAB_SIZE=${LONGNET_STUDY_VOCAB_SIZE:-$VOCAB_SIZE}
    CONTEXTS=${LONGNET_STUDY_CONTEXTS:-$CONTEXTS}
    DISTANCES=${LONGNET_STUDY_DISTANCES:-$DISTANCES}
    DOCS=${LONGNET_STUDY_DOCS:-$DOCS}
    HOLDOUT=${LONGNET_STUDY_HOLDOUT:-0.2}
    REPORT_DIR=${LONGNET_STUDY_REPORT_DIR:-}
    STEPS=${LONGNET_STUDY_STEPS:-}
    if [[ -n $STEPS ]]; then
        COMMON_SET+=(--set "train.steps=$STEPS")
        if [[ $SCALE != long ]]; then # the long scale keeps its warm-up: a later run trains on
            COMMON_SET+=(--set "train.warmup_steps=$((STEPS / 20))")
        fi
        if [[ $SCALE == gpu ]]; then
            COMMON_SET+=(--set "checkpoint.every=$(((STEPS + 3) / 4))")
        fi
    fi
    if [[ -n $DEFAULT_CORPUS ]]; then
        LONGNET_STUDY_CORPUS=${LONGNET_STUDY_CORPUS:-$DEFAULT_CORPUS}
    fi

    read -r -a TRAIN_ARGS <<<"${LONGNET_STUDY_TRAIN_ARGS:-}"
    if [[ -n ${LONGNET_DEVICES:-} ]]; then
        TRAIN_ARGS+=(--devices "$LONGNET_DEVICES")
    fi
    # The corpus: a built-in one by name (stdlib, site-packages), else a directory as it is.
    case ${LONGNET_STUDY_CORPUS:-stdlib} in
    stdlib) SOURCE=(--stdlib "${INCLUDE[@]}") ;;
    site-packages)
        # tiny: two small packages pytest brings stand in for its standard-library files
        if [[ $TINY == 1 ]]; then
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
    trap study_exit EXIT
    size=""
    if [[ $TINY == 1 ]]; then
        size=", tiny"
    fi
    echo "$PIPELINE $WORKDIR (scale $SCALE$size): started $(date '+%Y-%m-%d %H:%M:%S') (pid $$)"
    started=$SECONDS
    total=$((${#RECIPES[@]} + 2))
    if [[ $SCALE == gpu ]]; then
        total=$((total + 1)) # the kept checkpoints probed in one evaluation
    fi

    CURRENT_STEP=tokenize
    step "[1/$total] tokenize ${SOURCE[*]} into $WORKDIR/data (--holdout $HOLDOUT)"
    longnet tokenize "${SOURCE[@]}" --vocab-size "$VOCAB_SIZE" --holdout "$HOLDOUT" \
        --out "$WORKDIR/data" --quiet ${TOKENIZE_ARGS[@]+"${TOKENIZE_ARGS[@]}"}

    declare -A PLANNED_S=()
    deadline=$((started + GPU_BUDGET_S - GPU_RESERVE_S)) # the gpu scale's last training second
    if [[ $SCALE == long ]]; then
        deadline=$((started + LONG_BUDGET_S - LONG_RESERVE_S))
    fi
    if [[ $SCALE == gpu ]]; then
        CURRENT_STEP="size the gpu scale"
        budget=$((deadline - SECONDS - ${#RECIPES[@]} * GPU_STARTUP_S))
        plan_args=("$WORKDIR/gpu_plan.json" "$WORKDIR/data" "$((budget > 1 ? budget : 1))"
            "${LONGNET_STUDY_GPU_CHECK:-}" "${LONGNET_STUDY_GPU_MEASURED:-}")
        for recipe in "${RECIPES[@]}"; do
            set_overrides "$recipe"
            plan_args+=("$recipe" "$ROOT/recipes/study/$recipe.yaml" "${OVERRIDES[@]}" --)
        done
        planned=$(gpu_plan "${plan_args[@]}")
        read -r -a plan <<<"$planned"
        for entry in "${plan[@]:1}"; do
            PLANNED_S[${entry%%=*}]=${entry#*=}
        done
        if [[ -z $STEPS ]]; then
            COMMON_SET+=(--set "train.steps=${plan[0]}" --set "train.warmup_steps=$((plan[0] / 20))"
                --set "checkpoint.every=$(((plan[0] + 3) / 4))")
        fi
        echo "$PIPELINE: gpu scale: ${plan[0]} steps per model (${STEPS:+overridden by LONGNET_STUDY_STEPS=$STEPS; }planned seconds ${plan[*]:1}; $WORKDIR/gpu_plan.json)"
    fi

    number=2
    for index in "${!RECIPES[@]}"; do
        recipe=${RECIPES[$index]}
        CURRENT_STEP="train $recipe"
        set_overrides "$recipe"
        command=("$LONGNET_PYTHON" -m longnet_cli train "$ROOT/recipes/study/$recipe.yaml"
            --out "$WORKDIR/$recipe" --quiet "${OVERRIDES[@]}" ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"})
        cap=""
        if [[ $SCALE == gpu ]]; then
            # its share of the time left, in proportion to the planned seconds of the models left
            left=$((deadline - SECONDS)) rest=0
            for later in "${RECIPES[@]:$index}"; do
                rest=$((rest + ${PLANNED_S[$later]:-1}))
            done
            models_left=$((${#RECIPES[@]} - index))
            cap=$((GPU_STARTUP_S + (left - models_left * GPU_STARTUP_S) * ${PLANNED_S[$recipe]:-1} / (rest > 0 ? rest : 1)))
            cap=$((cap > GPU_STARTUP_S + 5 ? cap : GPU_STARTUP_S + 5))
        elif [[ $SCALE == long ]]; then
            # an equal share of the time left, after each model left's probing: a model that
            # finishes early leaves its time to the next
            models_left=$((${#RECIPES[@]} - index))
            cap=$(((deadline - SECONDS - models_left * LONG_PROBE_S) / models_left))
            cap=$((cap > LONG_MIN_CAP_S ? cap : LONG_MIN_CAP_S))
        fi
        if [[ -n $cap ]]; then
            step "[$number/$total] train recipes/study/$recipe.yaml into $WORKDIR/$recipe (at most $cap s)"
            code=0
            timeout --signal=TERM --kill-after=30 "$cap" "${command[@]}" || code=$?
            if [[ $code == 124 ]]; then
                echo "$PIPELINE: $recipe stopped at its time cap ($cap s; a checkpoint saved on SIGTERM)"
            elif [[ $code != 0 ]]; then
                exit "$code"
            fi
        else
            step "[$number/$total] train recipes/study/$recipe.yaml into $WORKDIR/$recipe"
            "${command[@]}"
        fi
        if [[ $SCALE == long ]]; then
            CURRENT_STEP="probe $recipe"
            probe_checkpoints "$recipe"
        fi
        number=$((number + 1))
    done

    runs=()
    for recipe in "${RECIPES[@]}"; do
        runs+=("$WORKDIR/$recipe")
    done
    curve=()
    if [[ $SCALE == gpu ]]; then
        CURRENT_STEP="probe the kept checkpoints"
        step "[$number/$total] copy probe and ppl at $CURVE_CONTEXTS of the kept checkpoints of ${CURVE_RECIPES[*]}"
        checkpoints=()
        for recipe in "${CURVE_RECIPES[@]}"; do
            while read -r checkpoint; do
                checkpoints+=("$checkpoint")
            done < <(kept_checkpoints "$WORKDIR/$recipe")
        done
        if [[ ${#checkpoints[@]} == 0 ]]; then
            echo "$PIPELINE: no checkpoint of ${CURVE_RECIPES[*]} under $WORKDIR" >&2
            exit 1
        fi
        probe_args "$WORKDIR/curve.json"
        longnet eval "${checkpoints[@]}" "${PROBE_ARGS[@]}"
        curve=(--curve "$WORKDIR/curve.json")
        number=$((number + 1))
    elif [[ $SCALE == long ]]; then
        curve=(--curve "$WORKDIR/probes")
    fi

    CURRENT_STEP=eval
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
        step "[$number/$total] evaluate side by side on held-out documents: contexts $CONTEXTS, copy probe $DISTANCES"
        plot=() curve_plot=()
        if have_matplotlib; then
            plot=(--plot "$WORKDIR/study.png")
            if [[ ${#curve[@]} -gt 0 ]]; then
                curve_plot=(--curve-plot "$WORKDIR/study_curve.png")
            fi
        fi
        docs=()
        if [[ -n $DOCS ]]; then
            docs=(--docs "$DOCS")
        fi
        longnet eval "${runs[@]}" --data "$WORKDIR/data" --split heldout --context "$CONTEXTS" \
            --probe copy --distances "$DISTANCES" --json "$WORKDIR/eval.json" --quiet \
            ${docs[@]+"${docs[@]}"} ${plot[@]+"${plot[@]}"}
        longnet study-report "$WORKDIR/eval.json" --markdown "$WORKDIR/study.md" \
            --json "$WORKDIR/study.json" --quiet ${curve[@]+"${curve[@]}"} \
            ${curve_plot[@]+"${curve_plot[@]}"}
    fi
    CURRENT_STEP=done
    echo "$PIPELINE: done in $((SECONDS - started)) s $(date '+%Y-%m-%d %H:%M:%S')"
    copy_reports
    cat "$WORKDIR/study.md" >&4 # the table, on the caller's stdout
}

# OVERRIDES: the --set arguments of RECIPE: the corpus, the scale's common ones, then the
# recipe's own.
set_overrides() {
    local setting
    OVERRIDES=(--set "data.shards=$WORKDIR/data" ${COMMON_SET[@]+"${COMMON_SET[@]}"})
    for setting in ${RECIPE_SET[$1]}; do
        OVERRIDES+=(--set "$setting")
    done
}

# The complete checkpoints of RUN_DIR (step-NNNNNNN with a state.json), oldest first.
kept_checkpoints() {
    local checkpoint
    for checkpoint in "$1"/checkpoints/step-[0-9][0-9][0-9][0-9][0-9][0-9][0-9]; do
        if [[ -f $checkpoint/state.json ]]; then
            echo "$checkpoint"
        fi
    done
}

# PROBE_ARGS: the evaluation of a kept checkpoint, written to JSON_FILE: perplexity at the
# curve's contexts and the copy probe, on the first PROBE_DOCS held-out documents long enough
# for the longest distance (the same documents at every distance and checkpoint).
probe_args() {
    PROBE_ARGS=(--data "$WORKDIR/data" --split heldout --context "$CURVE_CONTEXTS"
        --min-tokens "${DISTANCES##*,}" --docs "$PROBE_DOCS" --probe copy
        --distances "$DISTANCES" --json "$1" --quiet)
}

# The long scale: evaluate each kept checkpoint of RECIPE not evaluated yet, each into its own
# WORKDIR/probes/RECIPE-step-NNNNNNN.json (a later run evaluates only the new ones).
probe_checkpoints() {
    local recipe=$1 checkpoint out
    mkdir -p "$WORKDIR/probes"
    while read -r checkpoint; do
        out="$WORKDIR/probes/$recipe-${checkpoint##*/}.json"
        if [[ ! -f $out ]]; then
            step "probe $checkpoint"
            probe_args "$out"
            longnet eval "$checkpoint" "${PROBE_ARGS[@]}"
        fi
    done < <(kept_checkpoints "$WORKDIR/$recipe")
}

# The gpu scale's steps: longnet_cli.evaluate.study_plan.plan_gpu_scale, written to PLAN_JSON
# (a later run reuses it, so that it resumes the same schedule). Prints "STEPS NAME=SECONDS ...".
#   gpu_plan PLAN_JSON CORPUS BUDGET_S GPU_CHECK_JSON MEASURED_JSON [NAME RECIPE SET... --]...
gpu_plan() {
    "$LONGNET_PYTHON" - "$@" <<'PY'
import json
import math
import sys
from pathlib import Path

from longnet_cli.config.load import load_recipe
from longnet_cli.core.files import atomic_write_text
from longnet_cli.data.format.manifest import read_manifest
from longnet_cli.evaluate.study_plan import plan_gpu_scale

out, data, budget, gpu_check, measured, *rest = sys.argv[1:]
out = Path(out)
if out.exists():
    plan = json.loads(out.read_text())
else:
    recipes = {}
    while rest:
        name, path, *rest = rest
        end = rest.index("--")
        recipes[name] = load_recipe(path, [a for a in rest[:end] if a != "--set"])
        rest = rest[end + 1 :]
    plan = plan_gpu_scale(
        recipes, read_manifest(Path(data))["vocab_size"], float(budget),
        Path(gpu_check) if gpu_check else None, Path(measured) if measured else None,
    )
    atomic_write_text(out, json.dumps(plan, indent=2) + "\n")
models = plan["models"]
steps = next(iter(models.values()))["steps"]
print(steps, *(f"{name}={math.ceil(model['seconds'])}" for name, model in models.items()))
PY
}

# LONGNET_STUDY_REPORT_DIR: the reports (and the log) copied there.
copy_reports() {
    [[ -n $REPORT_DIR ]] || return 0
    mkdir -p "$REPORT_DIR"
    local name
    for name in study.md study.json study.png study_curve.png gpu_plan.json; do
        if [[ -f $WORKDIR/$name ]]; then
            cp "$WORKDIR/$name" "$REPORT_DIR/$name"
        fi
    done
}

# On exit: the log beside the reports (a failed gpu run's only account), then batch_exit.
study_exit() {
    local code=$?
    if [[ -n ${REPORT_DIR:-} ]]; then
        mkdir -p "$REPORT_DIR" && cp "$BATCH_LOG" "$REPORT_DIR/study.log" || true
    fi
    (exit "$code")
    batch_exit
}

study_main "$@"; exit $?
