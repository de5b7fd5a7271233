"""Recipes: the YAML files that say what to train, typed and checked before any work starts.

A recipe has seven sections, each a dataclass that validates itself in ``__post_init__``:

    data        DataConfig        which tokenized corpus, how windows are drawn from it
    model       ModelConfig       LongNetTransformer hyper-parameters
    train       TrainConfig       sequence length, batch, optimizer, schedule, precision
    checkpoint  CheckpointConfig  how often to save, how many to keep
    log         LogConfig         how often to log, trackers
    eval        EvalConfig        evaluation during training
    parallel    ParallelConfig    sequence parallelism

``data``, ``model``, ``train`` and ``checkpoint`` must be present in a YAML recipe; the others
default. Lengths are written ``4096``, ``32K`` or ``1M`` (K = 1024, M = 1024**2) and stored as
ints. Every problem is a ``RecipeError`` (an InputError: exit code 2) naming the key path and the
file, e.g. ``model.segment_lengths in recipes/x.yaml: ...``; an unknown key suggests the closest
valid one, as pip-tools does. Checks that need the corpus live in ``check_against_corpus``.

Each stage gets its own section (``recipe.train``, ``recipe.model`` ...), not the whole recipe.
No torch import at module level: loading a recipe stays cheap for the CLI.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import yaml

from longnet_cli.core.errors import InputError, one_line
from longnet_cli.core.lengths import parse_length

if TYPE_CHECKING:
    import torch

    from longnet_cli.data.shards import TokenizedCorpus
    from longnet_cli.model.transformer import LongNetTransformer

# Mirrors of the model's constants (model.positions.POSITION_KINDS, model.kernels.BACKENDS),
# kept here so that loading a recipe does not import torch; tests/config/test_recipe.py checks them.
POSITIONS = ("rotary", "xpos", "none")
BACKENDS = ("auto", "torch", "flash-attn", "math")
SAMPLING_MODES = ("stream", "document")
PRECISIONS = ("fp32", "bf16", "fp16")

# Key paths that may differ between a checkpoint's recipe and the recipe a run resumes with.
# A section name alone ("log") covers all of its keys.
SAFE_ON_RESUME = (
    "train.steps",
    "train.threads",
    "train.deterministic",  # kernel choice, not the math: bit-exact on a CPU either way
    "train.init_from",  # read at step 0 only: a resumed run continues from its checkpoint
    "checkpoint.every",
    "checkpoint.keep_last",
    "log",
    "eval",
    "data.eval_shards",
    "parallel.sequence",  # windows depend on the data-parallel layout only
)


class RecipeError(InputError):
    """A recipe problem: ``key`` (a path like ``model.dim``), what is wrong, and where.

    ``source`` (the YAML file, or the ``--set`` override that gave the value) is filled in by the
    loader when the error comes from a section's own validation.
    """

    def __init__(
        self,
        problem: str,
        key: str | None = None,
        source: str | None = None,
        *,
        unknown_key: bool = False,
    ) -> None:
        super().__init__(problem)
        self.problem = problem
        self.key = key
        self.source = source
        self.unknown_key = unknown_key

    def __str__(self) -> str:
        where = f" in {self.source}" if self.source else ""
        if self.unknown_key:  # "unknown key 'model.dimm' in x.yaml; did you mean 'model.dim'?"
            return f"unknown key '{self.key}'{where}{self.problem}"
        if self.key is None:
            return f"{self.source}: {self.problem}" if self.source else self.problem
        return f"{self.key}{where}: {self.problem}"


# -- field kinds ----------------------------------------------------------------------------------
#
# Each field carries a ``kind`` in its metadata; ``_Section.__post_init__`` checks and normalises
# the value by kind (e.g. "32K" -> 32768), then the section's ``_check`` does cross-field checks.


def _kind(kind: str, **options: Any) -> dict[str, Any]:
    """Field metadata: a kind (int, float, bool, str, choice, length, lengths, ints, floats) and
    options: ``minimum`` (ints), ``optional`` (None allowed), ``choices``, ``size`` (lists)."""
    return {"kind": kind, **options}


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_int(value: Any, key: str, minimum: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecipeError(f"must be an integer, got {value!r} ({_type_name(value)})", key)
    if minimum is not None and value < minimum:
        wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise RecipeError(f"must be {wanted}, got {value}", key)
    return value


def _check_float(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecipeError(f"must be a number, got {value!r} ({_type_name(value)})", key)
    if not math.isfinite(value):
        raise RecipeError(f"must be a finite number, got {value!r}", key)
    return float(value)


def _check_length(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise RecipeError(
            f"must be a length such as 4096, 32K or 1M, got {value!r} ({_type_name(value)})", key
        )
    try:
        return parse_length(value)
    except ValueError as err:
        raise RecipeError(str(err), key) from None


def _check_list(value: Any, key: str, size: int | None) -> list:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise RecipeError(f"must be a list such as [1, 2, 4], got {value!r}", key)
    if size is not None and len(value) != size:
        raise RecipeError(f"must be a list of {size} values, got {len(value)}: {value!r}", key)
    return list(value)


def _normalise(value: Any, key: str, meta: Mapping[str, Any]) -> Any:
    """Check ``value`` against its field's kind; return it in stored form."""
    kind = meta["kind"]
    if value is None and meta.get("optional"):
        return None
    if kind == "int":
        return _check_int(value, key, meta.get("minimum"))
    if kind == "float":
        return _check_float(value, key)
    if kind == "bool":
        if not isinstance(value, bool):
            raise RecipeError(f"must be true or false, got {value!r} ({_type_name(value)})", key)
        return value
    if kind == "str":
        if not isinstance(value, str) or not value.strip():
            raise RecipeError(f"must be a non-empty string, got {value!r}", key)
        return value
    if kind == "choice":
        choices = meta["choices"]
        if value not in choices:
            listed = ", ".join(repr(choice) for choice in choices)
            raise RecipeError(f"must be one of {listed}; got {value!r}", key)
        return value
    if kind == "length":
        return _check_length(value, key)
    items = _check_list(value, key, meta.get("size"))
    if kind == "lengths":
        return [_check_length(item, f"{key}[{i}]") for i, item in enumerate(items)]
    if kind == "ints":
        return [
            _check_int(item, f"{key}[{i}]", meta.get("minimum")) for i, item in enumerate(items)
        ]
    if kind == "floats":
        return [_check_float(item, f"{key}[{i}]") for i, item in enumerate(items)]
    raise AssertionError(f"unknown field kind {kind!r}")


