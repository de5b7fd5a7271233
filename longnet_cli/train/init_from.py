"""``train.init_from``: start a new run from trained weights (context extension, fine-tuning).

The source is a checkpoint directory, a run directory (its latest checkpoint) or a directory
written by ``longnet export``. Only the weights are taken: the new run has a fresh optimizer,
a fresh schedule, its own run directory and step 0. Anything that keeps every parameter's
shape may change (sequence length, segments, dilation rates, positions' settings, dropout,
precision, data); a change of shape is refused naming the parameter and both shapes, and the
tokenizer must be the one the weights were trained with (the token ids must mean the same).

One option may add parameters: ``model.smeared_keys`` turned on for weights trained without it.
Its gates (``blocks.N.attn.key_smear``) take their initial value, and the run records them
(``init_from_record``: ``"added"``). Every other missing parameter is refused, and so is every
parameter the source has and the new model lacks (smeared keys turned off among them): dropping
trained weights would change what the model computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from longnet_cli.core.errors import InputError
from longnet_cli.model.smeared_keys import INITIAL_LOGIT

# Parameters an option adds, by their name's last part, with the value a new one starts at: a
# source trained without the option may start a run with it (model.smeared_keys' gate logits).
ADDABLE = {"key_smear": INITIAL_LOGIT}


@dataclass(frozen=True)
class InitSource:
    """Where initial weights come from: the weights file and what is known about them."""

    path: Path  # the directory given (resolved to a checkpoint or an export)
    weights: Path  # model.safetensors (a sharded checkpoint: its first shard)
    kind: str  # "checkpoint" or "export"
    step: int | None  # training step of the weights, when known
    tokenizer_sha256: str | None

    def to_json(self) -> dict:
        return {
            "path": str(self.path),
            "kind": self.kind,
            "step": self.step,
            "tokenizer_sha256": self.tokenizer_sha256,
        }


def resolve_init_source(path: str | Path) -> InitSource:
    """The weights ``path`` names: a checkpoint, a run's latest checkpoint, or an export."""
    from longnet_cli.artifacts.checkpoints import resolve_checkpoint, weight_files

    path = Path(path)
    if not path.exists():
        raise InputError(f"train.init_from: {path} does not exist")
    exported = _read_export(path)
    if exported is not None:
        return exported
    try:
        checkpoint = resolve_checkpoint(path)
    except FileNotFoundError:
        raise InputError(
            f"train.init_from: {path} is not a checkpoint, a run directory with checkpoints, "
            "or an exported model directory"
        ) from None
    except ValueError as err:
        raise InputError(f"train.init_from: {err}") from None
    weights = weight_files(checkpoint.path)[0]  # a sharded checkpoint: its first shard
    if not weights.is_file():
        raise InputError(f"train.init_from: {weights} is missing")
    return InitSource(
        path=checkpoint.path,
        weights=weights,
        kind="checkpoint",
        step=checkpoint.step,
        tokenizer_sha256=checkpoint.state.get("tokenizer_sha256"),
    )


def _read_export(path: Path) -> InitSource | None:
    """A directory written by ``longnet export`` (None when ``path`` is not one)."""
    from longnet_cli.artifacts.exports import read_exported

    exported = read_exported(path)
    if exported is None:
        return None
    return InitSource(
        path=path,
        weights=exported.weights,
        kind="export",
        step=exported.step,
        tokenizer_sha256=exported.state.get("tokenizer_sha256"),
    )


def check_tokenizer(source: InitSource, corpus_sha256: str, corpus_dir: Path) -> None:
    """The new run's corpus must use the tokenizer the weights were trained with."""
    if source.tokenizer_sha256 is None:
        raise InputError(
            f"train.init_from: {source.path} does not record its tokenizer's sha256, so its "
            "token ids cannot be checked against the corpus's"
        )
    if source.tokenizer_sha256 != corpus_sha256:
        raise InputError(
            f"train.init_from: {source.path} was trained with tokenizer "
            f"{source.tokenizer_sha256[:12]}, but {corpus_dir} uses {corpus_sha256[:12]}: "
            "tokenize the corpus with --tokenizer pointing at the source's tokenizer.model"
        )


def load_initial_weights(model: torch.nn.Module, source: InitSource) -> list[str]:
    """Copy the source's weights into ``model``, refusing any missing, extra or reshaped
    parameter with its name and both shapes; a missing parameter an option adds (``ADDABLE``)
    takes its initial value instead. Returns the names of those added parameters."""
    from safetensors import SafetensorError

    from longnet_cli.artifacts.checkpoints import read_model_tensors, tied_aliases

    try:
        tensors = read_model_tensors(source.weights.parent)  # shards: consolidated here
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise InputError(f"train.init_from: {source.weights}: cannot read weights: {err}") from None
    expected = model.state_dict()
    aliases = tied_aliases(model)
    stored_as: dict[str, torch.Tensor] = {}
    added: list[str] = []
    for name, tensor in expected.items():
        stored = tensors.get(name)
        if stored is None and name in aliases:
            stored = tensors.get(aliases[name])
        if stored is None and _added_value(name) is not None:
            added.append(name)
            continue
        if stored is None:
            raise InputError(f"train.init_from: {source.weights} has no parameter {name}")
        if tuple(stored.shape) != tuple(tensor.shape):
            raise InputError(
                f"train.init_from: parameter {name} has shape {tuple(stored.shape)} in "
                f"{source.weights} but {tuple(tensor.shape)} in this recipe's model: only "
                "changes that keep every parameter's shape are allowed"
            )
        stored_as[name] = stored
    known = set(expected) | set(aliases.values())
    extra = sorted(set(tensors) - known)
    if extra:
        hint = ""
        if any(name.rsplit(".", 1)[-1] == "key_smear" for name in extra):
            hint = " (its smeared keys' gates: set model.smeared_keys: true to keep them)"
        raise InputError(
            f"train.init_from: {source.weights} has parameters this recipe's model lacks: "
            f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}{hint}"
        )
    with torch.no_grad():
        for name, tensor in expected.items():
            if name in stored_as:
                tensor.copy_(stored_as[name].to(tensor.dtype))
            else:
                tensor.fill_(_added_value(name))
    return added


def init_from_record(source: InitSource, added: list[str]) -> dict:
    """What a run records about its initial weights (metrics.jsonl's first line, every
    checkpoint's state.json): the source and the parameters it lacked that took their initial
    value (``added``, empty when none)."""
    return {**source.to_json(), "added": list(added)}


def _added_value(name: str) -> float | None:
    """The initial value of parameter ``name`` when an option adds it (``ADDABLE``), else None."""
    return ADDABLE.get(name.rsplit(".", 1)[-1])
