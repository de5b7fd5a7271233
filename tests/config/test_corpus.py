"""corpus.py: check_against_corpus, the checks only the corpus can answer."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from longnet_cli.config.corpus import check_against_corpus
from longnet_cli.config.errors import RecipeError
from longnet_cli.config.schema import recipe_from_dict


def stand_in_corpus(num_tokens=10_000, vocab_size=100, documents=3) -> SimpleNamespace:
    manifest = {"vocab_size": vocab_size, "tokenizer_sha256": "ab" * 32, "documents": documents}
    return SimpleNamespace(
        manifest=manifest, num_tokens=num_tokens, vocab_size=vocab_size, directory=Path("corp")
    )


def test_check_against_corpus_returns_the_vocab_size(minimal):
    assert check_against_corpus(recipe_from_dict(minimal()), stand_in_corpus()) == 100
    recipe = recipe_from_dict(minimal(model={"vocab_size": 100}))
    assert check_against_corpus(recipe, stand_in_corpus()) == 100
    assert (
        check_against_corpus(recipe_from_dict(minimal()), stand_in_corpus(num_tokens=2049)) == 100
    )


def test_check_against_corpus_seq_len_too_large(minimal):
    recipe = recipe_from_dict(minimal(), source="mine.yaml")
    with pytest.raises(RecipeError) as info:
        check_against_corpus(recipe, stand_in_corpus(num_tokens=2048))
    message = str(info.value)
    assert message.startswith("train.seq_len in mine.yaml:")
    assert "2049" in message and "holds 2048 tokens" in message and "corp" in message


def test_check_against_corpus_document_sampling_needs_documents(minimal):
    recipe = recipe_from_dict(minimal(data={"sampling": "document"}), source="mine.yaml")
    with pytest.raises(RecipeError, match=r"data\.sampling in mine\.yaml"):
        check_against_corpus(recipe, stand_in_corpus(documents=0))


def test_check_against_corpus_vocab_mismatch(minimal):
    recipe = recipe_from_dict(minimal(model={"vocab_size": 32000}), source="mine.yaml")
    with pytest.raises(RecipeError) as info:
        check_against_corpus(recipe, stand_in_corpus(vocab_size=8192))
    message = str(info.value)
    assert message.startswith("model.vocab_size in mine.yaml: is 32000")
    assert "vocab_size 8192" in message and "ab" * 32 in message
