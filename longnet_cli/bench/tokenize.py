"""``longnet bench tokenize``: the tokenize command's wall time beside a plain encode loop.

The baseline is what a user would write first: a single-threaded loop of
``SentencePieceProcessor.encode`` over the documents' texts, already in memory (reading is not
timed for it). The command is timed end to end as a subprocess (interpreter start, walking,
reading, hashing, encoding, writing shards, table and manifest), so a ratio <= 1.0 means
parallel encoding pays for all the rest.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from longnet_cli.core.memory import maxrss_bytes


@dataclass
class TokenizeBenchResult:
    """Best-of-repeats timings of the command and of the baseline on the same corpus."""

    paths: list[str]
    workers: int
    documents: int
    bytes: int
    command_seconds: float
    command_tokens: int
    command_peak_rss_bytes: int
    baseline_seconds: float
    baseline_tokens: int

    @property
    def ratio(self) -> float:
        """Command wall time over baseline time (target: <= 1.0)."""
        return self.command_seconds / self.baseline_seconds

    def to_dict(self) -> dict:
        rates = {
            "ratio": self.ratio,
            "command_mb_per_s": self.bytes / 1e6 / self.command_seconds,
            "command_tokens_per_s": self.command_tokens / self.command_seconds,
            "baseline_mb_per_s": self.bytes / 1e6 / self.baseline_seconds,
            "baseline_tokens_per_s": self.baseline_tokens / self.baseline_seconds,
        }
        return {**asdict(self), **rates}


def _run_command(args: list[str]) -> tuple[float, dict, int]:
    """(wall seconds, parsed --json output, peak RSS bytes) of one ``longnet`` subprocess."""
    command = [sys.executable, "-m", "longnet_cli", *args]
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)  # reaps it, with its own resource usage
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        if process.returncode != 0:
            message = stderr.read().decode(errors="replace")
            raise RuntimeError(f"{' '.join(command)} failed:\n{message}")
        return seconds, json.loads(stdout.read()), maxrss_bytes(usage.ru_maxrss)


def bench_tokenize(
    paths: list[Path],
    *,
    tokenizer: Path | None,
    workers: int,
    exclude: list[str],
    repeats: int = 2,
    vocab_size: int = 32000,
) -> TokenizeBenchResult:
    """Time ``longnet tokenize`` (existing tokenizer) and the plain loop, best of ``repeats``."""
    from longnet_cli.data.sources import read_documents, walk_corpus
    from longnet_cli.data.tokenizer import load_tokenizer

    excludes = [arg for pattern in exclude for arg in ("--exclude", pattern)]
    with tempfile.TemporaryDirectory(prefix="longnet-bench-") as scratch:
        out = Path(scratch) / "out"
        if tokenizer is None:  # train one first (not timed)
            _run_command(["tokenize", *map(str, paths), "--out", str(out), "--quiet", "--json",
                          "--vocab-size", str(vocab_size), *excludes])  # fmt: skip
            tokenizer = Path(scratch) / "tokenizer.model"
            shutil.copyfile(out / "tokenizer.model", tokenizer)  # a link into the corpus
        args = ["tokenize", *map(str, paths), "--out", str(out), "--tokenizer", str(tokenizer),
                "--workers", str(workers), "--force", "--quiet", "--json", *excludes]  # fmt: skip
        texts = [d.text if d.text is not None else "".join(d.stream())
                 for d in read_documents(walk_corpus(paths, exclude=exclude))]  # fmt: skip
        processor = load_tokenizer(tokenizer)
        command_times, baseline_times, peak = [], [], 0
        for _ in range(repeats):
            seconds, summary, rss = _run_command(args)
            command_times.append(seconds)
            peak = max(peak, rss)
            start = time.perf_counter()
            baseline_tokens = sum(len(processor.encode(text)) for text in texts)
            baseline_times.append(time.perf_counter() - start)
    return TokenizeBenchResult(
        paths=[str(p) for p in paths], workers=workers, documents=summary["documents"],
        bytes=summary["bytes"], command_seconds=min(command_times),
        command_tokens=summary["tokens"], command_peak_rss_bytes=peak,
        baseline_seconds=min(baseline_times), baseline_tokens=baseline_tokens,
    )  # fmt: skip
