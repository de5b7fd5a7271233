"""The one model loader: what the tool wrote -> a verified ``LongNetTransformer`` in eval mode.

``load_model(PATH)`` is the public way in, for scripts and notebooks: PATH is a checkpoint
directory, a run directory (its newest intact checkpoint, the one resume would fall back to) or a
``longnet export`` directory, checked against the sizes and sha256s its state.json records before
anything is loaded (a flipped bit in a tensor loads without complaint otherwise). ``longnet eval``
and ``longnet generate`` resolve their checkpoint themselves (``artifacts.resolve``) and load it
through ``load_checkpoint_model``, each wording a failure as it always has.

The model is rebuilt from the recipe the checkpoint saved, its vocabulary read from the weights
file (tied weights are stored once, under either name). Also here: the tokenizer a checkpoint was
trained with (``find_checkpoint_tokenizer``), for generate and export. ``model/`` stays free of I/O.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from longnet_cli.artifacts.layout import (
    CHECKPOINTS_DIR,
    STATE_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
)
from longnet_cli.core.errors import DamagedFileError, InputError, one_line, reading

if TYPE_CHECKING:
    import torch

    from longnet_cli.artifacts.checkpoints import Checkpoint
    from longnet_cli.config import Recipe
    from longnet_cli.model.transformer import LongNetTransformer

TIED_NAMES = ("token_embedding.weight", "head.weight")  # a tied weight is stored under either


class WeightsLoadError(DamagedFileError):
    """Weights that do not load into the model the checkpoint's recipe describes (or are no
    safetensors file at all); the message names the weights file, ``__cause__`` is the library's
    own error (the commands word it each their own way)."""


def load_model(
    path: Path | str,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
) -> LongNetTransformer:
    """The model of a checkpoint, a run directory (its newest intact checkpoint) or an export,
    verified against its recorded hashes, in eval mode on ``device`` (None: the CPU) in
    ``dtype`` (a torch dtype, "fp32"/"bf16"/"fp16" or "float32"/...; None: as saved, float32).

    Raises InputError for a path that holds no checkpoint, DamagedFileError naming the file
    for one that fails verification or does not load (a run: when none of its checkpoints is
    intact, naming each).
    """
    from longnet_cli.artifacts.checkpoints import DamagedCheckpoint, verify_checkpoint
    from longnet_cli.artifacts.exports import read_exported

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such checkpoint, run or export directory")
    try:
        if (path / STATE_FILE).exists() or read_exported(path) is not None:
            checkpoint = verify_checkpoint(path)  # an export's state.json hashes its own files
        else:
            checkpoint = _newest_intact(path)
    except DamagedCheckpoint as err:  # names the file
        raise DamagedFileError(one_line(err)) from None
    return load_checkpoint_model(checkpoint, device=device, dtype=dtype, verify=False)


def load_checkpoint_model(
    checkpoint: Checkpoint,
    recipe: Recipe | None = None,
    *,
    vocab_size: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    verify: bool = True,
) -> LongNetTransformer:
    """``recipe``'s model (None: the one the checkpoint saved) with the checkpoint's weights, in
    eval mode. ``vocab_size`` None: read from the weights file. ``verify``: the weights against
    their recorded sha256 first (``verify_weights``). A failure to load is a WeightsLoadError."""
    if verify:
        verify_weights(checkpoint)
    if recipe is None:
        recipe = saved_recipe(checkpoint)
    from longnet_cli.artifacts.checkpoints import load_model_weights, weight_files

    weights = weight_files(checkpoint.path)[0]  # a sharded checkpoint: named by its first shard
    try:
        model = recipe.model.build(vocab_size or checkpoint_vocab_size(checkpoint.path))
        load_model_weights(checkpoint.path, model)  # a sharded one: consolidated here
    except Exception as err:  # a truncated or foreign file, or weights of another model
        raise WeightsLoadError(
            f"{weights}: cannot load the weights into the model that "
            f"{checkpoint.path / STATE_FILE} describes: {one_line(err)}"
        ) from err
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=_dtype(dtype))
    return model.eval()


def verify_weights(checkpoint: Checkpoint) -> None:
    """A checkpoint's weights (model.safetensors, or every rank's shard file) against the size
    and sha256 its state.json records (``files``), before anything reads them: a flipped bit in
    a tensor loads without complaint. Checkpoints written before hashes were recorded have
    nothing to compare: not checked."""
    from longnet_cli.artifacts.checkpoints import weight_files
    from longnet_cli.core.files import sha256_file

    files = checkpoint.state.get("files")
    if files is None:
        return
    for weights in weight_files(checkpoint.path):
        entry = files.get(weights.name) if isinstance(files, dict) else None
        if not isinstance(entry, dict):
            raise DamagedFileError(
                f"{checkpoint.path / STATE_FILE}: 'files' records no sha256 of {weights.name}"
            )
        with reading(weights, "model weights"):
            size = weights.stat().st_size
            digest = sha256_file(weights) if size == entry.get("bytes") else None
        if digest is None:
            raise DamagedFileError(
                f"{weights}: {size} bytes, state.json records {entry.get('bytes')} (truncated or "
                "replaced)"
            )
        if digest != entry.get("sha256"):
            raise DamagedFileError(
                f"{weights}: sha256 {digest[:16]}... does not match the "
                f"{str(entry.get('sha256'))[:16]}... state.json records (corrupted)"
            )


def checkpoint_vocab_size(path: Path) -> int:
    """The vocabulary of the checkpoint (or export) at ``path``: its embedding's rows, from
    model.safetensors or the shards' headers."""
    from longnet_cli.artifacts.sharded import is_sharded, sharded_shapes

    if not is_sharded(path):
        return weights_vocab_size(Path(path) / WEIGHTS_FILE)
    shapes = sharded_shapes(path)
    name = next((name for name in TIED_NAMES if name in shapes), TIED_NAMES[1])
    return shapes[name][0]


