"""``longnet bench train``: training speed of a recipe's model as a fraction of matmul peak.

The matmul peak is measured in the same process and run, in each precision the device runs
(``runtime.device_peak_flops``: the one measurement the ``mfu`` of metrics.jsonl divides by
too), so the fraction is robust to a noisy machine. Model FLOPs per token follow
``model.flops.training_flops_per_token``. Tokens are random (speed does not depend on them),
so no tokenized corpus is needed.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from longnet_cli.config import Recipe


@dataclass
class TrainBenchResult:
    """Best-of-steps training speed and the machine's matmul peak, measured together."""

    recipe: str
    precision: str
    device: str
    threads: int
    parameters: int
    seq_len: int
    tokens_per_step: int
    seconds_per_step: float
    flops_per_token: float
    matmul_peak_gflops: dict[str, float]
    peak_rss_bytes: int

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.seconds_per_step

    @property
    def model_gflops(self) -> float:
        return self.flops_per_token * self.tokens_per_s / 1e9

    @property
    def fraction_of_peak(self) -> float:
        """Model FLOP/s over the matmul peak in the recipe's precision (target >= 0.30)."""
        return self.model_gflops / self.matmul_peak_gflops[self.precision]

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "tokens_per_s": self.tokens_per_s,
            "model_gflops": self.model_gflops,
            "fraction_of_peak": self.fraction_of_peak,
        }


def bench_train(recipe: Recipe, vocab_size: int, steps: int = 4) -> TrainBenchResult:
    """Time ``steps`` optimizer steps of the recipe's model (after one warm-up step)."""
    from accelerate import Accelerator

    from longnet_cli.core.memory import peak_rss_bytes
    from longnet_cli.model.flops import training_flops_per_token
    from longnet_cli.runtime import PRECISIONS, device_peak_flops, keep_freed_memory
    from longnet_cli.train.loss import LanguageModelLoss
    from longnet_cli.train.schedule import build_optimizer

    cfg = recipe.train
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    keep_freed_memory()
    accelerator = Accelerator(
        mixed_precision=PRECISIONS[cfg.precision].mixed_precision, cpu=not torch.cuda.is_available()
    )
    torch.manual_seed(cfg.seed)
    model = recipe.model.build(vocab_size)
    loss_module, optimizer = accelerator.prepare(
        LanguageModelLoss(model, cfg.loss_chunk), build_optimizer(model, cfg)
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    shape = (cfg.micro_batch_size, cfg.seq_len + 1)

    def step() -> float:
        start = time.perf_counter()
        for _ in range(cfg.grad_accum):
            tokens = torch.randint(0, vocab_size, shape, generator=generator)
            loss = loss_module(tokens.to(accelerator.device))
            accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    step()  # warm-up: allocator pools, kernel choices
    seconds = min(step() for _ in range(steps))
    peaks = {
        name: device_peak_flops(accelerator.device, precision.dtype).flops_per_s / 1e9
        for name, precision in PRECISIONS.items()
        if name != "fp16" or accelerator.device.type == "cuda"
    }
    return TrainBenchResult(
        recipe=str(recipe.source),
        precision=cfg.precision,
        device=str(accelerator.device),
        threads=torch.get_num_threads(),
        parameters=model.num_parameters(),
        seq_len=cfg.seq_len,
        tokens_per_step=cfg.seq_len * cfg.micro_batch_size * cfg.grad_accum,
        seconds_per_step=seconds,
        flops_per_token=training_flops_per_token(model, cfg.seq_len),
        matmul_peak_gflops=peaks,
        peak_rss_bytes=peak_rss_bytes(),
    )
