"""Saving a run's checkpoints: every rank's RNG file, the main process's weights, optimizer,
recipe and tokenizer (a sharded run: every rank its shards, ``artifacts.sharded``), then
``state.json`` (written last: what the checkpoint is and where it
came from) and the atomic rename that makes it a checkpoint; older ones pruned to keep_last.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from longnet_cli.artifacts import checkpoints as ckpt
from longnet_cli.artifacts.sharded import write_sharded
from longnet_cli.config import Recipe
from longnet_cli.train.distributed import Layout
from longnet_cli.train.schedule import Schedule


@dataclass
class RunRecord:
    """What every checkpoint of a run records besides its step: the recipe, the data-parallel
    layout, the corpus (``resume.corpus_record``), the window scheme, the learning-rate
    schedule, and where the weights at step 0 came from (``train.init_from``; None: random)."""

    recipe: Recipe
    layout: Layout
    world_size: int
    corpus: dict
    windows: str
    schedule: Schedule
    init_from: dict | None = None

    def state(self, step: int, tokens: int, loss: float | None) -> dict:
        """The checkpoint's ``state.json`` after ``step`` steps (``tokens`` trained on)."""
        state = {
            "step": step,
            "tokens": tokens,
            "world_size": self.world_size,
            "dp_size": self.layout.dp_size,
            "sequence_parallel": self.layout.sequence_size,
            "shard": self.layout.shard,  # "fsdp": the weights and optimizer are in shards
            "tokenizer_sha256": self.corpus["tokenizer_sha256"],
            "corpus": self.corpus,
            "windows": self.windows,
            "scheduler": self.schedule.to_state(step),
            "loss": loss,
            "recipe": self.recipe.to_dict(),
            "recipe_source": self.recipe.source,  # the YAML file: eval names runs by it
        }
        if self.init_from is not None:
            state["init_from"] = self.init_from  # where the weights at step 0 came from
        return state


class Checkpointer:
    """Writes ``run_dir``'s checkpoints (``save``) and remembers the newest one it wrote or
    resumed from (``saved_step``), so that a stop never writes the same step twice."""

    def __init__(
        self,
        accelerator,
        run_dir: Path,
        model: nn.Module,
        optimizer,
        tokenizer: Path,
        record: RunRecord,
        *,
        tokens_per_step: int,
        resumed_step: int = 0,
    ) -> None:
        self.accelerator, self.run_dir = accelerator, run_dir
        self.model, self.optimizer, self.tokenizer = model, optimizer, tokenizer
        self.record, self.tokens_per_step = record, tokens_per_step
        self.saved_step: int | None = resumed_step or None  # the checkpoint it resumed from

    def path(self, step: int) -> Path:
        """Where the checkpoint after ``step`` steps is (or will be)."""
        return ckpt.checkpoint_dir(self.run_dir) / ckpt.step_name(step)

    def save(self, step: int, loss: float | None, rng: dict | None = None) -> None:
        """Checkpoint after ``step`` completed steps (atomic; prunes to keep_last); ``loss``:
        that step's; ``rng``: this rank's RNG states as ``capture_rng`` took them then
        (default: now)."""
        accelerator = self.accelerator
        recipe = self.record.recipe
        staging = ckpt.staging_path(self.run_dir, step)
        if accelerator.is_main_process:
            staging.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        ckpt.write_rng_file(staging, accelerator.process_index, rng)
        if self.record.layout.sharded:  # every rank its shards (a collective)
            write_sharded(staging, self.model, self.optimizer, accelerator.is_main_process)
            if accelerator.is_main_process:
                ckpt.write_run_files(staging, recipe.to_yaml(), self.tokenizer)
        elif accelerator.is_main_process:
            ckpt.write_model_files(
                staging, self.model, self.optimizer, recipe.to_yaml(), self.tokenizer
            )  # the tokenizer too, for generate
            if accelerator.scaler is not None:  # fp16: the same on every rank
                ckpt.write_scaler_file(staging, accelerator.scaler)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            state = self.record.state(step, step * self.tokens_per_step, loss)
            ckpt.finish_checkpoint(staging, self.path(step), state)
            ckpt.prune_checkpoints(self.run_dir, recipe.checkpoint.keep_last)
        accelerator.wait_for_everyone()
        self.saved_step = step
