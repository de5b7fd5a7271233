"""``train.init_from``'s weight loading: every shape-keeping change allowed, the rest refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file, save_model

from longnet_cli.core.errors import InputError
from longnet_cli.model.transformer import LongNetTransformer
from longnet_cli.train.init_from import InitSource, check_tokenizer, load_initial_weights

SMALL = {"num_tokens": 64, "dim": 32, "depth": 2, "heads": 2, "dim_head": 16}


def _source(tmp_path: Path, model: torch.nn.Module, sha: str | None = "a" * 64) -> InitSource:
    weights = tmp_path / "model.safetensors"
    save_model(model, str(weights))  # tied embedding and head stored once, as checkpoints do
    return InitSource(tmp_path, weights, "checkpoint", 7, sha)


def test_weights_load_across_segments_rates_and_positions_settings(tmp_path):
    torch.manual_seed(0)
    trained = LongNetTransformer(
        **SMALL, segment_lengths=(16, 32), dilation_rates=(1, 2), positions="rotary"
    )
    source = _source(tmp_path, trained)
    torch.manual_seed(1)  # different initial weights
    extended = LongNetTransformer(
        **SMALL, segment_lengths=(16, 32, 64, 128), dilation_rates=(1, 2, 4, 8)
    )
    load_initial_weights(extended, source)
    for (name, a), (_, b) in zip(trained.state_dict().items(), extended.state_dict().items()):
        assert torch.equal(a, b), name
    # tied weights stay tied after loading
    assert extended.head.weight.data_ptr() == extended.token_embedding.weight.data_ptr()
    # a model of the source's own shape, initialised differently, computes what it computed
    torch.manual_seed(2)
    same = LongNetTransformer(**SMALL, segment_lengths=(16, 32), dilation_rates=(1, 2))
    load_initial_weights(same, source)
    tokens = torch.randint(0, SMALL["num_tokens"], (1, 40))
    with torch.no_grad():
        torch.testing.assert_close(same(tokens), trained(tokens), rtol=0, atol=0)


def test_a_changed_shape_is_refused_naming_the_parameter_and_both_shapes(tmp_path):
    source = _source(tmp_path, LongNetTransformer(**SMALL))
    wider = LongNetTransformer(**{**SMALL, "dim_head": 8})
    with pytest.raises(InputError) as err:
        load_initial_weights(wider, source)
    message = str(err.value)
    assert "blocks.0.attn" in message and "(32, 32)" in message and "(16, 32)" in message
    deeper = LongNetTransformer(**{**SMALL, "depth": 3})
    with pytest.raises(InputError, match=r"has no parameter blocks.2"):
        load_initial_weights(deeper, source)
    shallower = LongNetTransformer(**{**SMALL, "depth": 1})
    with pytest.raises(InputError, match=r"lacks: blocks.1"):
        load_initial_weights(shallower, source)


def test_unreadable_weights_name_the_file(tmp_path):
    source = _source(tmp_path, LongNetTransformer(**SMALL))
    source.weights.write_bytes(source.weights.read_bytes()[:100])
    with pytest.raises(InputError, match=r"model.safetensors: cannot read weights"):
        load_initial_weights(LongNetTransformer(**SMALL), source)
    save_file({"unrelated": torch.zeros(2)}, str(source.weights))
    with pytest.raises(InputError, match="has no parameter"):
        load_initial_weights(LongNetTransformer(**SMALL), source)


def test_the_tokenizer_must_match(tmp_path):
    source = _source(tmp_path, LongNetTransformer(**SMALL), sha="a" * 64)
    check_tokenizer(source, "a" * 64, tmp_path)
    with pytest.raises(InputError, match=r"tokenizer aaaaaaaaaaaa.*uses bbbbbbbbbbbb"):
        check_tokenizer(source, "b" * 64, tmp_path)
    unknown = _source(tmp_path, LongNetTransformer(**SMALL), sha=None)
    with pytest.raises(InputError, match="does not record its tokenizer"):
        check_tokenizer(unknown, "a" * 64, tmp_path)
