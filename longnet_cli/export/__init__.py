"""Stage: checkpoint -> a Hugging Face-style model directory (``longnet export``).

The directory holds
    config.json              model_type "longnet", every model key of the recipe, the vocabulary,
                             the reach, the special token ids, auto_map to the files below
    model.safetensors        the weights under longnet's own names (tied weights once, as
                             token_embedding.weight), with the {"format": "pt"} metadata
                             transformers asks for
    tokenizer.model          the corpus's SentencePiece model, checked against the checkpoint's
    tokenizer_config.json    special tokens and auto_map to tokenization_longnet.LongNetTokenizer
    generation_config.json   longnet generate's defaults: sampling at 0.8, end of document stops
    configuration_longnet.py, modeling_longnet.py, tokenization_longnet.py
                             two-line modules re-exporting ``longnet_cli.hf``: loading needs
                             ``pip install 'longnet-cli[hf]'`` but never the run directory
    state.json               the checkpoint's state (step, tokens, tokenizer sha256, the
                             resolved recipe), ``files`` with the sha256 and size of the
                             weights and the tokenizer, and an ``export`` record: longnet reads
                             the directory as a checkpoint (``artifacts.load_model``,
                             ``verify_checkpoint``; ``artifacts.exports`` reads it back)
    README.md                the model card (``card.py``)

Written into a staging directory beside ``--out``, fsynced, then renamed into place; an
existing non-empty ``--out`` is refused unless ``force``, and then replaced only once the new
directory is complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longnet_cli import __version__
from longnet_cli.artifacts.exports import CONFIG_FILE, MODEL_TYPE, ExportedModel, read_exported
from longnet_cli.artifacts.layout import STATE_FILE, TOKENIZER_FILE, WEIGHTS_FILE
from longnet_cli.artifacts.loading import TIED_NAMES
from longnet_cli.core.errors import InputError, LongnetError
from longnet_cli.core.files import fsync_path, sha256_file

__all__ = [  # ExportedModel and read_exported live in artifacts.exports, below every reader
    "ExportResult", "ExportedModel", "export_model", "load_exported_model", "read_exported",
]  # fmt: skip

ARCHITECTURE = "LongNetForCausalLM"
TIED_NAME, TIED_ALIAS = TIED_NAMES  # "token_embedding.weight", "head.weight"
VERIFIED_FILES = (WEIGHTS_FILE, TOKENIZER_FILE)  # hashed in state.json's "files"

# The modules an exported directory carries: transformers copies them and imports the classes
# named in auto_map. They hold no code of their own, so an export never goes stale.
REMOTE_CODE = {
    "configuration_longnet.py": ("longnet_cli.hf.configuration_longnet", "LongNetHFConfig"),
    "modeling_longnet.py": ("longnet_cli.hf.modeling_longnet", "LongNetForCausalLM"),
    "tokenization_longnet.py": ("longnet_cli.hf.tokenization_longnet", "LongNetTokenizer"),
}
AUTO_MAP = {
    "AutoConfig": "configuration_longnet.LongNetHFConfig",
    "AutoModelForCausalLM": "modeling_longnet.LongNetForCausalLM",
}
# longnet generate's defaults (sampling at 0.8, no top-k or top-p, 256 new tokens)
GENERATION_DEFAULTS = {
    "do_sample": True,
    "temperature": 0.8,
    "top_k": 0,
    "top_p": 1.0,
    "max_new_tokens": 256,
}


@dataclass
class ExportResult:
    """What ``export_model`` wrote."""

    out: Path
    checkpoint: Path
    step: int
    parameters: int
    files: list[str]
    bytes: int
    replaced: bool  # an existing --out was replaced (--force)

    def to_json(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "checkpoint": str(self.checkpoint),
            "step": self.step,
            "parameters": self.parameters,
            "files": self.files,
            "bytes": self.bytes,
            "replaced": self.replaced,
        }


def export_model(
    source: Path,
    out: Path,
    *,
    force: bool = False,
    tokenizer: Path | None = None,
    on_note: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export the checkpoint ``source`` (or a run directory's latest) to the directory ``out``.

    Raises InputError (exit code 2) for a source that is no checkpoint or a damaged one, a
    tokenizer that cannot be found or does not match, and an ``out`` that exists and is not
    empty (unless ``force``).
    """
    from longnet_cli.artifacts.resolve import resolve_verified
    from longnet_cli.config import Recipe
    from longnet_cli.export.card import model_card

    note = on_note or (lambda message: None)
    checkpoint = resolve_verified(Path(source))  # a damaged file is refused, not exported
    out = Path(out)
    replaced = _check_out(out, force, checkpoint.path)
    target = out.resolve()  # "." or "a/.." have no name to stage beside
    recipe = Recipe.from_saved(checkpoint.state["recipe"], source=str(checkpoint.path))
    tokenizer_path, processor = _find_tokenizer(checkpoint, recipe, tokenizer)
    tensors = _read_weights(checkpoint.path, recipe)  # a sharded one: consolidated here
    vocab_size = int(tensors[TIED_NAME if TIED_NAME in tensors else TIED_ALIAS].shape[0])
    note(f"exporting {checkpoint.path} (step {checkpoint.step}) to {out}")

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        from safetensors.torch import save_file

        save_file(tensors, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        shutil.copyfile(tokenizer_path, staging / TOKENIZER_FILE)
        config = _config(recipe, vocab_size, processor)
        texts = {
            CONFIG_FILE: _json(config),
            "generation_config.json": _json(_generation_config(processor)),
            "tokenizer_config.json": _json(_tokenizer_config(processor)),
            "README.md": model_card(checkpoint, recipe, target.name, vocab_size, _count(tensors)),
        }
        for name, (module, cls) in REMOTE_CODE.items():
            texts[name] = (
                f'"""{cls} of longnet (needs `pip install \'longnet-cli[hf]\'`)."""\n\n'
                f"from {module} import {cls}\n\n__all__ = [{cls!r}]\n"
            )
        for name, text in texts.items():
            (staging / name).write_text(text, encoding="utf-8")
        (staging / STATE_FILE).write_text(_json(_state(checkpoint, staging)), encoding="utf-8")
        mask = _umask()  # mkdtemp's 0o700 (and safetensors' 0o600) are not for publishing
        for path in staging.iterdir():
            os.chmod(path, 0o666 & ~mask)
            fsync_path(path)
        os.chmod(staging, 0o777 & ~mask)
        _publish(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    files = sorted(p.name for p in out.iterdir())
    return ExportResult(
        out=out,
        checkpoint=checkpoint.path,
        step=checkpoint.step,
        parameters=_count(tensors),
        files=files,
        bytes=sum((out / name).stat().st_size for name in files),
        replaced=replaced,
    )


def load_exported_model(path: Path, device: str = "cpu"):
    """The LongNetTransformer of an exported directory, in eval mode on ``device``."""
    from longnet_cli.artifacts.checkpoints import load_model_weights
    from longnet_cli.model.transformer import LongNetTransformer

    exported = read_exported(path)
    if exported is None:
        raise InputError(f"{path}: not an exported longnet model (no {CONFIG_FILE} of model_type "
                         f"{MODEL_TYPE!r})")  # fmt: skip
    try:
        model = LongNetTransformer(**exported.model_kwargs())
        load_model_weights(exported.path, model)
    except Exception as err:  # a bad key value or a truncated file: name it
        raise LongnetError(f"{exported.weights}: cannot load the model: {err}") from err
    return model.to(device).eval()


# -- checks ---------------------------------------------------------------------------------------


def _check_out(out: Path, force: bool, checkpoint: Path) -> bool:
    """Whether ``out`` will replace a non-empty directory; refuses what must not be replaced."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a directory")
    target, cwd = out.resolve(), Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise InputError(f"--out {out}: is the current directory or holds it; name a new one")
    if not out.exists() or not any(out.iterdir()):
        return False
    if not force:
        raise InputError(f"--out {out}: exists and is not empty; pass --force to replace it")
    keep = checkpoint.resolve()
    if keep == target or target in keep.parents:
        raise InputError(
            f"--out {out}: would replace the checkpoint it exports ({keep}); choose another --out"
        )
    return True


def _find_tokenizer(checkpoint, recipe, explicit: Path | None) -> tuple[Path, Any]:
    """The tokenizer the checkpoint was trained with, found as ``longnet generate`` finds it."""
    from longnet_cli.artifacts.loading import find_checkpoint_tokenizer

    path, processor, _ = find_checkpoint_tokenizer(checkpoint, recipe, explicit)
    return path, processor


def _read_weights(checkpoint: Path, recipe) -> dict:
    """The checkpoint's tensors (its shards consolidated, when sharded), checked name by name
    and shape by shape against the recipe's model; a tied weight stored as head.weight is
    renamed token_embedding.weight."""
    from longnet_cli.artifacts.checkpoints import read_model_tensors, weight_files

    file = weight_files(checkpoint)[0]  # what messages name
    try:
        tensors = read_model_tensors(checkpoint)
    except Exception as err:  # missing, truncated or foreign
        raise LongnetError(f"{file}: cannot read the model weights: {err}") from None
    if TIED_NAME not in tensors and TIED_ALIAS not in tensors:
        raise InputError(f"{file}: no {TIED_NAME} (not a longnet checkpoint's weights)")
    tied = recipe.model.tie_embeddings
    if tied and TIED_NAME not in tensors:
        tensors[TIED_NAME] = tensors.pop(TIED_ALIAS)
    if tied:
        tensors.pop(TIED_ALIAS, None)
    vocab_size = int(tensors[TIED_NAME].shape[0])
    expected = {
        name: tuple(value.shape)
        for name, value in recipe.model.build(vocab_size, device="meta").state_dict().items()
        if not (tied and name == TIED_ALIAS)
    }
    for name in sorted(expected.keys() - tensors.keys()):
        raise InputError(f"{file}: missing weight {name} of the recipe's model")
    for name in sorted(tensors.keys() - expected.keys()):
        raise InputError(f"{file}: unexpected weight {name} (not in the recipe's model)")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise InputError(
                f"{file}: weight {name} has shape {tuple(tensors[name].shape)}, the recipe's "
                f"model has {shape}"
            )
    return {name: tensor.contiguous() for name, tensor in tensors.items()}


# -- the files ------------------------------------------------------------------------------------


def _config(recipe, vocab_size: int, processor) -> dict[str, Any]:
    from longnet_cli.model.config import MODEL_KEYS

    model = recipe.model.to_model_kwargs(vocab_size)
    config: dict[str, Any] = {
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPE,
        "auto_map": AUTO_MAP,
        "vocab_size": vocab_size,
        **{key: model[key] for key in MODEL_KEYS},
        "reach": max(model["segment_lengths"]),
        "tie_word_embeddings": model["tie_embeddings"],
        **_special_ids(processor),
        "torch_dtype": "float32",
        "longnet_version": __version__,
    }
    config["segment_lengths"] = list(config["segment_lengths"])
    config["dilation_rates"] = list(config["dilation_rates"])
    return config


def _special_ids(processor) -> dict[str, int | None]:
    """bos/eos/pad ids for transformers: no BOS; padding, if ever, with EOS (longnet's
    corpora end every document with it), so generate needs no pad warning."""
    eos = processor.eos_id()
    eos = eos if eos >= 0 else None
    bos = processor.bos_id()
    return {"bos_token_id": bos if bos >= 0 else None, "eos_token_id": eos, "pad_token_id": eos}


def _generation_config(processor) -> dict[str, Any]:
    return {**_special_ids(processor), **GENERATION_DEFAULTS}


def _tokenizer_config(processor) -> dict[str, Any]:
    def piece(token_id: int) -> str | None:
        return processor.id_to_piece(token_id) if token_id >= 0 else None

    return {
        "tokenizer_class": "LongNetTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_longnet.LongNetTokenizer", None]},
        "eos_token": piece(processor.eos_id()),
        "unk_token": piece(processor.unk_id()),
        "bos_token": piece(processor.bos_id()),
        "pad_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }


def _state(checkpoint, staging: Path) -> dict[str, Any]:
    """The checkpoint's state.json content with ``files`` (sha256 and size, as checkpoints
    record them) of the files longnet reads here, the weights and the tokenizer (not of the
    card or the configs, which people edit), plus where and when it was exported."""
    files = {}
    for name in VERIFIED_FILES:
        path = staging / name
        files[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return {
        **checkpoint.state,
        "files": files,
        "export": {
            "from": str(checkpoint.path.resolve()),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "longnet_version": __version__,
        },
    }


def _json(value: Any) -> str:
    return json.dumps(value, indent=2) + "\n"


def _count(tensors: dict) -> int:
    return sum(tensor.numel() for tensor in tensors.values())


# -- publishing -----------------------------------------------------------------------------------


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _publish(staging: Path, out: Path) -> None:
    """Rename the complete ``staging`` directory to ``out``. An existing ``out`` is first
    renamed aside and deleted after: at every moment ``out`` is the old directory, the new one,
    or (between the two renames) absent with the old one beside it."""
    fsync_path(staging)
    old = None
    if out.exists():
        if any(out.iterdir()):
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        else:
            out.rmdir()
    os.replace(staging, out)
    fsync_path(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
