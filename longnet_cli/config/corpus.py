"""Checks of a recipe against the corpus it trains on (which the recipe alone cannot know)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from longnet_cli.config.errors import RecipeError

if TYPE_CHECKING:
    from longnet_cli.config.schema import Recipe
    from longnet_cli.data.format.reader import TokenizedCorpus


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
