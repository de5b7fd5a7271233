"""Which split a document is in, and which documents are scored: one home for both rules.

The split rule (``longnet tokenize``): every document goes to "train" or "heldout" by its content
hash (the sha256 of its text): held out when ``int(sha256[:16], 16) < holdout * 2**64``
(``document_split``). Content, not name or position, so a growing corpus, inserted records or
renamed files never move a document between splits, and identical documents always land on the
same side. When the fraction selects no document in a corpus of at least two, the documents with
the smallest hash (one content, all its copies) are held out instead, unless that would leave
nothing to train on (``SplitTally``). The split is recorded in ``documents.parquet``'s ``split``
column and the manifest's ``splits``.

The held-out fallback (``select_documents``): every figure about model quality is read on
held-out documents; a corpus without any (tokenized before splits existed, or with
``--holdout 0``) falls back to its training documents, and the caller says so
(``DocumentSelection.fallback``). ``longnet eval`` and evaluation during training choose their
documents here, once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from longnet_cli.core.errors import InputError

if TYPE_CHECKING:
    from longnet_cli.data.format.reader import TokenizedCorpus

EVAL_SPLITS = ("heldout", "train", "all")


def heldout_threshold(holdout: float) -> int:
    """Documents whose ``int(sha256[:16], 16)`` is below this integer are held out."""
    return int(holdout * 2**64)


def document_split(sha256: str, holdout: float) -> str:
    """The split of a document with this content hash (hex sha256 of its text):
    "heldout" or "train"."""
    return "heldout" if int(sha256[:16], 16) < heldout_threshold(holdout) else "train"


class SplitTally:
    """The split of each document of a build as it is written (``add``), the per-split totals,
    and the fallback: the smallest content hash seen, held out when the fraction selected
    nothing (``finish``). Bounded memory: totals and one hash, whatever the corpus size."""

    def __init__(self, holdout: float) -> None:
        self.holdout = holdout
        self.documents = 0
        self.totals = {split: {"documents": 0, "tokens": 0} for split in ("train", "heldout")}
        self.smallest: str | None = None  # the smallest content hash seen (fallback)
        self.smallest_totals = {"documents": 0, "tokens": 0}  # documents with that hash
        self.fallback = False  # set by ``finish``: the documents of ``smallest`` are held out

    def add(self, sha256: str, stream_tokens: int) -> str:
        """Count one document (``stream_tokens``: with its EOS, so the splits sum to the
        stream) and return its split by the rule (before any fallback)."""
        split = document_split(sha256, self.holdout)
        self.documents += 1
        self.totals[split]["documents"] += 1
        self.totals[split]["tokens"] += stream_tokens
        if self.smallest is None or sha256 < self.smallest:
            self.smallest, self.smallest_totals = sha256, {"documents": 0, "tokens": 0}
        if sha256 == self.smallest:
            self.smallest_totals["documents"] += 1
            self.smallest_totals["tokens"] += stream_tokens
        return split

    def finish(self) -> dict:
        """The manifest's ``splits``, after the last document. When the fraction selected
        nothing in a corpus of at least 2 documents, the documents with the smallest content
        hash are held out (``fallback``: the caller rewrites their rows), unless they are all
        of it."""
        train, heldout = self.totals["train"], self.totals["heldout"]
        self.fallback = (
            self.holdout > 0
            and self.documents >= 2
            and heldout["documents"] == 0
            and self.smallest_totals["documents"] < self.documents
        )
        if self.fallback:
            for key in ("documents", "tokens"):
                heldout[key] = self.smallest_totals[key]
                train[key] -= self.smallest_totals[key]
        return {
            "holdout": self.holdout,
            "train": dict(train),
            "heldout": dict(heldout),
            "fallback": self.fallback,
        }


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
