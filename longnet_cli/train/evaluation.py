"""Evaluation during training: which documents are scored, at which contexts, and their figures.

Scoring is ``longnet eval``'s (``evaluate.scorer.score_contexts``): each context's summed
``Stats`` (negative log-likelihood, targets, bytes), so that the shares of several ranks add up
exactly before the ratios (loss, ppl, bpb) are taken. The documents come from
``data.splits.select_documents``: the corpus's held-out split, with its fallback to training
documents when it has none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from longnet_cli.config.schema import Recipe
from longnet_cli.config.sections import EvalConfig
from longnet_cli.core.errors import InputError
from longnet_cli.evaluate.scorer import Stats
from longnet_cli.train.resume import WINDOWS_BEFORE_EVAL_TAIL, WINDOWS_TRAIN_SPLIT


@dataclass
class Evaluation:
    """Evaluation during training: which documents, at which contexts, which split they are
    (recorded in metrics.jsonl), and, under the pre-split scheme, where training stops."""

    corpus: object
    doc_ids: list[int]
    contexts: list[int]
    train_end: int | None  # "before-eval-tail": training windows end here (None: no cut)
    chunk_size: int
    split: str  # "heldout", "train" (training-set figures), "tail" or "all" (eval data)
    warning: str | None = None  # one line for stderr when the figures are not held-out ones
    token_bytes: object = None  # the corpus's bytes per token id, read once when first needed
    precision: str = "fp32"  # the recipe's train.precision: evaluation runs under it too

    @classmethod
    def plan(cls, recipe: Recipe, corpus, scheme: str = WINDOWS_TRAIN_SPLIT) -> Evaluation | None:
        """``choose``'s plan for ``recipe``: its ``eval`` section, the training corpus and
        ``data.eval_shards``, scored in ``train.loss_chunk`` chunks under ``train.precision``."""
        return cls.choose(
            recipe.eval,
            corpus,
            scheme,
            eval_shards=recipe.data.eval_shards,
            seq_len=recipe.train.seq_len,
            chunk_size=recipe.train.loss_chunk,
            precision=recipe.train.precision,
        )

    @classmethod
    def choose(
        cls,
        cfg: EvalConfig,
        corpus,
        scheme: str,
        *,
        eval_shards: str | None,
        seq_len: int,
        chunk_size: int,
        precision: str = "fp32",
    ) -> Evaluation | None:
        """None unless ``eval.every`` > 0. Data: ``eval.data``, else ``eval_shards`` (its first
        ``eval.docs`` documents), else the training corpus: under "train-split" its first
        ``eval.docs`` held-out documents (training documents, with a warning, when it holds
        none); under "before-eval-tail" its last ``eval.docs`` documents, cut from training."""
        from longnet_cli.data.format.reader import TokenizedCorpus
        from longnet_cli.data.splits import select_documents

        if not cfg.every:
            return None
        contexts = cfg.context_lengths(seq_len)
        plan = {"contexts": contexts, "chunk_size": chunk_size, "precision": precision}
        source = cfg.data or eval_shards
        if source is None and scheme == WINDOWS_BEFORE_EVAL_TAIL:
            tail = select_documents(corpus, "all", None).doc_ids[-cfg.docs :]
            end = int(corpus.document_starts()[tail[0]]) if tail else None
            warning = (
                f"{corpus.directory} records no held-out split (tokenized before longnet "
                f"tokenize --holdout): evaluation scores its last {len(tail)} document(s), cut "
                "from training by position, not a held-out split; re-tokenize to get one"
            )
            if corpus.has_splits:
                warning = (
                    "this run started before held-out splits existed and keeps its windows: "
                    f"evaluation scores the last {len(tail)} document(s) of {corpus.directory}, "
                    "and training may read its held-out documents"
                )
            return cls(corpus, tail, train_end=end, split="tail", warning=warning, **plan)
        if source is None:
            selection = select_documents(corpus, "heldout", cfg.docs)
            if not selection.fallback and not selection.doc_ids:
                # held-out documents, none long enough to score: the training ones, as below
                selection = select_documents(corpus, "train", cfg.docs)
                selection.fallback = True
            if not selection.fallback:
                return cls(corpus, selection.doc_ids, train_end=None, split="heldout", **plan)
            ids = selection.doc_ids
            warning = (
                f"{corpus.directory} has no held-out documents to evaluate (tokenized with "
                f"--holdout 0, or too small): evaluation scores {len(ids)} training "
                "document(s); these are training-set figures"
            )
            return cls(corpus, ids, train_end=None, split="train", warning=warning, **plan)
        eval_corpus = TokenizedCorpus.open(Path(source), verify="sizes")
        if eval_corpus.manifest["tokenizer_sha256"] != corpus.manifest["tokenizer_sha256"]:
            raise InputError(
                f"evaluation data {source} uses another tokenizer than {corpus.directory} "
                f"({eval_corpus.manifest['tokenizer_sha256']} vs "
                f"{corpus.manifest['tokenizer_sha256']})"
            )
        ids = select_documents(eval_corpus, "all", cfg.docs).doc_ids
        return cls(eval_corpus, ids, train_end=None, split="all", **plan)

    def score(self, model: nn.Module, doc_ids: list[int] | None = None) -> dict[int, Stats]:
        """Each context's summed ``Stats`` over ``doc_ids`` (default: all of this plan's
        documents; none: zeros), ascending by context."""
        from longnet_cli.evaluate.scorer import score_contexts, token_byte_lengths

        if self.token_bytes is None:
            self.token_bytes = token_byte_lengths(self.corpus)
        return score_contexts(
            model,
            self.corpus,
            self.contexts,
            self.doc_ids if doc_ids is None else doc_ids,
            token_bytes=self.token_bytes,
            chunk_size=self.chunk_size,
            precision=self.precision,
        )

    def figures(self, stats: Mapping[int, Stats]) -> dict:
        """The metrics.jsonl record of summed ``stats``: split, documents, and each context's
        loss, ppl, bpb and tokens."""
        contexts = {
            str(context): {"loss": s.loss, "ppl": s.ppl, "bpb": s.bpb, "tokens": s.tokens}
            for context, s in sorted(stats.items())
        }
        return {"split": self.split, "documents": len(self.doc_ids), "contexts": contexts}

    def shares(self, world: int) -> list[list[int]]:
        """The documents each of ``world`` ranks scores: longest first, each to the rank with
        the least work so far (work: the tokens scored, at most the longest context)."""
        lengths = self.corpus.document_lengths()
        longest = max(self.contexts)
        work = [0] * world
        shares: list[list[int]] = [[] for _ in range(world)]
        for doc in sorted(self.doc_ids, key=lambda i: (-min(int(lengths[i]), longest), i)):
            rank = min(range(world), key=lambda r: (work[r], r))
            shares[rank].append(doc)
            work[rank] += min(int(lengths[doc]), longest)
        return shares


def summed_over_ranks(stats: Mapping[int, Stats], device) -> dict[int, Stats]:
    """Every rank's ``stats`` added up (all-reduce; every rank gets the sums). Token and byte
    counts travel as float64, exact far beyond any corpus's size."""
    import torch
    import torch.distributed as dist

    contexts = sorted(stats)
    rows = [[stats[c].nll, stats[c].tokens, stats[c].bytes] for c in contexts]
    total = torch.tensor(rows, dtype=torch.float64, device=device)  # (contexts, 3)
    dist.all_reduce(total)  # sum over every rank
    summed = total.cpu().tolist()
    return {
        c: Stats(int(tokens), nll, int(nbytes))
        for c, (nll, tokens, nbytes) in zip(contexts, summed)
    }
