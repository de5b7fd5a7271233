"""Which documents are scored: a split of a tokenized corpus, and the held-out fallback.

A document's split is decided when the corpus is tokenized, by a hash of its content
(``documents.parquet``'s ``split`` column). Every figure about model quality is read on held-out
documents; a corpus without any (tokenized before splits existed, or with ``--holdout 0``)
falls back to its training documents, and the caller says so (``DocumentSelection.fallback``).
``longnet eval`` and evaluation during training choose their documents here, once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from longnet_cli.core.errors import InputError

if TYPE_CHECKING:
    from longnet_cli.data.shards import TokenizedCorpus

EVAL_SPLITS = ("heldout", "train", "all")


@dataclass
class DocumentSelection:
    """The documents ``select_documents`` chose to score."""

    split: str  # the split scored (may be "train" where "heldout" was asked: ``fallback``)
    doc_ids: list[int]
    skipped: int  # documents of the split passed over for being shorter than ``min_tokens``
    candidates: np.ndarray  # every document id of the split
    fallback: bool = False  # held-out asked, none in the corpus: the training documents instead


def select_documents(
    corpus: TokenizedCorpus, split: str, docs: int | None, min_tokens: int = 2
) -> DocumentSelection:
    """The first ``docs`` documents (all when None) of ``split`` with at least ``min_tokens``
    tokens (and at least 2), in order, and how many shorter ones were passed over on the way.

    ``split`` "heldout" on a corpus without held-out documents (tokenized before splits existed,
    or with ``--holdout 0``) selects the training documents (``fallback``)."""
    if split not in EVAL_SPLITS:
        raise InputError(f"split must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")
    fallback = False
    candidates = corpus.split_documents(split)
    if split == "heldout" and (not corpus.has_splits or len(candidates) == 0):
        split, fallback = "train", True
        candidates = corpus.split_documents("train" if corpus.has_splits else "all")
    lengths = corpus.document_lengths()[candidates]
    long_enough = np.flatnonzero(lengths >= max(min_tokens, 2))
    chosen = long_enough if docs is None else long_enough[:docs]
    considered = len(candidates) if docs is None or len(chosen) < docs else int(chosen[-1]) + 1
    return DocumentSelection(
        split=split,
        doc_ids=[int(i) for i in candidates[chosen]],
        skipped=considered - len(chosen),
        candidates=candidates,
        fallback=fallback,
    )
