"""The recipe's sections besides ``model``: each a dataclass that validates itself.

``Section.__post_init__`` checks and normalises every field by its kind (``kinds.normalise``),
then the section's ``_check`` does the cross-field checks, raising RecipeError with the key path.
The ``model`` section is derived from the model's own config (``model_section.py``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import ClassVar

from longnet_cli.config.errors import RecipeError
from longnet_cli.config.kinds import normalise
from longnet_cli.model.config import option
from longnet_cli.runtime import TRAIN_PRECISION_NAMES

# Mirror of data.windows.SAMPLING_MODES (that module needs numpy; loading a recipe must not);
# tests/config/test_sections.py checks it.
SAMPLING_MODES = ("stream", "document")
# parallel.shard: "none" (every rank holds the whole model; gradients averaged as DDP does) or
# "fsdp" (parameters, gradients and optimizer state sharded over every rank, torch's FSDP2)
SHARD_MODES = ("none", "fsdp")


@dataclass(kw_only=True)
class Section:
    """Base of the recipe sections: per-field checks by kind, then the section's ``_check``."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for spec in fields(self):
            key = f"{self.SECTION}.{spec.name}"
            setattr(self, spec.name, normalise(getattr(self, spec.name), key, spec.metadata))
        self._check()

    def _check(self) -> None:
        """Cross-field checks; raise RecipeError naming the key path."""

    def _error(self, name: str, problem: str) -> RecipeError:
        return RecipeError(problem, f"{self.SECTION}.{name}")

    @classmethod
    def key_names(cls) -> list[str]:
        return [spec.name for spec in fields(cls)]

    @classmethod
    def required_keys(cls) -> list[str]:
        return [
            spec.name
            for spec in fields(cls)
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
        ]


@dataclass(kw_only=True)
class DataConfig(Section):
    """Which tokenized corpus to train on and how training windows are drawn from it.

    Relative paths resolve against the current directory of the process, not the recipe file.
    """

    SECTION: ClassVar[str] = "data"

    # tokenized corpus directory (longnet tokenize --out)
    shards: str = field(metadata=option("str"))
    sampling: str = field(default="stream", metadata=option("choice", choices=SAMPLING_MODES))
    # held-out corpus; None: a slice
    eval_shards: str | None = field(default=None, metadata=option("str", optional=True))


