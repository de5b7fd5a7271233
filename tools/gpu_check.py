"""``pipelines/gpu_check.sh``: the CUDA path end to end on one NVIDIA GPU, as one table.

A harness of the source checkout, not part of the shipped package: it runs from a copy of the
working tree (``PYTHONPATH=. bash pipelines/gpu_check.sh``), reads ``recipes/`` and ``tests/``
beside it, and needs only what ``longnet`` itself needs (no pytest, no zstandard, no network).
What it measures on, it makes here: a long corpus and a tiny recipe (``write_corpus``,
``tiny_recipe``); its own tests live in ``tests/tools/``.

Steps, each a ``longnet`` command or a pytest run in its own process (a failure is a row of the
table, not the end of the check). Each step has a time limit, and the whole check a budget
(``--budget-s``, default 180 s): a step that runs past its limit is a FAILED row saying so,
and a step the budget no longer covers is a "skipped: budget" row. Sizes are set by the figures
they give, estimated for an H200 (~990 bf16 TFLOP/s dense peak; each step also pays ~5-10 s
of process start and CUDA initialisation):

    step        what                                                        estimate  limit
    tests       pytest -m gpu over tests/ (every gpu test); skipped where   20-40 s   60 s
                pytest is not installed
    attention   longnet bench attention, CUDA, bf16, 8 heads, D = 64,        15-25 s   45 s
                fwd+bwd at 32K, 256K and 1M; dense SDPA (flash) beside it
                up to 256K (dense at 1M alone would cost ~1 min: ~4e15
                FLOP a run, a warm-up and 3 repeats), so the ratio at 32K
                (the target) and 256K
    layer       one paper_base block, fwd+bwd at 1M tokens under bf16        10-15 s   30 s
                autocast: time, peak memory (~1e14 FLOP a step)
    train       longnet bench train recipes/paper_base.yaml, 10 steps of     20-30 s   45 s
                64K tokens (~5e13 FLOP each), against the bf16 matmul peak
                measured in the same run
    eval        a tiny model whose reach is 1M, trained 4 steps on a         30-45 s   60 s
                corpus made here (tokenizer trained on a 2 MB sample),
                scored by longnet eval at a 1M-token context

Estimated ~100-155 s in all; the limits add up to 240 s, and the budget caps the total.
Targets printed beside the figures: dilated fwd+bwd >= 0.5x dense TFLOP/s at 32K; paper_base
training >= 0.35 of the bf16 peak. Without CUDA: exit 2 with one line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ATTENTION_LENGTHS = (1 << 15, 1 << 18, 1 << 20)
DENSE_MAX = 1 << 18  # dense SDPA up to 256K: the ratio at 32K and 256K, not ~1 min at 1M
TRAIN_STEPS = 10
TOKENIZER_SAMPLE = "2M"  # bytes of the corpus the tokenizer trains on
BUDGET_S = 180.0  # the whole check, by default
MIN_STEP_S = 10.0  # a step with less of the budget left is skipped, not started
ATTENTION_TARGET = 0.5  # dilated / dense attained TFLOP/s, fwd+bwd, at 32K
TRAIN_TARGET = 0.35  # paper_base model FLOP/s / bf16 matmul peak
CORPUS_BYTES = 8 << 20  # one document of about 2-3M tokens: more than the 1M context
TINY_REACH = 1 << 20
ROOT = Path(__file__).resolve().parents[1]  # the checkout: tools/ beside recipes/ and tests/


@dataclass
class Row:
    """One line of the table."""

    check: str
    figure: str
    target: str = ""
    status: str = "ok"  # "ok", "below", "FAILED", "skipped", "skipped: budget"


def no_cuda_message() -> str | None:
    """The one line printed when this machine cannot run the check (None: it can)."""
    import torch

    if not torch.cuda.is_available():
        return (
            "gpu_check: no CUDA device here (torch.cuda.is_available() is False); "
            "run it on a machine with an NVIDIA GPU"
        )
    return None


def format_table(rows: Sequence[Row]) -> str:
    """The rows as an aligned plain-text table."""
    header = Row("check", "figure", "target", "status")
    width = [
        max(len(getattr(r, f)) for r in (header, *rows)) for f in ("check", "figure", "target")
    ]
    lines = []
    for r in (header, *rows):
        lines.append(
            f"{r.check:<{width[0]}}  {r.figure:<{width[1]}}  {r.target:<{width[2]}}  {r.status}"
        )
    return "\n".join(lines)


class StepTimeout(RuntimeError):
    """A step ran past its time limit."""


def _timeout(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (a ``time.perf_counter()`` value; None: no limit)."""
    return None if deadline is None else max(1.0, deadline - time.perf_counter())


