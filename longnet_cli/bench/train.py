"""``longnet bench train``: training speed of a recipe's model as a fraction of matmul peak.

The matmul peak is measured in the same process and run, in each precision the device runs
(``runtime.device_peak_flops``: the one measurement the ``mfu`` of metrics.jsonl divides by
too), so the fraction is robust to a noisy machine. Model FLOPs per token follow
``model.flops.training_flops_per_token``. Tokens are random (speed does not depend on them),
so no tokenized corpus is needed.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

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
    compiled: bool = False  # train.compile, where torch.compile runs here
    warnings: list[str] = field(default_factory=list)

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
    if cfg.precision == "auto":  # as train resolves it: bf16 where its measured peak says so
        import dataclasses

        from longnet_cli.runtime import measure_auto_precision

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        cfg = dataclasses.replace(cfg, precision=measure_auto_precision(device)["resolved"])
    keep_freed_memory()
    accelerator = Accelerator(
        mixed_precision=PRECISIONS[cfg.precision].mixed_precision, cpu=not torch.cuda.is_available()
    )
    torch.manual_seed(cfg.seed)
    model = recipe.model.build(vocab_size)
    warnings = []
    if cfg.compile:  # compiled in the warm-up step, which is not timed
        from longnet_cli.train.compiled import compile_blocks, eager_instead

        warning = eager_instead(accelerator.device, "train.compile")
        if warning is None:
            compile_blocks(model)
        else:
            warnings.append(warning)
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
        compiled=cfg.compile and not warnings,
        warnings=warnings,
    )


# -- --compare: eager and compiled, fp32 and bf16, side by side ------------------------------

COMPARED = (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True))
LOSS_TOLERANCE = 0.01  # a setting is chosen only within 1% of eager fp32's loss


@dataclass
class SettingResult:
    """One setting of ``bench train --compare``: its speed and the loss it reached."""

    precision: str
    compiled: bool
    seconds_per_step: float  # the best timed step
    first_step_s: float  # the first step: compilation included where compiled
    loss: float  # the last step's loss
    tokens_per_s: float = 0.0
    model_gflops: float = 0.0
    fraction_of_peak: float = 0.0  # over the matmul peak of this setting's dtype
    speedup: float = 0.0  # tokens/s over eager fp32's
    losses: list[float] = field(default_factory=list)  # every step's, the first one included

    @property
    def name(self) -> str:
        return f"{self.precision} {'compiled' if self.compiled else 'eager'}"


@dataclass
class CompareResult:
    """``bench train --compare``: every setting measured in one run, on the same windows."""

    recipe: str
    device: str
    threads: int
    parameters: int
    seq_len: int
    tokens_per_step: int
    steps: int  # optimizer steps each setting trained (the first one untimed)
    data: str  # "corpus" (the recipe's training windows) or "random tokens"
    flops_per_token: float
    matmul_peak_gflops: dict[str, float]  # fp32's and bf16's real rates, measured here
    settings: list[SettingResult]
    skipped: list[str] = field(default_factory=list)  # settings not trained, each with why

    @property
    def chosen(self) -> SettingResult:
        """The fastest setting whose loss is within ``LOSS_TOLERANCE`` of eager fp32's."""
        baseline = self.settings[0]
        close = [
            s
            for s in self.settings
            if abs(s.loss - baseline.loss) <= LOSS_TOLERANCE * abs(baseline.loss)
        ]
        return max(close, key=lambda s: s.tokens_per_s)

    def to_dict(self) -> dict:
        return {
            **{k: v for k, v in asdict(self).items() if k != "settings"},
            "settings": [{"name": s.name, **asdict(s)} for s in self.settings],
            "chosen": self.chosen.name,
        }


def compared_settings(
    peaks: dict[str, float], every: bool = False, no_compile: str | None = None
) -> tuple[list[tuple[str, bool]], list[str]]:
    """The settings of ``COMPARED`` to train on a device with these matmul peaks (GFLOP/s), and
    a line for each skipped one: bf16 where its peak is below fp32's (no bf16 hardware: an
    AVX2-only CPU measured 0.9 GFLOP/s against 147, a step 35x slower than fp32's, so 100
    steps would take hours to show it), unless ``every``; the compiled ones where compiling
    cannot run here (``no_compile``: the reason, from ``compiled.compile_unavailable``)."""
    slow_bf16 = not every and peaks["bf16"] < peaks["fp32"]
    bf16_why = (
        f"skipped: this device's bf16 matmul peak ({peaks['bf16']:,.1f} GFLOP/s) is below fp32's "
        f"({peaks['fp32']:,.1f}), so bf16 autocast can only be slower (--all-settings runs it)"
    )
    kept, skipped = [], []
    for precision, compiled in COMPARED:
        name = f"{precision} {'compiled' if compiled else 'eager'}"
        if compiled and no_compile is not None:
            skipped.append(f"{name}: skipped: torch.compile cannot run here ({no_compile})")
        elif precision == "bf16" and slow_bf16:
            skipped.append(f"{name}: {bf16_why}")
        else:
            kept.append((precision, compiled))
    return kept, skipped


