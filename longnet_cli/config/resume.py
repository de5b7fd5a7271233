"""Resume policy: which recipe keys may change when a run resumes from its checkpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from longnet_cli.config.schema import Recipe

# Key paths that may differ between a checkpoint's recipe and the recipe a run resumes with.
# A section name alone ("log") covers all of its keys.
SAFE_ON_RESUME = (
    "train.steps",
    "train.threads",
    "train.deterministic",  # kernel choice, not the math: bit-exact on a CPU either way
    "train.init_from",  # read at step 0 only: a resumed run continues from its checkpoint
    "train.compile",  # how the blocks run, not what they compute: same parameters, same state
    "train.tf32",  # CUDA fp32 matmul rounding of later steps; nothing stored depends on it
    "checkpoint.every",
    "checkpoint.keep_last",
    "log",
    "eval",
    "data.eval_shards",
    "parallel.sequence",  # windows depend on the data-parallel layout only
    "parallel.shard",  # how the state is laid out over the ranks, not what it is
    # the global batch (their product x data-parallel processes) must stay: checked by
    # train.resume.check_global_batch, so a run resumes on another number of processes
    "train.micro_batch_size",
    "train.grad_accum",
)


def _is_safe(path: str) -> bool:
    return any(path == safe or path.startswith(safe + ".") for safe in SAFE_ON_RESUME)


def safe_to_change_on_resume(old: Recipe, new: Recipe) -> list[str]:
    """Key paths that differ between ``old`` and ``new`` and must NOT change on resume.

    An empty list means the run may resume with ``new``. Safe to change (they do not alter
    what has been trained or how the next step computes): ``train.steps`` (train longer or
    stop earlier), ``train.threads``, ``train.compile``, ``checkpoint.every``,
    ``checkpoint.keep_last``, every ``log.*`` and ``eval.*`` key, ``data.eval_shards``
    (evaluation data only), ``parallel.sequence`` and ``parallel.shard`` (the layout), and
    ``train.micro_batch_size`` and ``train.grad_accum`` (their product with the data-parallel
    processes is checked on resume). Everything else (data, model, optimizer, schedule,
    precision, seed) is unsafe.
    """
    old_values, new_values = old.to_dict(), new.to_dict()
    changed = []
    for name, values in old_values.items():
        for key, value in values.items():
            path = f"{name}.{key}"
            if new_values[name][key] != value and not _is_safe(path):
                changed.append(path)
    return changed
