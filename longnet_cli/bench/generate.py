"""``longnet bench generate``: prefill and decode speed after prompts of very different lengths.

The model is shaped like the quickstart (dim 256, 4 blocks, 4 heads of 64) but its branches
reach 1M tokens with 2,048 selected keys per segment each: (2K, 1), (16K, 8), (128K, 64),
(1M, 512). Its decoding cache then holds at most 4 heads x 4 x 2,048 keys per layer, whatever
the prompt, so decoding after a 1M-token prompt should run about as fast as after an 8K one
(the target: within 15%; the longest branch's cache fills as its segment does). A dense
model's cache grows with the context; its size is printed beside. Prompts are random tokens
(speed does not depend on them) of lengths that are not multiples of any segment; the weights
are random too.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from dataclasses import asdict, dataclass

import torch

from longnet_cli.model.decode import prefill_start
from longnet_cli.model.transformer import LongNetTransformer

MODEL = {
    "num_tokens": 8192, "dim": 256, "depth": 4, "heads": 4, "dim_head": 64,
    "segment_lengths": (2048, 16384, 131072, 1048576), "dilation_rates": (1, 8, 64, 512),
}  # fmt: skip
PROMPT_LENGTHS = (8192 + 1000, 65536 + 1000, 1048576 - 1000)
DECODE_ROUNDS = 3  # decode speed: the best of this many rounds of new_tokens steps


@dataclass
class GenerateBenchRow:
    """One prompt length: prefill and decode speed, and the two caches' sizes."""

    prompt_tokens: int
    prefill_tokens: int
    prefill_seconds: float
    decode_tokens: int
    decode_seconds: float
    cache_bytes: int
    cache_keys_per_layer: int
    dense_cache_bytes: int

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prefill_tokens / self.prefill_seconds

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_seconds

    def to_json(self) -> dict:
        return {
            **asdict(self),
            "prefill_tokens_per_s": self.prefill_tokens_per_s,
            "decode_tokens_per_s": self.decode_tokens_per_s,
        }


def bench_generate(
    prompt_lengths: tuple[int, ...] = PROMPT_LENGTHS,
    new_tokens: int = 64,
    device: str | None = None,
    seed: int = 0,
    progress: bool = True,
) -> list[GenerateBenchRow]:
    """Prefill each prompt, then decode ``new_tokens`` tokens (greedy) ``DECODE_ROUNDS`` times,
    timing the prefill and the best round; on a CPU decoding runs on one thread (a batch of
    one token is latency-bound, and more threads only contend on a shared machine)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    model = LongNetTransformer(**MODEL).to(device).eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    element = 2 if device.type == "cuda" else 4
    per_token = 2 * MODEL["depth"] * MODEL["heads"] * MODEL["dim_head"] * element
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for length in prompt_lengths:
        prompt = torch.randint(0, MODEL["num_tokens"], (1, length), generator=generator)
        prompt = prompt.to(device)
        with autocast, torch.inference_mode():
            start = time.perf_counter()
            logits, cache = model.prefill(prompt)
            _sync(device)
            prefill_seconds = time.perf_counter() - start
            token = logits.argmax(-1)
            decode_seconds = math.inf
            threads = torch.get_num_threads()
            if device.type == "cpu":  # one token at a time is latency-bound: one thread
                torch.set_num_threads(1)
            model.decode(token, cache)  # warm up
            for _ in range(DECODE_ROUNDS):  # best of: the machine may be shared
                _sync(device)
                start = time.perf_counter()
                for _ in range(new_tokens):
                    token = model.decode(token, cache).argmax(-1)
                _sync(device)
                decode_seconds = min(decode_seconds, time.perf_counter() - start)
            torch.set_num_threads(threads)
        row = GenerateBenchRow(
            prompt_tokens=length,
            prefill_tokens=length - prefill_start(MODEL["segment_lengths"], length),
            prefill_seconds=prefill_seconds,
            decode_tokens=new_tokens,
            decode_seconds=decode_seconds,
            cache_bytes=cache.nbytes(),
            cache_keys_per_layer=cache.keys_per_layer(),
            dense_cache_bytes=per_token * cache.position,
        )
        rows.append(row)
        if progress:
            print(
                f"bench generate: prompt {length:,}: prefill {row.prefill_tokens_per_s:,.0f} "
                f"tokens/s, decode {row.decode_tokens_per_s:,.1f} tokens/s",
                file=sys.stderr,
                flush=True,
            )
        del cache, logits
    return rows


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
