"""Helpers shared by test modules (imported as ``helpers``; tests/ is on the import path).

Test modules never import each other: what two of them need lives here, fixtures in conftest.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import sentencepiece
import yaml

from longnet_cli.cli import main
from longnet_cli.data import sources
from longnet_cli.data.format.reader import TokenizedCorpus

MANIFEST_KEYS = {"format", "tokenizer_sha256", "vocab_size", "dtype", "eos_id", "bos_id",
                 "documents", "tokens", "shards", "skipped"}  # fmt: skip

COLUMNS = ["doc_id", "source", "shard", "offset", "tokens", "bytes", "sha256", "split"]


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


def tokenize(paths, out: Path, *options: str, model: Path | None = None) -> int:
    argv = ["tokenize", *map(str, paths), "--out", str(out), "--quiet", *options]
    if model is not None:
        argv += ["--tokenizer", str(model)]
    return run(argv)


def files_of(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def read_stream(out: Path, manifest: dict) -> tuple[np.ndarray, list[int]]:
    """All shards concatenated (read here with numpy) and each shard's start in the stream."""
    dtype = {"uint16": "<u2", "uint32": "<u4"}[manifest["dtype"]]
    arrays = [np.fromfile(out / entry["file"], dtype=dtype) for entry in manifest["shards"]]
    starts = list(np.cumsum([0] + [a.size for a in arrays])[:-1])
    return (np.concatenate(arrays) if arrays else np.empty(0, dtype)), starts


def check_output(out: Path, expected, skipped, processor, model_bytes: bytes | None = None):
    """Everything the issue promises about an output directory, checked from the files."""
    names = {p.name for p in out.iterdir()}
    manifest = json.loads((out / "manifest.json").read_text())
    shard_files = [entry["file"] for entry in manifest["shards"]]
    files = {"manifest.json", "tokenizer.model", "documents.parquet", *shard_files}
    assert names - {".lock"} == {*files, "versions"}
    assert shard_files == [f"shard-{i:05d}.bin" for i in range(len(shard_files))]
    # one version, the current one; every top-level name is a relative link into it
    (version,) = (out / "versions").iterdir()
    assert {p.name for p in version.iterdir()} == {*files, ".readers.lock"}
    for name in files:
        assert os.readlink(out / name) == f"versions/{version.name}/{name}", name
        assert (version / name).is_file() and not (version / name).is_symlink(), name

    assert set(manifest) >= MANIFEST_KEYS
    assert manifest["format"] == 1
    # every file's content recorded: documents.parquet's sha256, and the manifest's own (its
    # text as written, without that key)
    documents = (out / "documents.parquet").read_bytes()
    assert manifest["documents_sha256"] == hashlib.sha256(documents).hexdigest()
    content = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    text = json.dumps(content, sort_keys=True, indent=2) + "\n"
    assert manifest["manifest_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    model = (out / "tokenizer.model").read_bytes()
    if model_bytes is not None:
        assert model == model_bytes
    assert manifest["tokenizer_sha256"] == hashlib.sha256(model).hexdigest()
    assert manifest["vocab_size"] == processor.vocab_size()
    assert manifest["dtype"] == ("uint16" if processor.vocab_size() <= 65536 else "uint32")
    assert manifest["eos_id"] == processor.eos_id() >= 0
    assert manifest["bos_id"] == processor.bos_id()
    assert manifest["documents"] == len(expected)
    assert manifest["skipped"]["counts"] == skipped
    for entry in manifest["shards"]:
        assert set(entry) == {"file", "tokens", "bytes", "sha256"}
        data = (out / entry["file"]).read_bytes()
        assert entry["bytes"] == len(data) == 2 * entry["tokens"]
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()

    table = pq.read_table(out / "documents.parquet")
    assert table.column_names == COLUMNS
    rows = table.to_pylist()
    assert [row["doc_id"] for row in rows] == list(range(len(expected)))
    assert [row["source"] for row in rows] == [source for source, _ in expected]

    stream, shard_starts = read_stream(out, manifest)
    assert stream.size == manifest["tokens"] == sum(row["tokens"] + 1 for row in rows)
    eos = manifest["eos_id"]
    assert int((stream == eos).sum()) == len(expected)  # EOS only between documents
    position = 0
    reader = TokenizedCorpus.open(out, verify="full")
    for row, (source, text) in zip(rows, expected):
        data = text.encode("utf-8")
        assert row["bytes"] == len(data), source
        assert row["sha256"] == hashlib.sha256(data).hexdigest(), source
        start = shard_starts[row["shard"]] + row["offset"]
        assert start == position, f"{source}: documents are back to back"
        ids = stream[start : start + row["tokens"]]
        assert stream[start + row["tokens"]] == eos, f"{source} is followed by EOS"
        assert processor.decode(ids.tolist()) == text, source
        assert np.array_equal(reader.document(row["doc_id"]), ids)
        if len(text) < sources.PIECE_CHARS and "▁" not in text:
            assert ids.tolist() == processor.encode(text), source  # one piece: plain encoding
        position = start + row["tokens"] + 1
    assert manifest["bytes"] == sum(len(t.encode()) for _, t in expected)
    return manifest


# metrics that depend on the machine, not on the run: compared runs differ in them
MEASURED = ("tokens_per_s", "elapsed_s", "mfu", "peak_flops")


STEPS = 12


def train_recipe(corpus: Path, **changes) -> dict:
    recipe = {
        "data": {"shards": str(corpus), "sampling": "stream"},
        "model": {
            "dim": 32,
            "depth": 2,
            "heads": 2,
            "dim_head": 16,
            "segment_lengths": [32, 64],
            "dilation_rates": [1, 2],
        },
        "train": {
            "seq_len": 64,
            "micro_batch_size": 2,
            "grad_accum": 2,
            "steps": STEPS,
            "lr": 3e-3,
            "warmup_steps": 2,
            "seed": 1,
            "threads": 1,
        },
        "checkpoint": {"every": 4, "keep_last": 2},
        "log": {"every": 1},
    }
    for key, value in changes.items():
        section, name = key.split("__")
        recipe.setdefault(section, {})[name] = value
    return recipe


def write_train_recipe(directory: Path, corpus: Path, **changes) -> Path:
    path = directory / "recipe.yaml"
    path.write_text(yaml.safe_dump(train_recipe(corpus, **changes)))
    return path


def metrics_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def exit_code(*args: str) -> int:
    """``longnet ARGS``' exit code, run in this process."""
    return run(list(args))


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1].decode()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def accelerate_launch(recipe: Path, run: Path, *extra: str, processes: int = 2) -> None:
    # On a CPU-only machine `--multi_gpu` is what starts N processes (gloo).
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "longnet_cli",
        "train",
        str(recipe),
        "--out",
        str(run),
        "--quiet",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr


