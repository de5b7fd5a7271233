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
import sys
import time
from dataclasses import asdict, dataclass

import torch

from longnet_cli.model.decode import prefill_start
from longnet_cli.model.transformer import LongNetTransformer
from longnet_cli.runtime import autocast_context, resolve_device

MODEL = {
    "num_tokens": 8192, "dim": 256, "depth": 4, "heads": 4, "dim_head": 64,
    "segment_lengths": (2048, 16384, 131072, 1048576), "dilation_rates": (1, 8, 64, 512),
}  # fmt: skip
PROMPT_LENGTHS = (8192 + 1000, 65536 + 1000, 1048576 - 1000)
DECODE_ROUNDS = 5  # decode speed: each prompt's best of this many interleaved rounds


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
    """Prefill every prompt (timed), keeping each one's cache, then decode ``new_tokens``
    tokens (greedy) after each prompt in turn, ``DECODE_ROUNDS`` rounds, and keep each prompt's
    best round. Interleaving puts every prompt's decoding under the same machine conditions
    (decoding one prompt after another measured the machine's drift as much as the cache: the
    same 64K row read 0.62x and 1.61x of the 8K one); the caches are small (bounded), so
    holding all of them costs little. On a CPU decoding runs on one thread (a batch of one
    token is latency-bound, and more threads only contend on a shared machine)."""
    device = torch.device(device) if device else resolve_device(None)
    torch.manual_seed(seed)
    model = LongNetTransformer(**MODEL).to(device).eval()
    autocast = autocast_context("bf16" if device.type == "cuda" else "fp32", device.type)
    generator = torch.Generator().manual_seed(seed)
    states = []  # per prompt: [next token, cache, prefill seconds]
    for length in prompt_lengths:
        prompt = torch.randint(0, MODEL["num_tokens"], (1, length), generator=generator)
        prompt = prompt.to(device)
        with autocast, torch.inference_mode():
            _sync(device)
            start = time.perf_counter()
            logits, cache = model.prefill(prompt)
            _sync(device)
            prefill_seconds = time.perf_counter() - start
            token = model.decode(logits.argmax(-1), cache).argmax(-1)  # warm up
        states.append([token, cache, prefill_seconds])
        del prompt, logits
        if progress:
            prefilled = length - prefill_start(MODEL["segment_lengths"], length)
            print(
                f"bench generate: prompt {length:,}: prefill "
                f"{prefilled / prefill_seconds:,.0f} tokens/s",
                file=sys.stderr,
                flush=True,
            )
    decode_seconds = [math.inf] * len(states)
    threads = torch.get_num_threads()
    if device.type == "cpu":  # one token at a time is latency-bound: one thread
        torch.set_num_threads(1)
    try:
        with autocast, torch.inference_mode():
            for round_ in range(DECODE_ROUNDS):
                # rotate who goes first, so no prompt always follows the same one
                order = [(round_ + i) % len(states) for i in range(len(states))]
                for index in order:
                    token, cache, _ = states[index]
                    _sync(device)
                    start = time.perf_counter()
                    for _ in range(new_tokens):
                        token = model.decode(token, cache).argmax(-1)
                    _sync(device)
                    decode_seconds[index] = min(decode_seconds[index], time.perf_counter() - start)
                    states[index][0] = token
    finally:
        torch.set_num_threads(threads)
    element = 2 if device.type == "cuda" else 4
    per_token = 2 * MODEL["depth"] * MODEL["heads"] * MODEL["dim_head"] * element
    rows = []
    for length, (_, cache, prefill_seconds), seconds in zip(prompt_lengths, states, decode_seconds):
        rows.append(
            GenerateBenchRow(
                prompt_tokens=length,
                prefill_tokens=length - prefill_start(MODEL["segment_lengths"], length),
                prefill_seconds=prefill_seconds,
                decode_tokens=new_tokens,
                decode_seconds=seconds,
                cache_bytes=cache.nbytes(),
                cache_keys_per_layer=cache.keys_per_layer(),
                dense_cache_bytes=per_token * length,  # a dense cache after the prompt
            )
        )
        if progress:
            print(
                f"bench generate: prompt {length:,}: decode {rows[-1].decode_tokens_per_s:,.1f}"
                " tokens/s",
                file=sys.stderr,
                flush=True,
            )
    return rows


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