@dataclass(kw_only=True)
class TrainConfig(Section):
    """Sequence length, batch, AdamW, warmup + cosine schedule, precision, seed."""

    SECTION: ClassVar[str] = "train"

    seq_len: int = field(metadata=option("length"))
    micro_batch_size: int = field(default=1, metadata=option("int", minimum=1))
    grad_accum: int = field(default=1, metadata=option("int", minimum=1))
    steps: int = field(metadata=option("int", minimum=1))
    lr: float = field(default=3e-4, metadata=option("float"))
    # cosine decays to lr * min_lr_ratio
    min_lr_ratio: float = field(default=0.1, metadata=option("float"))
    warmup_steps: int = field(default=0, metadata=option("int", minimum=0))
    weight_decay: float = field(default=0.1, metadata=option("float"))
    betas: list[float] = field(
        default_factory=lambda: [0.9, 0.95], metadata=option("floats", size=2)
    )
    # max global grad norm; 0 disables clipping
    grad_clip: float = field(default=1.0, metadata=option("float"))
    # "auto": bf16 where its measured matmul peak beats fp32's, resolved once at start
    precision: str = field(default="fp32", metadata=option("choice", choices=TRAIN_PRECISION_NAMES))
    seed: int = field(default=0, metadata=option("int", minimum=0))
    # positions per head + cross-entropy chunk
    loss_chunk: int = field(default=1024, metadata=option("length"))
    # torch CPU threads
    threads: int | None = field(default=None, metadata=option("int", minimum=1, optional=True))
    # deterministic kernels where they exist (torch.use_deterministic_algorithms, cuDNN, cuBLAS)
    deterministic: bool = field(default=False, metadata=option("bool"))
    # start from these weights (a checkpoint, a run directory or a `longnet export` directory):
    # fresh optimizer, schedule and step 0; every parameter's shape must match
    init_from: str | None = field(default=None, metadata=option("str", optional=True))
    # on CUDA, float32 matmuls and convolutions in TF32 (several times true fp32's rate, 10-bit
    # mantissa products); false: true fp32. No effect on a CPU
    tf32: bool = field(default=True, metadata=option("bool"))
    # torch.compile each block (inductor; its C++ backend on a CPU); compile_s reported apart
    compile: bool = field(default=False, metadata=option("bool"))

    def _check(self) -> None:
        if self.lr <= 0:
            raise self._error("lr", f"must be > 0, got {self.lr}")
        if not 0 < self.min_lr_ratio <= 1:
            raise self._error(
                "min_lr_ratio", f"must be in (0, 1] (1 = constant lr), got {self.min_lr_ratio}"
            )
        if self.warmup_steps > self.steps:
            raise self._error(
                "warmup_steps",
                f"is {self.warmup_steps} but must not exceed train.steps ({self.steps}); "
                f"lower it, e.g. --set train.warmup_steps={self.steps // 10}",
            )
        if self.weight_decay < 0:
            raise self._error("weight_decay", f"must be >= 0, got {self.weight_decay}")
        for i, beta in enumerate(self.betas):
            if not 0 <= beta < 1:
                raise RecipeError(f"must be in [0, 1), got {beta}", f"train.betas[{i}]")
        if self.grad_clip < 0:
            raise self._error(
                "grad_clip", f"must be >= 0 (0 disables clipping), got {self.grad_clip}"
            )

    @property
    def tokens_per_step(self) -> int:
        """Tokens one data-parallel rank consumes per optimizer step."""
        return self.seq_len * self.micro_batch_size * self.grad_accum


@dataclass(kw_only=True)
class CheckpointConfig(Section):
    """Save every ``every`` steps (and at the end); keep the ``keep_last`` newest checkpoints."""

    SECTION: ClassVar[str] = "checkpoint"

    every: int = field(metadata=option("int", minimum=1))
    keep_last: int = field(default=3, metadata=option("int", minimum=1))


@dataclass(kw_only=True)
class LogConfig(Section):
    """Metrics to ``metrics.jsonl`` every ``every`` steps; optional tensorboard and wandb."""

    SECTION: ClassVar[str] = "log"

    every: int = field(default=10, metadata=option("int", minimum=1))
    tensorboard: bool = field(default=False, metadata=option("bool"))
    # Weights & Biases through accelerate's tracker (WANDB_MODE=offline works without network)
    wandb: bool = field(default=False, metadata=option("bool"))


@dataclass(kw_only=True)
class EvalConfig(Section):
    """Evaluation during training: every ``every`` steps (0 = never) on held-out documents.

    Data: ``eval.data`` if set, else ``data.eval_shards``, else a held-out slice of ``data.shards``.
    """

    SECTION: ClassVar[str] = "eval"

    every: int = field(default=0, metadata=option("int", minimum=0))
    # [] means [train.seq_len]
    contexts: list[int] = field(default_factory=list, metadata=option("lengths"))
    docs: int = field(default=8, metadata=option("int", minimum=1))
    data: str | None = field(default=None, metadata=option("str", optional=True))

    def context_lengths(self, seq_len: int) -> list[int]:
        """The contexts to evaluate: ``contexts``, or ``[seq_len]`` when none are given."""
        return list(self.contexts) or [seq_len]


@dataclass(kw_only=True)
class ParallelConfig(Section):
    """``sequence`` ranks split each sequence; world size = sequence x data-parallel degree;
    ``shard``: whether parameters, gradients and optimizer state are sharded over the world."""

    SECTION: ClassVar[str] = "parallel"

    sequence: int = field(default=1, metadata=option("int", minimum=1))
    # "fsdp": torch's fully_shard per block and over the whole model, over every rank
    shard: str = field(default="none", metadata=option("choice", choices=SHARD_MODES))