@dataclass(kw_only=True)
class _Section:
    """Base of the recipe sections: per-field checks by kind, then the section's ``_check``."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for spec in fields(self):
            key = f"{self.SECTION}.{spec.name}"
            setattr(self, spec.name, _normalise(getattr(self, spec.name), key, spec.metadata))
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


# -- sections -------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class DataConfig(_Section):
    """Which tokenized corpus to train on and how training windows are drawn from it.

    Relative paths resolve against the current directory of the process, not the recipe file.
    """

    SECTION: ClassVar[str] = "data"

    # tokenized corpus directory (longnet tokenize --out)
    shards: str = field(metadata=_kind("str"))
    sampling: str = field(default="stream", metadata=_kind("choice", choices=SAMPLING_MODES))
    # held-out corpus; None: a slice
    eval_shards: str | None = field(default=None, metadata=_kind("str", optional=True))


@dataclass(kw_only=True)
class ModelConfig(_Section):
    """LongNetTransformer hyper-parameters; ``vocab_size`` None means "the corpus's vocabulary"."""

    SECTION: ClassVar[str] = "model"

    dim: int = field(metadata=_kind("int", minimum=1))
    depth: int = field(metadata=_kind("int", minimum=1))
    heads: int = field(metadata=_kind("int", minimum=1))
    dim_head: int = field(default=64, metadata=_kind("int", minimum=1))
    ff_mult: float = field(default=4.0, metadata=_kind("float"))
    segment_lengths: list[int] = field(metadata=_kind("lengths"))
    dilation_rates: list[int] = field(metadata=_kind("ints", minimum=1))
    positions: str = field(default="rotary", metadata=_kind("choice", choices=POSITIONS))
    parallel_blocks: bool = field(default=False, metadata=_kind("bool"))
    tie_embeddings: bool = field(default=True, metadata=_kind("bool"))
    qk_norm: bool = field(default=False, metadata=_kind("bool"))
    dropout: float = field(default=0.0, metadata=_kind("float"))
    activation_checkpointing: bool = field(default=False, metadata=_kind("bool"))
    backend: str = field(default="auto", metadata=_kind("choice", choices=BACKENDS))
    vocab_size: int | None = field(default=None, metadata=_kind("int", minimum=1, optional=True))

    def _check(self) -> None:
        # The same rules as model.transformer.LongNetConfig, reported with key paths.
        if self.ff_mult <= 0 or int(self.ff_mult * self.dim) < 1:
            raise self._error(
                "ff_mult",
                f"must be positive (feed-forward width ff_mult * dim), got {self.ff_mult}",
            )
        if not self.segment_lengths:
            raise self._error("segment_lengths", "must name at least one branch, e.g. [2K, 4K]")
        if len(self.segment_lengths) != len(self.dilation_rates):
            raise self._error(
                "dilation_rates",
                f"has {len(self.dilation_rates)} values but model.segment_lengths has "
                f"{len(self.segment_lengths)}: give one dilation rate per segment length",
            )
        if self.positions != "none" and self.dim_head % 2:
            raise self._error(
                "dim_head",
                f"must be even with positions {self.positions!r}, got {self.dim_head}; "
                "change model.dim_head or set model.positions: none",
            )
        if not 0.0 <= self.dropout < 1.0:
            raise self._error("dropout", f"must be in [0, 1), got {self.dropout}")

    def to_model_kwargs(self, vocab_size: int | None = None) -> dict[str, Any]:
        """The keyword arguments of ``LongNetTransformer(...)`` for this section.

        ``vocab_size`` (usually from ``check_against_corpus``) overrides a missing
        ``model.vocab_size``; when both are given they must agree.
        """
        if vocab_size is not None:
            _check_int(vocab_size, "vocab_size", 1)
        if self.vocab_size is not None and vocab_size is not None and vocab_size != self.vocab_size:
            raise self._error(
                "vocab_size", f"is {self.vocab_size} but the model is built for {vocab_size} tokens"
            )
        num_tokens = vocab_size if vocab_size is not None else self.vocab_size
        if num_tokens is None:
            raise self._error(
                "vocab_size", "is not set: take it from the corpus (check_against_corpus)"
            )
        return {
            "num_tokens": num_tokens,
            "dim": self.dim,
            "depth": self.depth,
            "dim_head": self.dim_head,
            "heads": self.heads,
            "ff_mult": self.ff_mult,
            "segment_lengths": tuple(self.segment_lengths),
            "dilation_rates": tuple(self.dilation_rates),
            "positions": self.positions,
            "parallel_blocks": self.parallel_blocks,
            "tie_embeddings": self.tie_embeddings,
            "qk_norm": self.qk_norm,
            "dropout": self.dropout,
            "activation_checkpointing": self.activation_checkpointing,
            "backend": self.backend,
        }

    def build(
        self, vocab_size: int | None = None, device: str | torch.device | None = None
    ) -> LongNetTransformer:
        """A freshly initialised LongNetTransformer (on ``device``, e.g. "meta", if given)."""
        import torch

        from longnet_cli.model.transformer import LongNetTransformer

        kwargs = self.to_model_kwargs(vocab_size)
        if device is None:
            return LongNetTransformer(**kwargs)
        with torch.device(device):
            return LongNetTransformer(**kwargs)


@dataclass(kw_only=True)
class TrainConfig(_Section):
    """Sequence length, batch, AdamW, warmup + cosine schedule, precision, seed."""

    SECTION: ClassVar[str] = "train"

    seq_len: int = field(metadata=_kind("length"))
    micro_batch_size: int = field(default=1, metadata=_kind("int", minimum=1))
    grad_accum: int = field(default=1, metadata=_kind("int", minimum=1))
    steps: int = field(metadata=_kind("int", minimum=1))
    lr: float = field(default=3e-4, metadata=_kind("float"))
    # cosine decays to lr * min_lr_ratio
    min_lr_ratio: float = field(default=0.1, metadata=_kind("float"))
    warmup_steps: int = field(default=0, metadata=_kind("int", minimum=0))
    weight_decay: float = field(default=0.1, metadata=_kind("float"))
    betas: list[float] = field(
        default_factory=lambda: [0.9, 0.95], metadata=_kind("floats", size=2)
    )
    # max global grad norm; 0 disables clipping
    grad_clip: float = field(default=1.0, metadata=_kind("float"))
    precision: str = field(default="fp32", metadata=_kind("choice", choices=PRECISIONS))
    seed: int = field(default=0, metadata=_kind("int", minimum=0))
    # positions per head + cross-entropy chunk
    loss_chunk: int = field(default=1024, metadata=_kind("length"))
    # torch CPU threads
    threads: int | None = field(default=None, metadata=_kind("int", minimum=1, optional=True))
    # deterministic kernels where they exist (torch.use_deterministic_algorithms, cuDNN, cuBLAS)
    deterministic: bool = field(default=False, metadata=_kind("bool"))
    # start from these weights (a checkpoint, a run directory or a `longnet export` directory):
    # fresh optimizer, schedule and step 0; every parameter's shape must match
    init_from: str | None = field(default=None, metadata=_kind("str", optional=True))

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
class CheckpointConfig(_Section):
    """Save every ``every`` steps (and at the end); keep the ``keep_last`` newest checkpoints."""

    SECTION: ClassVar[str] = "checkpoint"

    every: int = field(metadata=_kind("int", minimum=1))
    keep_last: int = field(default=3, metadata=_kind("int", minimum=1))


@dataclass(kw_only=True)
class LogConfig(_Section):
    """Metrics to ``metrics.jsonl`` every ``every`` steps; optional tensorboard and wandb."""

    SECTION: ClassVar[str] = "log"

    every: int = field(default=10, metadata=_kind("int", minimum=1))
    tensorboard: bool = field(default=False, metadata=_kind("bool"))
    # Weights & Biases through accelerate's tracker (WANDB_MODE=offline works without network)
    wandb: bool = field(default=False, metadata=_kind("bool"))


@dataclass(kw_only=True)
class EvalConfig(_Section):
    """Evaluation during training: every ``every`` steps (0 = never) on held-out documents.

    Data: ``eval.data`` if set, else ``data.eval_shards``, else a held-out slice of ``data.shards``.
    """

    SECTION: ClassVar[str] = "eval"

    every: int = field(default=0, metadata=_kind("int", minimum=0))
    # [] means [train.seq_len]
    contexts: list[int] = field(default_factory=list, metadata=_kind("lengths"))
    docs: int = field(default=8, metadata=_kind("int", minimum=1))
    data: str | None = field(default=None, metadata=_kind("str", optional=True))

    def context_lengths(self, seq_len: int) -> list[int]:
        """The contexts to evaluate: ``contexts``, or ``[seq_len]`` when none are given."""
        return list(self.contexts) or [seq_len]


@dataclass(kw_only=True)
class ParallelConfig(_Section):
    """``sequence`` ranks split each sequence; world size = sequence x data-parallel degree."""

    SECTION: ClassVar[str] = "parallel"

    sequence: int = field(default=1, metadata=_kind("int", minimum=1))


SECTIONS: dict[str, type[_Section]] = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "checkpoint": CheckpointConfig,
    "log": LogConfig,
    "eval": EvalConfig,
    "parallel": ParallelConfig,
}
REQUIRED_SECTIONS = ("data", "model", "train", "checkpoint")


def key_paths() -> list[str]:
    """Every valid key path, ``data.shards`` ... ``parallel.sequence``."""
    return [f"{name}.{key}" for name, section in SECTIONS.items() for key in section.key_names()]


@dataclass
class Recipe:
    """A whole recipe: the seven sections, validated, plus the file it came from."""

    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    checkpoint: CheckpointConfig
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    source: str = field(default="<dict>", compare=False)

    def __post_init__(self) -> None:
        for name, section_type in SECTIONS.items():
            if not isinstance(getattr(self, name), section_type):
                raise TypeError(f"Recipe.{name} must be a {section_type.__name__}")
        sequence = self.parallel.sequence
        if self.train.seq_len % sequence:
            raise RecipeError(
                f"must be divisible by parallel.sequence ({sequence}) so that each rank holds an "
                f"equal chunk; got {self.train.seq_len}",
                "train.seq_len",
            )

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The resolved values as plain YAML/JSON types (lengths as ints); ``source`` left out."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def to_yaml(self) -> str:
        """``to_dict()`` as YAML, sections and keys in schema order."""
        return yaml.dump(self.to_dict(), Dumper=_RecipeDumper, sort_keys=False)

    @classmethod
    def from_saved(cls, data: Mapping[str, Any], source: str = "<saved recipe>") -> Recipe:
        """A recipe stored beside a checkpoint (``to_dict`` output, from YAML or JSON).

        Keys and sections that older versions did not write get their defaults; unknown keys
        are an error, as in any recipe.
        """
        return recipe_from_dict(data, source=source)

    def get(self, path: str) -> Any:
        """The value at a key path such as ``model.dim``."""
        section, _, key = path.partition(".")
        return getattr(getattr(self, section), key)


# -- building from dicts --------------------------------------------------------------------------


def _suggest(section: str, key: str | None = None) -> str:
    """The hint "; did you mean 'model.dim'?" naming the closest valid key path, or ""."""
    paths = key_paths()
    if key is None:  # an unknown section: a section name, or a key written at top level
        match = difflib.get_close_matches(section, list(SECTIONS), n=1, cutoff=0.6)
        if not match:
            match = [path for path in paths if path.split(".", 1)[1] == section][:1]
    else:
        # the right key in the wrong section, else a near miss in the same section, else anywhere
        match = [path for path in paths if path.split(".", 1)[1] == key][:1]
        if not match and section in SECTIONS:
            close = difflib.get_close_matches(key, SECTIONS[section].key_names(), n=1, cutoff=0.6)
            match = [f"{section}.{close[0]}"] if close else []
        if not match:
            match = difflib.get_close_matches(f"{section}.{key}", paths, n=1, cutoff=0.6)
    return f"; did you mean '{match[0]}'?" if match else ""


def _build_section(name: str, values: Any, source: str) -> _Section:
    section_type = SECTIONS[name]
    if values is None:  # "eval:" with every line commented out
        values = {}
    if not isinstance(values, Mapping):
        raise RecipeError(
            f"must be a mapping of keys ({', '.join(section_type.key_names()[:3])}, ...), "
            f"got {values!r}",
            name,
            source,
        )
    for key in values:
        if key not in section_type.key_names():
            raise RecipeError(_suggest(name, str(key)), f"{name}.{key}", source, unknown_key=True)
    for key in section_type.required_keys():
        if key not in values:
            raise RecipeError("missing required key", f"{name}.{key}", source)
    return section_type(**values)


def recipe_from_dict(
    data: Mapping[str, Any], source: str = "<dict>", *, origins: Mapping[str, str] | None = None
) -> Recipe:
    """Validate a recipe given as nested dicts (parsed YAML, ``Recipe.to_dict()``).

    ``source`` names the origin in error messages; ``origins`` maps key paths to a more precise
    origin (the ``--set`` override that gave the value).
    """
    if not isinstance(data, Mapping):
        raise RecipeError(
            f"a recipe must be a mapping of sections ({', '.join(SECTIONS)}), "
            f"got {_type_name(data)}",
            source=source,
        )
    for name in data:
        if name not in SECTIONS:
            problem = f"unknown section '{name}'{_suggest(str(name))}"
            raise RecipeError(f"{problem} (sections: {', '.join(SECTIONS)})", source=source)
    for name in REQUIRED_SECTIONS:
        if name not in data:
            keys = ", ".join(SECTIONS[name].required_keys())
            raise RecipeError(f"missing required section (with keys {keys})", name, source)
    try:
        sections = {name: _build_section(name, data.get(name), source) for name in SECTIONS}
        return Recipe(**sections, source=source)
    except RecipeError as err:
        if err.source is None:
            origin = (origins or {}).get((err.key or "").split("[", 1)[0])
            err.source = origin or source
        raise


class _RecipeDumper(yaml.SafeDumper):
    """SafeDumper writing sections as blocks and lists inline: ``segment_lengths: [1024, 2048]``."""


_RecipeDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, True)
)


# -- loading YAML ---------------------------------------------------------------------------------


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.2; PyYAML alone gives a string)."""


