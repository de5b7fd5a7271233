"""The copy probe: can a model read back ``d`` tokens? (``longnet eval --probe copy``).

From each document of at least ``d`` tokens take its first ``d`` tokens (the span) and score
the sequence ``span + span`` (2d tokens; both copies start at position 0 of one sequence) with
the model's per-token loss. Token ``j`` of the first copy (position ``j``) and the same token of
the second copy (position ``d + j``) are compared for ``j = 1 .. d-1``, so both copies have
``d - 1`` scored targets and the same predecessors within their copy; position 0 and position
``d`` (the first token of each copy, which nothing announces) are left out.

``ratio = loss(second copy) / loss(first copy)``, each the mean NLL over all documents' targets
(token-weighted): 1.00 means the model gains nothing from having read the span ``d`` tokens
earlier; well below 1 means it reads back ``d`` tokens (induction, copying). A model reads only
inside blocks of its reach (its longest segment): when ``2d > reach`` the two copies are not in
one block and the figure cannot show reading back (``within_reach`` False).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

PROBES = ("copy",)
DEFAULT_DISTANCES = (128, 512, 2048, 8192, 16384)  # 128 and 512: where copying first shows


@dataclass
class CopyFigure:
    """The copy probe at one distance, summed over documents."""

    distance: int
    documents: int  # documents of at least ``distance`` tokens
    tokens: int  # scored targets per copy, over all documents
    first_nll: float  # summed NLL (nats) of the first copy's targets
    second_nll: float  # ... and of the second copy's
    within_reach: bool  # 2 * distance <= the model's reach

    @property
    def first_loss(self) -> float | None:
        return self.first_nll / self.tokens if self.tokens else None

    @property
    def second_loss(self) -> float | None:
        return self.second_nll / self.tokens if self.tokens else None

    @property
    def ratio(self) -> float | None:
        if not self.tokens or self.first_nll <= 0:
            return None
        return self.second_nll / self.first_nll  # equal token counts: the ratio of the means

    def to_json(self) -> dict[str, Any]:
        return {
            "distance": self.distance,
            "documents": self.documents,
            "tokens": self.tokens,
            "first_loss": self.first_loss,
            "second_loss": self.second_loss,
            "ratio": self.ratio,
            "within_reach": self.within_reach,
        }


def copy_probe(
    token_nll: Callable[[np.ndarray], np.ndarray],
    documents: Iterable[np.ndarray],
    distances: list[int],
    reach: int,
) -> list[CopyFigure]:
    """The copy probe at each distance over ``documents`` (token arrays, without EOS).

    ``token_nll(sequence)`` gives the per-target NLL (n-1,) of one sequence of n tokens (target
    ``p`` at index ``p - 1``), e.g. ``LongNetTransformer.token_nll`` under inference mode.
    Documents shorter than a distance are left out at that distance (``documents`` counts the
    others).
    """
    distances = sorted(set(distances))
    figures = {d: CopyFigure(d, 0, 0, 0.0, 0.0, 2 * d <= reach) for d in distances}
    for tokens in documents:
        for distance in distances:
            if len(tokens) < distance:
                continue
            span = np.asarray(tokens[:distance])
            nll = token_nll(np.concatenate([span, span]))  # (2d - 1,): positions 1 .. 2d-1
            first = nll[: distance - 1]  # positions 1 .. d-1
            second = nll[distance:]  # positions d+1 .. 2d-1
            figure = figures[distance]
            figure.documents += 1
            figure.tokens += distance - 1
            figure.first_nll += float(first.sum())
            figure.second_nll += float(second.sum())
    return [figures[d] for d in distances]