def texts_of(corpus: TokenizedCorpus) -> list[list[str]]:
    """[[source, text]] of every document, read through ``corpus`` alone."""
    processor = sentencepiece.SentencePieceProcessor(model_file=str(corpus.tokenizer_path))
    sources = corpus.documents().column("source").to_pylist()
    return [[s, processor.decode(corpus.document(i).tolist())] for i, s in enumerate(sources)]


def fresh_run(
    directory: Path,
    corpus: Path,
    vocab_size: int,
    model: dict,
    shards: str | None = None,
    scale: float = 1.0,
) -> Path:
    """A run holding one checkpoint of a freshly initialised model of recipe section ``model``,
    its matrices times ``scale`` (larger weights: outputs that depend on the context) and its
    smeared keys' gates (if any) away from their start, one per head and layer, written by
    longnet's own checkpoint writer; ``shards`` overrides the corpus path the recipe names (the
    tokenizer still comes from ``corpus``)."""
    import torch

    from longnet_cli.artifacts.checkpoints import (
        finish_checkpoint,
        staging_path,
        step_name,
        write_model_files,
    )
    from longnet_cli.config import Recipe
    from longnet_cli.data.format.manifest import read_manifest

    recipe = Recipe.from_saved({
        "data": {"shards": shards or str(corpus)}, "model": model,
        "train": {"seq_len": 64, "steps": 1}, "checkpoint": {"every": 1},
    })  # fmt: skip
    torch.manual_seed(3)
    network = recipe.model.build(vocab_size)
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            if parameter.dim() > 1:
                parameter.mul_(scale)
            if name.endswith("key_smear"):
                parameter.uniform_(-2.0, 2.0)
    optimizer = torch.optim.AdamW(network.parameters())
    staging = staging_path(directory, 1)
    staging.mkdir(parents=True)
    write_model_files(staging, network, optimizer, recipe.to_yaml(), corpus / "tokenizer.model")
    state = {
        "step": 1, "tokens": 64, "tokenizer_sha256": read_manifest(corpus)["tokenizer_sha256"],
        "recipe": recipe.to_dict(), "loss": None,
    }  # fmt: skip
    finish_checkpoint(staging, directory / "checkpoints" / step_name(1), state)
    return directory


def tokenize_stdlib_files(out: Path, files, vocab_size: int) -> Path:
    """A tiny real corpus at ``out``: the named standard-library files (relative paths), half
    of them held out, a ``vocab_size`` SentencePiece model trained on them."""
    from longnet_cli.data.sources import stdlib_path
    from longnet_cli.tokenize import TokenizeOptions, tokenize_corpus

    tokenize_corpus(
        TokenizeOptions(
            paths=tuple(stdlib_path() / name for name in files), out=out, vocab_size=vocab_size,
            sample_bytes=1 << 20, holdout=0.5, workers=1, progress=False,
        )
    )  # fmt: skip
    return out


def free_port() -> int:
    """A TCP port free on this machine now (for a gloo process group's rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn_workers(target, world: int, port: int | None = None) -> dict[int, object]:
    """``target(rank, world, port, results)`` in ``world`` spawned processes (a real gloo
    world); each puts ``(rank, report)`` on ``results`` (a traceback string when it failed).
    Returns the reports by rank."""
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    results = context.Queue()
    port = free_port() if port is None else port
    processes = [
        context.Process(target=target, args=(rank, world, port, results)) for rank in range(world)
    ]
    for process in processes:
        process.start()
    reports = dict(results.get(timeout=300) for _ in range(world))
    for process in processes:
        process.join(timeout=60)
    return reports
