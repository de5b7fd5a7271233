"""The names of what a run directory and a checkpoint hold, written down once.

    RUN_DIR/
      metrics.jsonl                one JSON line per logged step (and evaluation)
      eval.json                    the latest ``longnet eval`` of the run (also beside it)
      .train.lock                  flock of the one ``longnet train`` writing the run (its name:
                                   core/runlock.py's LOCK_FILE, beside the lock it names)
      checkpoints/step-NNNNNNN/    one atomic directory per checkpoint:
        model.safetensors  optimizer.pt  recipe.yaml  tokenizer.model  rng-rankR.pt  ...
        (sharded runs: shard-RRRRR-model-00001-of-00001.safetensors per rank and
        optimizer.json in place of model.safetensors and optimizer.pt)
        state.json                 written last: step, RNG, data position, every file's sha256

An export directory (``longnet export``) reuses the weight, tokenizer and state names.
"""

from __future__ import annotations

import re
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.json"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_PREFIX = "step-"  # step-NNNNNNN: checkpoints.step_name
STEP_DIR = re.compile(r"^step-(\d{7})$")  # a complete checkpoint's directory name

WEIGHTS_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
RECIPE_FILE = "recipe.yaml"
TOKENIZER_FILE = "tokenizer.model"
STATE_FILE = "state.json"
SCALER_FILE = "scaler.pt"  # fp16 runs: the gradient scaler's state
# sharded runs (parallel.shard: fsdp): each rank's tensors, named by torch.distributed.checkpoint's
# safetensors storage (shard-00001-model-00001-of-00001.safetensors for rank 0 ...), and the
# optimizer's param groups as JSON
SHARD_PATTERN = "shard-*.safetensors"
OPTIMIZER_GROUPS_FILE = "optimizer.json"


def rng_file(rank: int) -> str:
    """The name of rank ``rank``'s RNG states in a checkpoint: ``rng-rankR.pt``."""
    return f"rng-rank{rank}.pt"


def checkpoints_dir(run_dir: Path | str) -> Path:
    """``RUN_DIR/checkpoints``."""
    return Path(run_dir) / CHECKPOINTS_DIR


def metrics_path(run_dir: Path | str) -> Path:
    """``RUN_DIR/metrics.jsonl``."""
    return Path(run_dir) / METRICS_FILE


def run_of_checkpoint(checkpoint: Path | str) -> Path | None:
    """The run directory a ``RUN_DIR/checkpoints/step-N`` path belongs to (None otherwise)."""
    parent = Path(checkpoint).parent
    return parent.parent if parent.name == CHECKPOINTS_DIR else None
