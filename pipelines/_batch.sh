# The batch pipeline behind books.sh and repos.sh (sourced by them, never run):
# tokenize CORPUS -> train RECIPE -> evaluate, for cron and batch jobs.
#
#   batch_pipeline GROUP SCRIPT_NAME CORPUS RECIPE WORKDIR
#
# - A lock: flock on WORKDIR/.pipeline.lock; while one run holds it, another exits at once
#   with code 75 (EX_TEMPFAIL: try again later) and one line on stderr.
# - A log per run: WORKDIR/logs/<YYYYmmdd-HHMMSS>.log gets the stdout and stderr of every step
#   (progress bars off). Nothing is printed on success unless stdout is a terminal; a failure
#   prints one line naming the log on stderr (cron mails it).
# - Exit codes: the failing step's (1 failed, 2 bad usage or input, 130/143 interrupted).
# - Re-runnable: tokenize writes nothing when the corpus is unchanged, train resumes or sees the
#   run is finished, eval runs again and replaces WORKDIR/eval.json.
# - One vocabulary: the first run keeps its trained tokenizer as WORKDIR/tokenizer.model and
#   every later run tokenizes with it (--tokenizer), so a corpus that grows between runs keeps
#   the tokenizer its checkpoints were trained with (train continues on the grown corpus and
#   records data_changed in metrics.jsonl). The second run re-tokenizes once (its options now
#   name the tokenizer). A WORKDIR from before keeps the tokenizer of its corpus. Delete
#   WORKDIR/tokenizer.model (and start a new run) to train a new vocabulary.
# Environment: LONGNET_PYTHON (see _lib.sh); LONGNET_TOKENIZE_ARGS, LONGNET_TRAIN_ARGS and
# LONGNET_EVAL_ARGS add arguments to a step (split on whitespace, e.g. "--vocab-size 16000");
# LONGNET_EVAL_DOCS: documents evaluated (default 16); LONGNET_DEVICES: processes per node for
# train (--devices N|auto: one per GPU by default, N CPU processes on a machine without GPUs), so
# that a sequence-parallel recipe (parallel.sequence > 1) starts its whole layout.

LOCKED_EXIT=75