def bench_compare(
    recipe: Recipe, vocab_size: int, steps: int = 4, every: bool = False
) -> CompareResult:
    """Train the recipe's model from the same initial weights in each of ``COMPARED``'s
    settings on the same windows, interleaved step by step (a busy machine slows each setting
    alike), for ``1 + steps`` optimizer steps; the first step (compilation) untimed. The matmul
    peaks are measured first: bf16 is skipped where it cannot be faster (``compared_settings``;
    ``every``: trained anyway).

    Windows are the recipe's corpus's training windows where it exists (the losses then say
    something), else random tokens. Plain PyTorch on one device (autocast for bf16, as
    accelerate applies it), not the run's accelerator: one process compares all settings.
    """
    from longnet_cli.model.flops import training_flops_per_token
    from longnet_cli.runtime import autocast_context, keep_freed_memory, measure_peak_flops
    from longnet_cli.train.compiled import compile_blocks, compile_unavailable
    from longnet_cli.train.loss import LanguageModelLoss
    from longnet_cli.train.schedule import Schedule, build_optimizer

    cfg = recipe.train
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    keep_freed_memory()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batches, data = _batches(recipe, vocab_size)
    schedule = Schedule.of(cfg)
    fp32 = measure_peak_flops(device, torch.float32).flops_per_s / 1e9
    bf16 = measure_peak_flops(device, torch.bfloat16, half_on_cpu=True).flops_per_s / 1e9
    peaks = {"fp32": fp32, "bf16": bf16}
    compared, skipped = compared_settings(peaks, every, compile_unavailable(device))
    runs = []
    for precision, compiled in compared:
        torch.manual_seed(cfg.seed)  # the same initial weights in every setting
        model = recipe.model.build(vocab_size).to(device)
        if compiled:
            compile_blocks(model)
        loss_module = LanguageModelLoss(model, cfg.loss_chunk)
        runs.append((precision, loss_module, build_optimizer(model, cfg), []))

    def step(index: int, precision: str, loss_module, optimizer) -> tuple[float, float]:
        start = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr_at(index)
        total = 0.0
        for micro in range(cfg.grad_accum):
            tokens = batches(index, micro).to(device)
            with autocast_context(precision, device.type):
                loss = loss_module(tokens) / cfg.grad_accum
            loss.backward()
            total += float(loss.detach())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, total

    for index in range(1 + steps):
        for precision, loss_module, optimizer, timings in runs:
            timings.append(step(index, precision, loss_module, optimizer))
    model = runs[0][1].model
    flops_per_token = training_flops_per_token(model, cfg.seq_len)
    tokens_per_step = cfg.seq_len * cfg.micro_batch_size * cfg.grad_accum
    settings = []
    for (precision, compiled), (_, _, _, timings) in zip(compared, runs, strict=True):
        best = min(seconds for seconds, _ in timings[1:])
        result = SettingResult(precision, compiled, best, timings[0][0], timings[-1][1])
        result.losses = [loss for _, loss in timings]
        result.tokens_per_s = tokens_per_step / best
        result.model_gflops = flops_per_token * result.tokens_per_s / 1e9
        result.fraction_of_peak = result.model_gflops / peaks[precision]
        settings.append(result)
    for result in settings:
        result.speedup = result.tokens_per_s / settings[0].tokens_per_s
    return CompareResult(
        recipe=str(recipe.source),
        device=str(device),
        threads=torch.get_num_threads(),
        parameters=model.num_parameters(),
        seq_len=cfg.seq_len,
        tokens_per_step=tokens_per_step,
        steps=1 + steps,
        data=data,
        flops_per_token=flops_per_token,
        matmul_peak_gflops=peaks,
        settings=settings,
        skipped=skipped,
    )


def _batches(recipe: Recipe, vocab_size: int):
    """``batch(step, micro)`` -> int64 (B, N+1) tokens, the same for every setting: the recipe's
    training windows where its corpus exists, else seeded random tokens; and which it is."""
    from pathlib import Path

    cfg = recipe.train
    corpus = _open_corpus(Path(recipe.data.shards))
    if corpus is not None and corpus.vocab_size <= vocab_size:
        from longnet_cli.data.windows import TrainingWindows

        windows = TrainingWindows(corpus, cfg.seq_len, seed=cfg.seed, sampling=recipe.data.sampling)

        def from_corpus(step: int, micro: int) -> torch.Tensor:
            window = windows.batch(
                step, micro, grad_accum=cfg.grad_accum, micro_batch_size=cfg.micro_batch_size
            )
            return torch.from_numpy(window)

        return from_corpus, "corpus"

    def random_tokens(step: int, micro: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 101 + micro)
        shape = (cfg.micro_batch_size, cfg.seq_len + 1)
        return torch.randint(0, vocab_size, shape, generator=generator)

    return random_tokens, "random tokens"


def _open_corpus(path):
    """The tokenized corpus at ``path``, or None where there is none (random tokens then)."""
    from longnet_cli.data.format.errors import CorpusError
    from longnet_cli.data.format.reader import TokenizedCorpus

    try:
        return TokenizedCorpus.open(path, verify="sizes")
    except (CorpusError, OSError):
        return None