_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse_yaml(text: str, source: str) -> Any:
    """The YAML value of ``text``; RecipeError with the line and column of a syntax error, on
    one line (PyYAML's own messages span several and name "<unicode string>", not the file)."""
    try:
        return yaml.load(text, Loader=_RecipeLoader)  # a SafeLoader subclass: no objects
    except yaml.reader.ReaderError as err:  # a character YAML does not allow (a control byte)
        line = text.count("\n", 0, err.position) + 1
        column = err.position - (text.rfind("\n", 0, err.position) + 1) + 1
        shown = f"#x{err.character:04x}" if isinstance(err.character, int) else err.character
        raise RecipeError(
            f"invalid YAML at line {line}, column {column}: unacceptable character {shown!s} "
            f"({err.reason})",
            source=source,
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise RecipeError(f"invalid YAML{where}: {one_line(problem)}", source=source) from None


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"model.dim=256"`` -> ("model", "dim", 256); the value is read as a YAML scalar or flow
    value (``[2K, 4K]``, ``null``, ``true``). Raises RecipeError naming the override."""
    origin = f"--set {text}"
    path, equals, value_text = text.partition("=")
    path = path.strip()
    if not equals or not path:
        raise RecipeError("expected KEY=VALUE with KEY a key path such as model.dim", source=origin)
    section, dot, key = path.partition(".")
    if not dot or not key or "." in key:
        raise RecipeError(
            "the key must be SECTION.KEY, such as train.steps" + _suggest(section or path),
            source=origin,
        )
    if section not in SECTIONS or key not in SECTIONS[section].key_names():
        raise RecipeError(_suggest(section, key), path, origin, unknown_key=True)
    value = _parse_yaml(value_text, origin) if value_text.strip() else None
    return section, key, value


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> tuple[dict, dict]:
    """``data`` with each ``SECTION.KEY=VALUE`` applied (later ones win), and their origins."""
    merged = {name: dict(values) if isinstance(values, Mapping) else values
              for name, values in data.items()}  # fmt: skip
    origins: dict[str, str] = {}
    for text in overrides:
        section, key, value = parse_override(text)
        values = merged.get(section)
        if values is None:
            values = merged[section] = {}
        elif not isinstance(values, dict):
            raise RecipeError(f"is not a mapping, cannot set {section}.{key}", section)
        values[key] = value
        origins[f"{section}.{key}"] = f"--set {text}"
    return merged, origins


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read, override (``--set``) and validate a YAML recipe; RecipeError on any problem."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError("no such recipe file", source=source) from None
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeError(f"cannot read the recipe: {err}", source=source) from None
    data = _parse_yaml(text, source)
    if not isinstance(data, Mapping):
        raise RecipeError(
            f"a recipe must be a mapping of sections ({', '.join(SECTIONS)}), "
            f"got {_type_name(data)}",
            source=source,
        )
    try:
        data, origins = apply_overrides(data, overrides)
    except RecipeError as err:
        err.source = err.source or source
        raise
    return recipe_from_dict(data, source, origins=origins)


# -- checks against data and resumed runs ---------------------------------------------------------


def check_against_corpus(recipe: Recipe, corpus: TokenizedCorpus) -> int:
    """Check the recipe against the corpus it trains on; return the vocabulary size to use.

    - ``train.seq_len + 1`` tokens (one window) must fit in the corpus;
    - with ``data.sampling: document`` the corpus must hold at least one document (windows start
      at document starts; the first one starts at 0, so one window then fits);
    - ``model.vocab_size``, when set, must equal the corpus manifest's ``vocab_size``.

    Uses only ``corpus.manifest``, ``num_tokens``, ``vocab_size`` and ``directory``.
    """
    source = recipe.source
    window = recipe.train.seq_len + 1
    if corpus.num_tokens < window:
        raise RecipeError(
            f"windows of seq_len + 1 = {window} tokens do not fit: the corpus {corpus.directory} "
            f"holds {corpus.num_tokens} tokens; lower train.seq_len or tokenize more data",
            "train.seq_len",
            source,
        )
    if recipe.data.sampling == "document" and int(corpus.manifest.get("documents", 0)) < 1:
        raise RecipeError(
            f"is 'document' but the corpus {corpus.directory} holds no documents",
            "data.sampling",
            source,
        )
    wanted = recipe.model.vocab_size
    if wanted is not None and wanted != corpus.vocab_size:
        sha = corpus.manifest.get("tokenizer_sha256", "unknown")
        raise RecipeError(
            f"is {wanted} but the corpus {corpus.directory} has vocab_size {corpus.vocab_size} "
            f"(tokenizer sha256 {sha}); remove model.vocab_size to take it from the corpus",
            "model.vocab_size",
            source,
        )
    return corpus.vocab_size


def _is_safe(path: str) -> bool:
    return any(path == safe or path.startswith(safe + ".") for safe in SAFE_ON_RESUME)


def safe_to_change_on_resume(old: Recipe, new: Recipe) -> list[str]:
    """Key paths that differ between ``old`` and ``new`` and must NOT change on resume.

    An empty list means the run may resume with ``new``. Safe to change (they do not alter
    what has been trained or how the next step computes): ``train.steps`` (train longer or
    stop earlier), ``train.threads``, ``checkpoint.every``, ``checkpoint.keep_last``, every
    ``log.*`` and ``eval.*`` key, and ``data.eval_shards`` (evaluation data only). Everything
    else (data, model, optimizer, schedule, precision, seed, ``parallel.sequence``) is unsafe.
    """
    old_values, new_values = old.to_dict(), new.to_dict()
    changed = []
    for name, values in old_values.items():
        for key, value in values.items():
            path = f"{name}.{key}"
            if new_values[name][key] != value and not _is_safe(path):
                changed.append(path)
    return changed