batch_pipeline() {
    local group=$1
    PIPELINE=$2
    shift 2
    if [[ $# -ne 3 || ${1:-} == -* ]]; then
        echo "usage: $PIPELINE CORPUS RECIPE WORKDIR" >&2
        exit 2
    fi
    local corpus=$1 recipe=$2 workdir=$3
    if [[ ! -e $corpus ]]; then
        echo "$PIPELINE: corpus not found: $corpus" >&2
        exit 2
    fi
    if [[ ! -f $recipe ]]; then
        echo "$PIPELINE: recipe not found: $recipe" >&2
        exit 2
    fi
    require_longnet
    batch_begin "$workdir"

    local tokenize_args train_args eval_args
    read -r -a tokenize_args <<<"${LONGNET_TOKENIZE_ARGS:-}"
    read -r -a train_args <<<"${LONGNET_TRAIN_ARGS:-}"
    read -r -a eval_args <<<"${LONGNET_EVAL_ARGS:-}"
    if [[ -n ${LONGNET_DEVICES:-} ]]; then
        train_args+=(--devices "$LONGNET_DEVICES")
    fi
    echo "$PIPELINE $corpus $recipe $workdir: started $(date '+%Y-%m-%d %H:%M:%S') (pid $$)"
    local started=$SECONDS

    CURRENT_STEP=tokenize
    local tokenizer="$workdir/tokenizer.model" reuse=() with=""
    if [[ ! -f $tokenizer && -e $workdir/data ]]; then
        # a WORKDIR from before: keep its vocabulary (an unreadable corpus: a new one)
        keep_tokenizer "$workdir/data" "$tokenizer" || true
    fi
    if [[ -f $tokenizer && " ${tokenize_args[*]-} " != *" --tokenizer "* ]]; then
        reuse=(--tokenizer "$tokenizer")
        with=" with the first run's tokenizer ($tokenizer)"
    fi
    step "[1/3] tokenize $corpus (--group $group) into $workdir/data$with"
    longnet tokenize "$corpus" --group "$group" --out "$workdir/data" --quiet \
        ${reuse[@]+"${reuse[@]}"} ${tokenize_args[@]+"${tokenize_args[@]}"}
    if [[ ! -f $tokenizer ]]; then
        keep_tokenizer "$workdir/data" "$tokenizer"
    fi

    CURRENT_STEP=train
    step "[2/3] train $recipe into $workdir/run"
    longnet train "$recipe" --out "$workdir/run" --set "data.shards=$workdir/data" --quiet \
        ${train_args[@]+"${train_args[@]}"}

    CURRENT_STEP=eval
    step "[3/3] evaluate $workdir/run"
    local plot=()
    if have_matplotlib; then
        plot=(--plot "$workdir/eval.png")
    fi
    longnet eval "$workdir/run" --data "$workdir/data" --docs "${LONGNET_EVAL_DOCS:-16}" \
        --json "$workdir/eval.json" --quiet ${plot[@]+"${plot[@]}"} \
        ${eval_args[@]+"${eval_args[@]}"}

    CURRENT_STEP=done
    echo "$PIPELINE: done in $((SECONDS - started)) s $(date '+%Y-%m-%d %H:%M:%S')"
}

# Copy the tokenizer of the tokenized corpus CORPUS_DIR to FILE (temp + fsync + rename), where
# the next runs find it: TokenizedCorpus says where the corpus keeps it.
keep_tokenizer() {
    "$LONGNET_PYTHON" - "$1" "$2" <<'PY'
import sys
from pathlib import Path
from longnet_cli.core.files import atomic_write_bytes
from longnet_cli.data.format.reader import TokenizedCorpus

try:
    source = TokenizedCorpus.open(Path(sys.argv[1]), verify="none").tokenizer_path
except Exception as err:
    sys.exit(f"cannot keep the tokenizer of {sys.argv[1]}: {err}")
target = Path(sys.argv[2])
atomic_write_bytes(target, source.read_bytes())
print(f"kept the tokenizer of {sys.argv[1]} as {target}: later runs tokenize with it")
PY
}

# Take WORKDIR's lock (exit 75 when another run holds it), send this run's stdout and stderr to
# a new log in WORKDIR/logs/, and report a failure on the caller's stderr in one line on exit.
# Sets BATCH_LOG; the caller sets PIPELINE and updates CURRENT_STEP as it goes.
batch_begin() {
    local workdir=$1
    if ! command -v flock >/dev/null 2>&1; then
        echo "$PIPELINE: needs flock (util-linux) to keep two runs apart; install it" >&2
        exit 2
    fi
    mkdir -p "$workdir/logs"

    local lock="$workdir/.pipeline.lock"
    exec 9>>"$lock"
    if ! flock --nonblock 9; then
        echo "$PIPELINE: another run holds $lock; not starting (exit $LOCKED_EXIT)" >&2
        exit "$LOCKED_EXIT"
    fi

    local stamp log n=1
    stamp=$(date +%Y%m%d-%H%M%S)
    log="$workdir/logs/$stamp.log"
    while [[ -e $log ]]; do # a second run within the same second
        n=$((n + 1))
        log="$workdir/logs/$stamp-$n.log"
    done
    if [[ -t 1 ]]; then
        echo "$PIPELINE: logging to $log"
    fi
    exec 3>&2 # the caller's stderr, for the one-line failure notice
    exec 4>&1 # the caller's stdout, for what a pipeline prints when done
    exec >>"$log" 2>&1
    CURRENT_STEP=start
    BATCH_LOG=$log
    trap batch_exit EXIT
}

# On exit: a failure is logged and reported on the caller's stderr in one line; the exit code
# stays the failing step's.
batch_exit() {
    local code=$?
    if [[ $code -ne 0 ]]; then
        echo "$PIPELINE: $CURRENT_STEP failed with exit $code $(date '+%Y-%m-%d %H:%M:%S')"
        echo "$PIPELINE: $CURRENT_STEP failed (exit $code); log: $BATCH_LOG" >&3
    fi
    exit "$code"
}
