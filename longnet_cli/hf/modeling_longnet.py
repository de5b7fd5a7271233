"""``LongNetForCausalLM``: a LongNetTransformer behind the transformers model interface.

The model is a LongNetTransformer whose modules (``token_embedding``, ``blocks``, ``norm``,
``head``) are adopted as this model's own children: the parameter names are longnet's, so the
weights file of an export is also a longnet checkpoint's (no prefix for transformers to add or
strip, which its versions do differently). Logits are longnet's: the forward is
``LongNetTransformer.forward``.

``generate`` decodes with the branch-bounded cache of ``longnet generate`` (``model/decode.py``):
the prompt is prefilled from the block of its last token on (with smeared keys, config
``smeared_keys``, the whole prompt: every key depends on the one before it), then each new token
reads per layer only the current segments' selected keys (and, smeared, the previous position's
projected key the cache keeps). transformers never sees that cache (it travels
in ``decode_cache``, a name its cache machinery does not touch); beam search, which would need
to reorder it, and ``use_cache=False`` run the full forward over the whole sequence instead.
Rows must be whole sequences: an attention mask with padding is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput

from longnet_cli.hf.configuration_longnet import LongNetHFConfig
from longnet_cli.model import decode as decoding
from longnet_cli.model.transformer import LongNetTransformer


@dataclass
class LongNetCausalLMOutput(ModelOutput):
    """Logits (B, N, V) (or (B, 1, V) of the last position when decoding), the loss when
    labels were given, and the decoding cache when decoding."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    decode_cache: Any = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class LongNetForCausalLM(PreTrainedModel, GenerationMixin):
    """A causal LongNet language model loadable with ``AutoModelForCausalLM``."""

    config_class = LongNetHFConfig
    _auto_class = "AutoModelForCausalLM"  # save_pretrained writes this file and its auto_map
    base_model_prefix = ""
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _no_split_modules = ["Block"]  # noqa: RUF012 (transformers class attributes)
    _supports_cache_class = False
    # {tied: source}; transformers 4 reads the keys as names, 5 the mapping
    _tied_weights_keys = {"head.weight": "token_embedding.weight"}  # noqa: RUF012

    def __init__(self, config: LongNetHFConfig) -> None:
        super().__init__(config)
        core = LongNetTransformer(**config.model_kwargs())
        object.__setattr__(self, "core", core)  # not a child: its modules are, under their names
        for name, module in core.named_children():
            setattr(self, name, module)
        self.post_init()

    def train(self, mode: bool = True) -> LongNetForCausalLM:
        """Training mode for the modules and for the LongNetTransformer holding them."""
        super().train(mode)
        self.core.train(mode)
        return self

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Nothing: LongNetTransformer initialises itself, and loading fills every weight."""

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        """No transformers cache: decoding keeps longnet's own (see the module notes)."""
        return False

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.token_embedding

    def set_input_embeddings(self, value: torch.nn.Module) -> None:
        self.token_embedding = self.core.token_embedding = value

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.head

    def set_output_embeddings(self, value: torch.nn.Module) -> None:
        self.head = self.core.head = value

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        decode_cache: decoding.DecodeCache | None = None,
        decode: bool = False,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> LongNetCausalLMOutput | tuple:
        """Logits of ``input_ids`` (B, N) and, with ``labels`` (B, N; -100 ignored), the mean
        next-token cross-entropy (labels are shifted here, as in transformers).

        ``decode`` (set by ``prepare_inputs_for_generation``): without ``decode_cache`` prefill
        the prompt, else feed the one new token of ``input_ids``; the logits are then those of
        the last position only, (B, 1, V). Other transformers keyword arguments (``use_cache``,
        ``output_attentions`` ...) are accepted and have no effect.
        """
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError(
                "LongNetForCausalLM takes whole sequences: attention_mask must be all ones "
                "(no padding); pass rows of equal length, or one row at a time"
            )
        cache = None
        if decode:
            if decode_cache is None:
                last, cache = decoding.prefill(self.core, input_ids)  # (B, V)
            else:
                cache = decode_cache
                last = decoding.decode(self.core, input_ids[:, -1], cache)  # (B, V)
            logits = last[:, None]  # (B, V) -> (B, 1, V)
        else:
            logits = self.core(input_ids)  # (B, N) -> (B, N, V)
        loss = None
        if labels is not None:
            if decode:
                raise ValueError("labels are not scored while decoding (decode=True)")
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
            )  # (B*(N-1), V), (B*(N-1),)
        output = LongNetCausalLMOutput(loss=loss, logits=logits, decode_cache=cache)
        return output.to_tuple() if return_dict is False else output

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        decode_cache: decoding.DecodeCache | None = None,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool | None = True,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The next forward's inputs: the whole sequence first (prefill), then its last token
        with the cache; without a cache (``use_cache=False``) the whole sequence every step."""
        inputs: dict[str, Any] = {"attention_mask": attention_mask}
        if use_cache is False:
            return {"input_ids": input_ids, **inputs}
        if decode_cache is None:
            return {"input_ids": input_ids, "decode": True, **inputs}
        if decode_cache.position != input_ids.shape[1] - 1:
            raise ValueError(
                f"the decoding cache holds {decode_cache.position} positions but the sequence "
                f"has {input_ids.shape[1]} tokens: it continues another sequence"
            )
        return {"input_ids": input_ids[:, -1:], "decode_cache": decode_cache, "decode": True}

    def _update_model_kwargs_for_generation(
        self, outputs: ModelOutput, model_kwargs: dict[str, Any], *args: Any, **kwargs: Any
    ) -> dict[str, Any]:
        """transformers' update, plus the decoding cache carried to the next step."""
        model_kwargs = super()._update_model_kwargs_for_generation(
            outputs, model_kwargs, *args, **kwargs
        )
        model_kwargs["decode_cache"] = getattr(outputs, "decode_cache", None)
        return model_kwargs

    @torch.no_grad()
    def generate(self, *args: Any, **kwargs: Any):
        """transformers' ``generate``; beam search and assisted decoding run without the
        decoding cache (it cannot be reordered or rolled back)."""
        config = kwargs.get("generation_config") or self.generation_config
        beams = kwargs.get("num_beams", getattr(config, "num_beams", 1)) or 1
        if beams > 1 or kwargs.get("assistant_model") is not None:
            kwargs["use_cache"] = False
        return super().generate(*args, **kwargs)