def weights_vocab_size(weights: Path) -> int:
    """The vocabulary of a weights file: the rows of its embedding (or tied head) tensor."""
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as handle:
        names = set(handle.keys())
        name = next((name for name in TIED_NAMES if name in names), TIED_NAMES[1])
        return handle.get_slice(name).get_shape()[0]


def saved_recipe(checkpoint: Checkpoint) -> Recipe:
    """The resolved recipe a checkpoint saved in its state.json (what rebuilds its model)."""
    from longnet_cli.config import Recipe

    return Recipe.from_saved(checkpoint.state["recipe"], source=str(checkpoint.path))


def find_checkpoint_tokenizer(
    checkpoint: Checkpoint, recipe: Recipe, explicit: Path | None
) -> tuple[Path, Any, str]:
    """(path, SentencePieceProcessor, where it came from) of the tokenizer a checkpoint was
    trained with: ``explicit``, else the checkpoint's copy, else the run's corpus's, checked
    against the sha256 the checkpoint recorded (``longnet generate`` and ``longnet export``)."""
    from longnet_cli.core.files import sha256_bytes
    from longnet_cli.data.tokenizer import tokenizer_from_bytes

    expected = checkpoint.state.get("tokenizer_sha256")
    candidates: list[tuple[Path, str]] = []
    if explicit is not None:
        if not Path(explicit).is_file():
            raise InputError(f"--tokenizer {explicit}: no such file")
        candidates.append((Path(explicit), "--tokenizer"))
    else:
        candidates.append((checkpoint.path / TOKENIZER_FILE, "the checkpoint's copy"))
        candidates.append((Path(recipe.data.shards) / TOKENIZER_FILE, "the run's corpus"))
    for path, origin in candidates:
        if not path.is_file():
            continue
        data = path.read_bytes()
        if expected and sha256_bytes(data) != expected:
            raise InputError(
                f"{path} ({origin}) has sha256 {sha256_bytes(data)}, but {checkpoint.path} was "
                f"trained with tokenizer {expected}; pass the right one with --tokenizer FILE"
            )
        try:
            return path, tokenizer_from_bytes(data), origin
        except Exception as err:  # not a SentencePiece model
            raise InputError(f"{path}: not a SentencePiece model: {err}") from None
    looked = " and ".join(str(path) for path, _ in candidates)
    raise InputError(f"no tokenizer found (looked for {looked}); pass one with --tokenizer FILE")


def _newest_intact(run_dir: Path) -> Checkpoint:
    """A run directory's newest checkpoint that verifies; InputError when it has none at all,
    DamagedFileError naming each one when none is intact."""
    from longnet_cli.artifacts.checkpoints import list_checkpoints, newest_intact_checkpoint

    if not list_checkpoints(run_dir):
        raise InputError(
            f"no checkpoint found in {run_dir} (looked for {run_dir}/{STATE_FILE}, "
            f"{run_dir}/{CHECKPOINTS_DIR}/step-*/ and an export's config.json)"
        )
    checkpoint, _, reasons = newest_intact_checkpoint(run_dir)
    if checkpoint is None:
        raise DamagedFileError(f"{run_dir}: no intact checkpoint ({'; '.join(reasons)})")
    return checkpoint


def _dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A torch dtype from a dtype, a precision name ("bf16") or a torch dtype name."""
    if dtype is None or not isinstance(dtype, str):
        return dtype
    from longnet_cli.runtime import PRECISIONS

    for precision in PRECISIONS.values():
        if dtype in (precision.name, precision.dtype_name):
            return precision.dtype
    names = ", ".join(n for p in PRECISIONS.values() for n in (p.name, p.dtype_name))
    raise InputError(f"dtype {dtype!r} is not one of {names}")
