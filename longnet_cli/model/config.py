"""LongNetConfig: a LongNetTransformer's hyper-parameters, the one definition of its options.

Every option is a field of ``LongNetConfig``, and its metadata (``option``) says what kind of
value it takes, in the vocabulary of the recipe loader: ``int`` (with a ``minimum``), ``float``,
``bool``, ``choice`` (with ``choices``), ``lengths`` (a list written ``[2K, 4K]``), ``ints`` ...
Everything else that lists the options is derived from these fields:

    config/model_section.py      the recipe's ``model`` section: keys, order, defaults, kinds
    MODEL_KEYS (hf/)             the model keys of an export's config.json
    hf/configuration_longnet.py  LongNetHFConfig's attributes and defaults

so adding a model option is one field here, plus its use in the model code (``Block``) and in
``LongNetTransformer``'s signature, which a test keeps equal to these fields.

A recipe must state some options that the Python API defaults (``recipe_required``), and a few
options have no default at all; their ``example`` is the value a tool that needs a default for
every option (transformers builds ``LongNetHFConfig()`` without arguments) falls back to.

No torch import: loading a recipe and ``longnet --help`` stay cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

POSITION_KINDS = ("rotary", "xpos", "none")
BACKENDS = ("auto", "torch", "efficient", "flash-attn", "math")
VOCABULARY = "num_tokens"  # the one option a recipe names ``vocab_size`` (None: the corpus's)


def option(kind: str, **details: Any) -> dict[str, Any]:
    """Field metadata: a kind (int, float, bool, str, choice, length, lengths, ints, floats) and
    details: ``minimum`` (ints), ``optional`` (None allowed), ``choices``, ``size`` (lists),
    ``recipe_required`` (a recipe must state it), ``example`` (a value where there is no
    default)."""
    return {"kind": kind, **details}


def validate_branches(segment_lengths: Sequence[int], dilation_rates: Sequence[int]) -> None:
    """Raise ValueError unless the branch lists are equal-length lists of positive integers."""
    segment_lengths, dilation_rates = list(segment_lengths), list(dilation_rates)
    if not segment_lengths:
        raise ValueError("segment_lengths must name at least one branch")
    if len(segment_lengths) != len(dilation_rates):
        raise ValueError(
            f"segment_lengths ({len(segment_lengths)} values) and dilation_rates "
            f"({len(dilation_rates)} values) must have the same length"
        )
    for name, values in (("segment_lengths", segment_lengths), ("dilation_rates", dilation_rates)):
        bad = [x for x in values if isinstance(x, bool) or not isinstance(x, int) or x < 1]
        if bad:
            raise ValueError(f"{name} must be positive integers, got {bad[0]!r}")


@dataclass(kw_only=True)
class LongNetConfig:
    """Hyper-parameters of a LongNetTransformer; validated on creation.

    The field order is the recipe's (``model.dim``, ``model.depth``, ``model.heads`` ...) and
    config.json's; ``LongNetTransformer(...)`` takes the same options (its positional order puts
    ``dim_head`` before ``heads``, as it always has).
    """

    num_tokens: int = field(metadata=option("int", minimum=1, example=8192))
    dim: int = field(metadata=option("int", minimum=1, example=512))
    depth: int = field(metadata=option("int", minimum=1, example=8))
    heads: int = field(default=8, metadata=option("int", minimum=1, recipe_required=True))
    dim_head: int = field(default=64, metadata=option("int", minimum=1))
    # feed-forward width ff_mult * dim (SwiGLU)
    ff_mult: float = field(default=4.0, metadata=option("float"))
    segment_lengths: tuple[int, ...] = field(
        default=(2048, 4096, 8192, 16384), metadata=option("lengths", recipe_required=True)
    )
    dilation_rates: tuple[int, ...] = field(
        default=(1, 2, 4, 8), metadata=option("ints", minimum=1, recipe_required=True)
    )
    positions: str = field(default="rotary", metadata=option("choice", choices=POSITION_KINDS))
    parallel_blocks: bool = field(default=False, metadata=option("bool"))
    tie_embeddings: bool = field(default=True, metadata=option("bool"))
    qk_norm: bool = field(default=False, metadata=option("bool"))
    # Smeared keys: each head's key mixes in the previous position's (a learned gate per head)
    smeared_keys: bool = field(default=False, metadata=option("bool"))
    dropout: float = field(default=0.0, metadata=option("float"))
    activation_checkpointing: bool = field(default=False, metadata=option("bool"))
    backend: str = field(default="auto", metadata=option("choice", choices=BACKENDS))

    def __post_init__(self) -> None:
        self.segment_lengths = tuple(self.segment_lengths)
        self.dilation_rates = tuple(self.dilation_rates)
        for spec in fields(self):
            if spec.metadata["kind"] == "int":
                value = getattr(self, spec.name)
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"{spec.name} must be a positive integer, got {value!r}")
        if self.ff_mult <= 0 or int(self.ff_mult * self.dim) < 1:
            raise ValueError(f"ff_mult must be positive, got {self.ff_mult!r}")
        validate_branches(self.segment_lengths, self.dilation_rates)
        if self.positions not in POSITION_KINDS:
            raise ValueError(f"positions must be one of {POSITION_KINDS}, got {self.positions!r}")
        if self.positions != "none" and self.dim_head % 2:
            raise ValueError(f"positions={self.positions!r} needs an even dim_head")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")

    @property
    def ff_hidden(self) -> int:
        """Hidden width of the SwiGLU feed-forward."""
        return int(self.ff_mult * self.dim)


# Every option besides the vocabulary, in field order: the keys of a recipe's model section
# (``vocab_size`` apart) and of an export's config.json.
MODEL_KEYS = tuple(spec.name for spec in fields(LongNetConfig) if spec.name != VOCABULARY)
# The options that are lists of integers: tuples in the model, lists in YAML and JSON.
INTEGER_LISTS = tuple(
    spec.name for spec in fields(LongNetConfig) if spec.metadata["kind"] in ("lengths", "ints")
)


def option_defaults() -> dict[str, Any]:
    """Each option's default, or its ``example`` where it has none (``num_tokens`` first)."""
    return {
        spec.name: spec.metadata["example"] if spec.default is MISSING else spec.default
        for spec in fields(LongNetConfig)
    }
