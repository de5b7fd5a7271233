"""The training loss as a module: what the data-parallel wrapper sees, runs and synchronises."""

from __future__ import annotations

import torch
from torch import nn


class LanguageModelLoss(nn.Module):
    """The model's chunked next-token loss as a forward(), so DDP sees and syncs it.

    With sequence parallelism (``sequence_size`` > 1) each rank scores its chunk of the window
    at its global positions; the mean of the ranks' chunk means is the window's mean, which is
    what DDP's gradient average then yields.
    """

    def __init__(
        self, model: nn.Module, chunk_size: int, sequence_rank: int = 0, sequence_size: int = 1
    ) -> None:
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        self.sequence_rank, self.sequence_size = sequence_rank, sequence_size

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        if self.sequence_size == 1:
            return self.model.loss(window, chunk_size=self.chunk_size)  # (B, N+1) -> ()
        n = (window.shape[1] - 1) // self.sequence_size
        start = self.sequence_rank * n
        inputs = window[:, start : start + n]  # (B, N+1) -> (B, n)
        targets = window[:, start + 1 : start + n + 1]
        return self.model.loss(inputs, targets, chunk_size=self.chunk_size, offset=start)