def _call(
    args: Sequence[str], timeout: float | None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """``subprocess.run`` in a session of its own: past ``timeout`` the whole process group is
    killed (a test or a launcher's children too, so none keeps the GPU), then TimeoutExpired."""
    with subprocess.Popen(
        list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
        start_new_session=True,
    ) as process:  # fmt: skip
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            raise subprocess.TimeoutExpired(args, timeout, stdout, stderr) from None
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


def _run(
    args: Sequence[str], log: Path, deadline: float | None = None
) -> subprocess.CompletedProcess:
    """Run a command until ``deadline`` (a ``time.perf_counter()`` value), its output appended
    to ``log``; raise StepTimeout past the deadline, RuntimeError naming its last line if it
    fails."""
    started = time.perf_counter()
    timeout = _timeout(deadline)
    try:
        result = _call(args, timeout)
    except subprocess.TimeoutExpired as err:
        with log.open("a") as out:
            out.write(f"$ {' '.join(args)}  (killed after {timeout:.0f} s)\n")
            out.write(_text(err.stdout) + _text(err.stderr) + "\n")
        raise StepTimeout(f"timed out after {timeout:.0f} s") from None
    with log.open("a") as out:
        out.write(
            f"$ {' '.join(args)}  ({time.perf_counter() - started:.1f} s, rc {result.returncode})\n"
        )
        out.write(result.stdout + result.stderr + "\n")
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise RuntimeError(f"exit {result.returncode}: {lines[-1] if lines else ''}")
    return result


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode("utf-8", "replace")
    return output or ""


def _longnet(*args: str) -> list[str]:
    return [sys.executable, "-m", "longnet_cli", *args]


# -- the steps ------------------------------------------------------------------------------------


def gpu_tests_command() -> list[str]:
    """pytest over every ``-m gpu`` test of tests/; a module that cannot be imported here is an
    error of the summary, not the end of the run (``--continue-on-collection-errors``)."""
    return [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
            "--continue-on-collection-errors", str(ROOT / "tests")]  # fmt: skip


def check_gpu_tests(work: Path, log: Path, deadline: float | None = None) -> list[Row]:
    if importlib.util.find_spec("pytest") is None:  # a GPU image without the test extra
        return [Row("pytest -m gpu", "pytest is not installed here", "all pass", "skipped")]
    timeout = _timeout(deadline)
    try:
        result = _call(gpu_tests_command(), timeout, cwd=ROOT)
    except subprocess.TimeoutExpired as err:
        with log.open("a") as out:
            out.write(_text(err.stdout) + _text(err.stderr))
        raise StepTimeout(f"timed out after {timeout:.0f} s") from None
    with log.open("a") as out:
        out.write(result.stdout + result.stderr)
    summary = (result.stdout.strip().splitlines() or [""])[-1].strip("= ")
    return [Row("pytest -m gpu", summary, "all pass", "ok" if result.returncode == 0 else "FAILED")]


def attention_rows(report: dict) -> list[Row]:
    """Rows of ``longnet bench attention --json`` output: TFLOP/s, dense beside, the ratio."""
    by_key = {(r["n"], r["impl"]): r for r in report["rows"] if r["mode"] == "fwd+bwd"}
    rows = []
    for n in sorted({n for n, _ in by_key}):
        dilated, dense = by_key.get((n, "dilated")), by_key.get((n, "dense"))
        label = f"attention {_length(n)} fwd+bwd"
        if dilated is None:
            continue
        figure = (
            f"dilated {dilated['gflops'] / 1e3:.1f} TFLOP/s ({dilated['seconds'] * 1e3:.1f} ms)"
        )
        target, status = "", "ok"
        if dense is not None:
            ratio = dilated["gflops"] / dense["gflops"]
            figure += f", dense {dense['gflops'] / 1e3:.1f} TFLOP/s: ratio {ratio:.2f}"
            if n == ATTENTION_LENGTHS[0]:
                target = f"ratio >= {ATTENTION_TARGET}"
                status = "ok" if ratio >= ATTENTION_TARGET else "below"
        rows.append(Row(label, figure, target, status))
    return rows


def check_attention(work: Path, log: Path, deadline: float | None = None) -> list[Row]:
    lengths = ",".join(_length(n) for n in ATTENTION_LENGTHS)
    result = _run(
        _longnet("bench", "attention", "--device", "cuda", "--dtype", "bfloat16", "--heads", "8",
                 "--dim-head", "64", "--lengths", lengths, "--dense-max", _length(DENSE_MAX),
                 "--mode", "fwd+bwd", "--repeats", "3", "--json"),
        log, deadline,
    )  # fmt: skip
    return attention_rows(json.loads(result.stdout))


def check_layer(work: Path, log: Path, deadline: float | None = None) -> list[Row]:
    result = _run(
        [sys.executable, str(Path(__file__).resolve()), "--layer", str(TINY_REACH)], log, deadline
    )
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    figure = (
        f"{figures['seconds'] * 1e3:.0f} ms, {figures['tokens_per_s'] / 1e6:.2f}M tokens/s, "
        f"peak {figures['peak_bytes'] / 2**30:.1f} GiB"
    )
    return [Row("1 layer 1M fwd+bwd (paper_base block, bf16)", figure)]


def layer_step(n: int, device: str = "cuda") -> dict:
    """One paper_base block (768 wide, 12 heads, D = 64, xPos, segments 2K..32K) forward and
    backward over n tokens under bf16 autocast: best of 3 after a warm-up, and peak memory."""
    import torch

    from longnet_cli.model.config import LongNetConfig
    from longnet_cli.model.transformer import Block
    from longnet_cli.runtime import autocast_context

    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    config = LongNetConfig(
        num_tokens=8, dim=768, depth=1, dim_head=64, heads=12,
        segment_lengths=(2048, 4096, 8192, 16384, 32768), dilation_rates=(1, 2, 4, 6, 12),
        positions="xpos",
    )  # fmt: skip
    block = Block(config).to(device)
    x = torch.randn(1, n, config.dim, device=device, requires_grad=True)
    dout = torch.randn_like(x)

    def step() -> float:
        sync()
        start = time.perf_counter()
        with autocast_context("bf16", device.type):
            out = block(x)
        out.backward(dout)
        sync()
        x.grad = None
        block.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = min(step() for _ in range(3))
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return {"n": n, "seconds": seconds, "tokens_per_s": n / seconds, "peak_bytes": peak}


def check_train(work: Path, log: Path, deadline: float | None = None) -> list[Row]:
    result = _run(
        _longnet("bench", "train", str(ROOT / "recipes" / "paper_base.yaml"), "--steps",
                 str(TRAIN_STEPS), "--vocab-size", "32000", "--json"),
        log, deadline,
    )  # fmt: skip
    report = json.loads(result.stdout)
    fraction = report["fraction_of_peak"]
    figure = (
        f"{report['tokens_per_s']:,.0f} tokens/s, {report['model_gflops'] / 1e3:.0f} TFLOP/s of "
        f"bf16 peak {report['matmul_peak_gflops']['bf16'] / 1e3:.0f}: {fraction:.2f}"
    )
    status = "ok" if fraction >= TRAIN_TARGET else "below"
    target = f">= {TRAIN_TARGET} of peak"
    return [Row(f"paper_base train, {TRAIN_STEPS} steps", figure, target, status)]


def write_corpus(directory: Path, size: int = CORPUS_BYTES) -> Path:
    """One long text document of ``size`` bytes: this interpreter's standard-library source,
    files in sorted order, repeated if need be (deterministic, no network)."""
    from longnet_cli.data.sources import stdlib_path

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "stdlib.txt"
    if path.exists() and path.stat().st_size >= size:
        return directory
    parts, total = [], 0
    files = sorted(p for p in stdlib_path().rglob("*.py") if "site-packages" not in p.parts)
    while total < size:
        for file in files:
            try:
                text = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            parts.append(text)
            total += len(text.encode("utf-8"))
            if total >= size:
                break
    path.write_text("".join(parts), encoding="utf-8")
    return directory


def tiny_recipe(shards: Path) -> dict:
    """A tiny model whose reach (longest segment) is 1M, trained a few steps on 4K windows."""
    segments = [w for w in (2048, 16384, 131072) if w < TINY_REACH] + [TINY_REACH]
    return {
        "data": {"shards": str(shards)},
        "model": {
            "dim": 64, "depth": 2, "heads": 2, "dim_head": 32,
            "segment_lengths": segments,  # w/r = 2048 keys per branch, as in the paper
            "dilation_rates": [max(1, w // 2048) for w in segments],
        },
        "train": {"seq_len": 4096, "steps": 4, "lr": 1e-3, "precision": "bf16", "seed": 0},
        "checkpoint": {"every": 4},
    }  # fmt: skip


def check_eval(work: Path, log: Path, deadline: float | None = None) -> list[Row]:
    import yaml

    corpus = write_corpus(work / "corpus")
    shards = work / "data"
    _run(_longnet("tokenize", str(corpus), "--out", str(shards), "--vocab-size", "1024",
                  "--sample-bytes", TOKENIZER_SAMPLE, "--holdout", "0"), log, deadline)  # fmt: skip
    recipe = work / "tiny_1m.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(shards)))
    run = work / "runs" / "tiny_1m"
    shutil.rmtree(run, ignore_errors=True)  # a fresh run each time
    _run(_longnet("train", str(recipe), "--out", str(run), "--quiet"), log, deadline)
    result = _run(
        _longnet("eval", str(run), "--context", str(TINY_REACH), "--docs", "1", "--split", "all",
                 "--json", "-", "--quiet"),
        log, deadline,
    )  # fmt: skip
    report = json.loads(result.stdout)
    figure = (
        f"{report['overall']['tokens']:,} tokens, loss {report['overall']['loss']:.3f}, "
        f"{report['tokens_per_s']:,.0f} tokens/s, peak {report['peak_memory_bytes'] / 2**30:.1f}"
        f" GiB, {report['runs'][0]['precision']}"
    )
    return [Row("eval 1M context (tiny model, reach 1M)", figure)]


@dataclass(frozen=True)
class Step:
    """One step of the check: its row label, its function and its time limit in seconds."""

    label: str
    check: Callable[[Path, Path, float], list[Row]]
    limit_s: float


STEPS: dict[str, Step] = {
    "tests": Step("pytest -m gpu", check_gpu_tests, 60.0),
    "attention": Step("attention", check_attention, 45.0),
    "layer": Step("1 layer 1M fwd+bwd", check_layer, 30.0),
    "train": Step("paper_base train", check_train, 45.0),
    "eval": Step("eval 1M context", check_eval, 60.0),
}


def run_checks(
    work: Path,
    steps: Sequence[str],
    on_row: Callable[[Row], None],
    budget_s: float = BUDGET_S,
    clock: Callable[[], float] = time.perf_counter,
) -> list[Row]:
    """Every step in turn, each until its limit or the end of the budget, whichever is first;
    a failing step is a FAILED row naming its last error line, a step started with less than
    ``MIN_STEP_S`` of the budget left is a "skipped: budget" row."""
    work.mkdir(parents=True, exist_ok=True)
    log = work / "gpu_check.log"
    end = clock() + budget_s
    rows = []
    for name in steps:
        step = STEPS[name]
        started = clock()
        if end - started < MIN_STEP_S:
            new = [Row(step.label, f"{budget_s:.0f} s budget spent", status="skipped: budget")]
        else:
            try:
                new = step.check(work, log, min(started + step.limit_s, end))
            except StepTimeout as err:
                limit = min(step.limit_s, end - started)
                new = [Row(step.label, f"{err} (limit {limit:.0f} s)", status="FAILED")]
            except Exception as err:  # one step's failure is a row; the others still run
                new = [Row(step.label, f"{type(err).__name__}: {err}"[:160], status="FAILED")]
            new[-1].figure += f" [{clock() - started:.0f} s]"
        for row in new:
            rows.append(row)
            on_row(row)
    return rows


def _length(n: int) -> str:
    from longnet_cli.core.lengths import format_length

    return format_length(n)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--work", type=Path, default=Path(os.environ.get("GPU_CHECK_DIR", "runs/gpu_check"))
    )
    parser.add_argument(
        "--steps", default=",".join(STEPS), help="comma list of " + ", ".join(STEPS)
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=BUDGET_S,
        help=f"time for the whole check in seconds (default {BUDGET_S:.0f}); steps it no longer "
        "covers are 'skipped: budget' rows",
    )
    parser.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    parser.add_argument("--layer", type=int, help=argparse.SUPPRESS)  # the layer step's process
    args = parser.parse_args(argv)
    args.work = args.work.resolve()
    message = no_cuda_message()
    if message is not None:
        print(message, file=sys.stderr)
        return 2
    if args.layer:
        print(json.dumps(layer_step(args.layer)))
        return 0
    steps = [s for s in args.steps.split(",") if s]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        print(
            f"gpu_check: unknown step(s) {unknown}; choose from {', '.join(STEPS)}", file=sys.stderr
        )
        return 2
    import torch

    name = torch.cuda.get_device_name()
    print(
        f"# gpu_check on {name}, torch {torch.__version__}, work dir {args.work}", file=sys.stderr
    )
    started = time.perf_counter()
    rows = run_checks(
        args.work,
        steps,
        lambda row: print(f"  {row.check}: {row.figure} {row.status}", file=sys.stderr),
        budget_s=args.budget_s,
    )
    print(
        f"\n# gpu_check: {name}, torch {torch.__version__}, {time.perf_counter() - started:.0f} s"
    )
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps([row.__dict__ for row in rows], indent=2))
    return 1 if any(row.status == "FAILED" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
