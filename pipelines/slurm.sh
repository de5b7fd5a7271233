#!/usr/bin/env bash
# Train a recipe on N nodes x G GPUs under SLURM: one `longnet train` per node, each starting one
# process per GPU of its node (torch.distributed's elastic launcher); node 0 hosts the rendezvous
# and holds the run's lock.
#
#   sbatch --nodes 2 --gpus-per-node 8 pipelines/slurm.sh RECIPE RUN_DIR [longnet train args...]
#   e.g. sbatch --nodes 2 --gpus-per-node 8 pipelines/slurm.sh recipes/book_1m.yaml runs/books/run
#
# RUN_DIR (and the recipe's data.shards) must be on a filesystem every node shares, mounted at
# the same path: `longnet train` checks it at start (rank 0 writes a marker there, every rank must
# see it) and exits 2 otherwise. World = nodes x GPUs per node = parallel.sequence x the
# data-parallel degree; a layout that does not divide exits 2 before any work.
#
# Signals: SLURM sends SIGTERM at the time limit (and scancel); every worker saves a checkpoint
# and the job ends with 143. Submit the same command again to resume. `#SBATCH --signal=TERM@120`
# (below) gives the workers two minutes before the limit. Exit codes as `longnet train`'s.
#
# Environment: LONGNET_PYTHON (the python that has longnet installed; default python3),
# LONGNET_MASTER_PORT (default 29500), LONGNET_DEVICES (GPUs per node; default auto: all).
#SBATCH --job-name=longnet-train
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
#SBATCH --signal=TERM@120
#SBATCH --output=longnet-%j.log
set -euo pipefail

if [[ $# -lt 2 || ${1:-} == -* ]]; then
    echo "usage: sbatch --nodes N --gpus-per-node G pipelines/slurm.sh RECIPE RUN_DIR [ARGS...]" >&2
    exit 2
fi
RECIPE=$1
RUN_DIR=$2
shift 2
if [[ -z ${SLURM_JOB_ID:-} ]]; then
    echo "slurm.sh: run it through sbatch (or srun inside an allocation)" >&2
    exit 2
fi
LONGNET_PYTHON=${LONGNET_PYTHON:-python3}
NNODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${LONGNET_MASTER_PORT:-29500}
echo "slurm.sh: $RECIPE -> $RUN_DIR on $NNODES node(s), rendezvous $MASTER_ADDR:$MASTER_PORT"

# One task per node; SLURM_NODEID is evaluated by each task, on its node. srun forwards
# SIGTERM to the tasks, and `longnet train` forwards it to its workers.
srun --nodes "$NNODES" --ntasks-per-node 1 --kill-on-bad-exit=1 bash -c '
    exec "$0" -m longnet_cli train "$1" --out "$2" \
        --nnodes "$3" --node-rank "$SLURM_NODEID" --master-addr "$4" --master-port "$5" \
        --devices "${LONGNET_DEVICES:-auto}" --quiet "${@:6}"
' "$LONGNET_PYTHON" "$RECIPE" "$RUN_DIR" "$NNODES" "$MASTER_ADDR" "$MASTER_PORT" "$@"
