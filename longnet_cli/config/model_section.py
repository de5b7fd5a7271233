"""The recipe's ``model`` section, derived from the model's own config (``LongNetConfig``).

Its keys, their order, defaults and kinds are ``LongNetConfig``'s fields: every option but the
vocabulary, then ``vocab_size`` (optional: None means "the corpus's vocabulary", which
``check_against_corpus`` supplies). An option the Python API defaults but a recipe must state
(``recipe_required`` in its metadata) has no default here. Only the cross-field checks, which
report key paths and say what to change, are written here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

from longnet_cli.config.kinds import check_int
from longnet_cli.config.sections import Section
from longnet_cli.model.config import INTEGER_LISTS, MODEL_KEYS, VOCABULARY, LongNetConfig, option

if TYPE_CHECKING:
    import torch

    from longnet_cli.model.transformer import LongNetTransformer


class _ModelChecks(Section):
    """What the model section adds to its derived fields: its checks and the model it builds."""

    SECTION: ClassVar[str] = "model"

    def _check(self) -> None:
        # The same rules as model.config.LongNetConfig, reported with key paths.
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
            check_int(vocab_size, "vocab_size", 1)
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
            VOCABULARY: num_tokens,
            **{key: getattr(self, key) for key in MODEL_KEYS},
            **{key: tuple(getattr(self, key)) for key in INTEGER_LISTS},
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


def _section_fields() -> list[tuple[str, Any, dataclasses.Field]]:
    """(name, type, field) of each model key, from LongNetConfig, then ``vocab_size``."""
    specs = []
    for spec in fields(LongNetConfig):
        if spec.name == VOCABULARY:
            continue
        if spec.default is MISSING or spec.metadata.get("recipe_required"):
            default = field(metadata=spec.metadata)
        else:
            default = field(default=spec.default, metadata=spec.metadata)
        specs.append((spec.name, spec.type, default))
    vocabulary = option("int", minimum=1, optional=True)
    specs.append(("vocab_size", "int | None", field(default=None, metadata=vocabulary)))
    return specs


ModelConfig = dataclasses.make_dataclass(
    "ModelConfig",
    _section_fields(),
    bases=(_ModelChecks,),
    kw_only=True,
    namespace={
        "__module__": __name__,
        "__doc__": 'LongNetTransformer hyper-parameters; ``vocab_size`` None means "the '
        "corpus's vocabulary\". Keys, defaults and kinds: LongNetConfig's fields.",
    },
)
