"""``parallel.shard: fsdp``: parameters, gradients and optimizer state sharded over every rank
(torch's FSDP2 over gloo processes on a CPU). The losses equal the unsharded run's, alone and
with sequence parallelism; one process is a trivial mesh; each rank holds about 1/P of the
state; sharded checkpoints are written by every rank and resume exactly, on another number of
processes keeping the global batch, sharded or not; eval, generate, export and
train.init_from read them on one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
from helpers import exit_code, metrics_of, spawn_workers, write_train_recipe

STEPS = 10


def _train(recipe: Path, run: Path, *args: str, devices: int = 2) -> None:
    """``longnet train RECIPE --out RUN --devices N ARGS`` as a user types it; must succeed."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "longnet_cli", "train", str(recipe), "--out", str(run),
               "--devices", str(devices), "--quiet", *args]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr


def _same_losses(reference: Path, run: Path, steps: int = STEPS) -> None:
    """``run`` logged every step of ``reference`` with its loss within 1e-5 and gradient norm
    within 1e-5 relative."""
    expected, got = metrics_of(reference), metrics_of(run)
    assert [r["step"] for r in got if "loss" in r] == list(range(1, steps + 1))
    for a, b in zip(expected, got):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)


# Clipping at 0.5 clips nearly every step: the sharded gradients' global norm must be right.
CHANGES = {"train__steps": STEPS, "train__grad_clip": 0.5, "checkpoint__every": 5}


@pytest.fixture(scope="module")
def unsharded_2(corpus, tmp_path_factory) -> Path:
    """The unsharded reference: 2 data-parallel processes, 10 steps, fp32."""
    directory = tmp_path_factory.mktemp("unsharded")
    recipe = write_train_recipe(directory, corpus, **CHANGES)
    _train(recipe, directory / "run")
    return directory / "run"


@pytest.fixture(scope="module")
def sharded_2(corpus, tmp_path_factory) -> Path:
    """The same run with parallel.shard: fsdp."""
    directory = tmp_path_factory.mktemp("sharded")
    recipe = write_train_recipe(directory, corpus, **CHANGES, parallel__shard="fsdp")
    _train(recipe, directory / "run")
    return directory / "run"


def test_sharded_training_gives_the_unsharded_losses_on_2_processes(unsharded_2, sharded_2):
    _same_losses(unsharded_2, sharded_2)


def test_a_sharded_checkpoint_holds_every_ranks_shards_and_no_gathered_copy(sharded_2):
    final = sharded_2 / "checkpoints" / "step-0000010"
    names = {p.name for p in final.iterdir()}
    shards = {f"shard-0000{r}-model-00001-of-00001.safetensors" for r in (1, 2)}
    assert shards | {"optimizer.json", "rng-rank0.pt", "rng-rank1.pt", "state.json"} <= names
    assert not {"model.safetensors", "optimizer.pt", ".metadata"} & names  # nothing pickled
    state = json.loads((final / "state.json").read_text())
    assert state["shard"] == "fsdp" and state["world_size"] == 2
    assert set(state["files"]) == names - {"state.json"}  # every file hashed
    from safetensors import safe_open

    rows = {}
    for name in sorted(shards):  # each rank holds half of every row-sharded tensor, in fp32
        with safe_open(str(final / name), framework="pt") as handle:
            embedding = handle.get_slice("model/token_embedding.weight")
            rows[name] = embedding.get_shape()[0]
            assert embedding.get_dtype() == "F32"
            assert "model/head.weight" not in set(handle.keys())  # tied: stored once
    assert sum(rows.values()) == 600 and len(set(rows.values())) == 1


def test_sharded_sequence_parallel_training_gives_the_unsharded_losses(corpus, tmp_path):
    """parallel.sequence=2 on 2 processes: one sequence group, its two ranks shard the model."""
    recipe = write_train_recipe(tmp_path, corpus, **CHANGES, parallel__sequence=2)
    _train(recipe, tmp_path / "none")
    _train(recipe, tmp_path / "fsdp", "--set", "parallel.shard=fsdp")
    _same_losses(tmp_path / "none", tmp_path / "fsdp")


def test_compiled_blocks_train_sharded_to_the_eager_losses(corpus, sharded_2, tmp_path):
    """train.compile with parallel.shard: fsdp: each sharded block compiled in place; the first
    steps' losses are the eager sharded run's (a 3-step run shares its warm-up steps)."""
    recipe = write_train_recipe(tmp_path, corpus, **CHANGES, parallel__shard="fsdp")
    _train(recipe, tmp_path / "run", "--set", "train.compile=true", "--set", "train.steps=3")
    assert any("compile_s" in r for r in metrics_of(tmp_path / "run"))
    compiled = [r for r in metrics_of(tmp_path / "run") if "loss" in r]
    assert [r["step"] for r in compiled] == [1, 2, 3]
    for a, b in zip(metrics_of(sharded_2), compiled):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)


def test_one_process_is_a_trivial_mesh(corpus, tmp_path):
    """A single process (no launcher) shards over a mesh of one rank, with the losses of the
    unsharded run, and leaves no process group behind."""
    import torch.distributed as dist

    recipe = write_train_recipe(tmp_path, corpus, **{**CHANGES, "train__steps": 3})
    assert exit_code("train", str(recipe), "--out", str(tmp_path / "none"), "--quiet") == 0
    fsdp = ("--out", str(tmp_path / "fsdp"), "--quiet", "--set", "parallel.shard=fsdp")
    assert exit_code("train", str(recipe), *fsdp) == 0
    assert not dist.is_initialized()
    _same_losses(tmp_path / "none", tmp_path / "fsdp", steps=3)
    assert (tmp_path / "fsdp/checkpoints/step-0000003/shard-00001-model-00001-of-00001.safetensors"
            ).is_file()  # fmt: skip


def test_bf16_policy_trains_in_bfloat16_and_keeps_float32_masters(corpus, tmp_path):
    """train.precision: bf16 under FSDP's mixed-precision policy: the losses stay near the fp32
    run's (bf16 rounding), the sharded weights and moments in the checkpoint are float32."""
    import torch
    from safetensors import safe_open

    from longnet_cli.train.sharding import mixed_precision_policy

    policy = mixed_precision_policy("bf16")
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert mixed_precision_policy("fp32").param_dtype is None
    changes = {**CHANGES, "train__steps": 3, "model__activation_checkpointing": True}
    recipe = write_train_recipe(tmp_path, corpus, **changes)
    assert exit_code("train", str(recipe), "--out", str(tmp_path / "fp32"), "--quiet") == 0
    bf16 = ("--set", "parallel.shard=fsdp", "--set", "train.precision=bf16")
    assert exit_code("train", str(recipe), "--out", str(tmp_path / "bf16"), "--quiet", *bf16) == 0
    for a, b in zip(metrics_of(tmp_path / "fp32"), metrics_of(tmp_path / "bf16")):
        assert b["loss"] == pytest.approx(a["loss"], abs=2e-2)
        assert b["loss"] != a["loss"]  # computed in bf16
    shard = tmp_path / "bf16/checkpoints/step-0000003/shard-00001-model-00001-of-00001.safetensors"
    with safe_open(str(shard), framework="pt") as handle:
        dtypes = {handle.get_slice(name).get_dtype() for name in list(handle.keys())}
    assert dtypes == {"F32"}


def test_fp16_with_fsdp_exits_2_with_one_line(corpus, tmp_path, capsys):
    recipe = write_train_recipe(tmp_path, corpus, parallel__shard="fsdp", train__precision="fp16")
    assert exit_code("train", str(recipe), "--out", str(tmp_path / "run"), "--quiet") == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "train.precision" in line and "parallel.shard: fsdp" in line and "bf16" in line
    assert not (tmp_path / "run").exists()


def test_a_sharded_run_killed_with_sigkill_resumes_to_the_uninterrupted_losses(
    corpus, sharded_2, tmp_path
):
    """SIGKILL to the launcher after the step-5 checkpoint (its workers die with it): the same
    command resumes from that checkpoint, every rank reading its shards, RNG state and data
    position, and reproduces the uninterrupted sharded run's losses bit for bit."""
    import signal
    import time

    from helpers import MEASURED, wait_for

    recipe = write_train_recipe(tmp_path, corpus, **CHANGES, parallel__shard="fsdp")
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "longnet_cli", "train", str(recipe), "--out", str(run),
               "--devices", "2", "--quiet"]  # fmt: skip
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, start_new_session=True)
    wait_for(run / "checkpoints" / "step-0000005", process, timeout=300)
    os.killpg(process.pid, signal.SIGKILL)  # the launcher and its workers, at once
    process.communicate()
    time.sleep(0.5)
    assert not (run / "checkpoints" / "step-0000010").exists()
    _train(recipe, run)
    assert metrics_of(run) == [
        {**r, **{key: m.get(key) for key in MEASURED}}
        for r, m in zip(metrics_of(sharded_2), metrics_of(run))
    ]


def test_a_damaged_shard_is_skipped_and_resume_falls_back_past_it(corpus, sharded_2, tmp_path):
    """A flipped byte in one rank's shard of the newest checkpoint: resume sets it aside and
    continues from the one before, to the uninterrupted losses."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(sharded_2, run, ignore=shutil.ignore_patterns(".train.lock"))
    shard = run / "checkpoints/step-0000010/shard-00002-model-00001-of-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    recipe = write_train_recipe(tmp_path, corpus, **CHANGES, parallel__shard="fsdp")
    lines = [r for r in metrics_of(run) if r["step"] <= 5]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    _train(recipe, run)
    assert (run / "checkpoints/step-0000010.damaged").is_dir()
    assert [r["loss"] for r in metrics_of(run)] == [r["loss"] for r in metrics_of(sharded_2)]


def _at_step_5(run: Path, copy: Path) -> Path:
    """A copy of ``run`` as it was after its step-5 checkpoint (newer checkpoints and metrics
    removed): what a run stopped there left."""
    import shutil

    shutil.copytree(run, copy, ignore=shutil.ignore_patterns(".train.lock"))
    shutil.rmtree(copy / "checkpoints" / "step-0000010")
    lines = [r for r in metrics_of(copy) if r["step"] <= 5]
    (copy / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return copy


def test_a_sharded_checkpoint_resumes_unsharded_on_one_process_with_grad_accum_doubled(
    corpus, sharded_2, tmp_path, capsys
):
    """2 sharded processes' step-5 checkpoint, resumed by one unsharded process with the same
    global batch: it reads the whole tensors, says which RNG state it takes, and continues to
    the uninterrupted run's losses; its checkpoints are unsharded from then on."""
    run = _at_step_5(sharded_2, tmp_path / "run")
    recipe = write_train_recipe(tmp_path, corpus, **CHANGES)  # parallel.shard: none
    assert exit_code("train", str(recipe), "--out", str(run), "--quiet",
                     "--set", "train.grad_accum=4") == 0  # fmt: skip
    assert "a checkpoint of 2: rank 0 continues its saved RNG state, that of rank 1 is dropped" in (
        capsys.readouterr().err
    )
    _same_losses(sharded_2, run)
    final = run / "checkpoints" / "step-0000010"
    assert (final / "model.safetensors").is_file() and not list(final.glob("shard-*"))


def test_a_sharded_checkpoint_resumes_on_4_data_and_sequence_parallel_processes(
    corpus, sharded_2, tmp_path
):
    """The 2 processes' sharded checkpoint on 4 processes with parallel.sequence=2: two sequence
    groups (the same 2 data-parallel ranks, so the same global batch), one mesh of 4 over them;
    DCP reshards it, each rank reading its quarter; the losses are the uninterrupted run's
    (which are the unsharded run's, above)."""
    run = _at_step_5(sharded_2, tmp_path / "run")
    recipe = write_train_recipe(tmp_path, corpus, **CHANGES, parallel__shard="fsdp")
    _train(recipe, run, "--set", "parallel.sequence=2", devices=4)
    _same_losses(sharded_2, run)
    final = run / "checkpoints/step-0000010"
    assert len(list(final.glob("shard-*.safetensors"))) == 4
    state = json.loads((final / "state.json").read_text())
    assert (state["world_size"], state["dp_size"], state["sequence_parallel"]) == (4, 2, 2)


def test_an_unsharded_checkpoint_resumes_sharded(corpus, unsharded_2, tmp_path):
    """An unsharded run's step-5 checkpoint resumed with parallel.shard: fsdp: the weights are
    read before sharding, the optimizer's moments sharded over the ranks; same losses."""
    run = _at_step_5(unsharded_2, tmp_path / "run")
    recipe = write_train_recipe(tmp_path, corpus, **CHANGES, parallel__shard="fsdp")
    _train(recipe, run)
    _same_losses(unsharded_2, run)
    assert len(list((run / "checkpoints/step-0000010").glob("shard-*.safetensors"))) == 2


def test_eval_generate_export_and_init_from_read_a_sharded_checkpoint(
    corpus, sharded_2, unsharded_2, tmp_path, capsys
):
    """On one process, without the world that wrote it: the shards consolidate into the whole
    tensors (each the rows of rank 1's shard then rank 2's), the model of the unsharded run
    (within fp32 reduction-order noise); eval scores it as that run's, export writes those
    tensors, generate continues a prompt and train.init_from starts a run from it."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    from longnet_cli.artifacts.loading import load_model

    checkpoint = sharded_2 / "checkpoints" / "step-0000010"
    rows = []
    for rank in (1, 2):
        with safe_open(str(checkpoint / f"shard-0000{rank}-model-00001-of-00001.safetensors"),
                       framework="pt") as handle:  # fmt: skip
            rows.append(handle.get_tensor("model/token_embedding.weight"))
    model = load_model(sharded_2).state_dict()
    assert torch.equal(model["token_embedding.weight"], torch.cat(rows))
    reference = load_model(unsharded_2).state_dict()
    assert model.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.allclose(model[name], tensor, atol=1e-5), name

    reports = {}
    for name, run in (("sharded", sharded_2), ("unsharded", unsharded_2)):
        reports[name] = tmp_path / f"{name}.json"
        assert exit_code("eval", str(run), "--data", str(corpus), "--context", "64", "--quiet",
                         "--json", str(reports[name])) == 0  # fmt: skip
    sharded, unsharded = (json.loads(reports[n].read_text()) for n in ("sharded", "unsharded"))
    assert sharded["overall"]["loss"] == pytest.approx(unsharded["overall"]["loss"], abs=1e-4)

    capsys.readouterr()
    assert exit_code("generate", str(sharded_2), "--prompt", "def f", "--max-new-tokens", "4",
                     "--temperature", "0") == 0  # fmt: skip
    assert "decode: 4 tokens" in capsys.readouterr().err  # 4 new tokens from its weights
    assert exit_code("export", str(checkpoint), "--out", str(tmp_path / "export")) == 0
    exported = load_file(str(tmp_path / "export" / "model.safetensors"))
    assert torch.equal(exported["token_embedding.weight"], model["token_embedding.weight"])

    recipe = write_train_recipe(tmp_path, corpus, train__init_from=str(sharded_2), train__steps=2)
    assert exit_code("train", str(recipe), "--out", str(tmp_path / "started"), "--quiet") == 0
    (first,) = [r for r in metrics_of(tmp_path / "started") if "init_from" in r]
    assert first["init_from"]["path"] == str(checkpoint) and first["init_from"]["added"] == []


# --------------------------------------------------------------------------- memory per rank


def _state_bytes_worker(rank: int, world: int, port: int, results) -> None:
    """One training step of a small model, sharded over ``world`` gloo ranks; report the bytes
    this rank then holds in parameters, gradients and AdamW moments (local shards)."""
    try:
        import torch
        import torch.distributed as dist

        from longnet_cli.config.sections import TrainConfig
        from longnet_cli.model.transformer import LongNetTransformer
        from longnet_cli.train.schedule import build_optimizer
        from longnet_cli.train.sharding import clip_grad_norm, shard_model

        torch.set_num_threads(1)
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
        )
        torch.manual_seed(0)
        model = LongNetTransformer(1024, 64, 4, dim_head=16, heads=4, segment_lengths=(32,),
                                   dilation_rates=(1,))  # fmt: skip
        shard_model(model, torch.device("cpu"), "fp32")
        optimizer = build_optimizer(model, TrainConfig(seq_len=32, steps=1))
        tokens = torch.randint(0, 1024, (1, 33), generator=torch.Generator().manual_seed(rank))
        model.loss(tokens).backward()
        clip_grad_norm(model.parameters(), 1.0)
        optimizer.step()  # the moments exist from here on; the gradients stay

        def local(tensor) -> int:
            tensor = tensor.to_local() if hasattr(tensor, "to_local") else tensor
            return tensor.numel() * tensor.element_size()

        params = list(model.parameters())
        held = sum(local(p) + local(p.grad) for p in params)
        held += sum(local(v) for s in optimizer.state.values() for v in s.values() if v.dim())
        results.put((rank, held))
        dist.destroy_process_group()
    except Exception:
        results.put((rank, traceback.format_exc()))


def _state_bytes(world: int) -> dict[int, int]:
    reports = spawn_workers(_state_bytes_worker, world)
    failed = {rank: r for rank, r in reports.items() if isinstance(r, str)}
    assert not failed, failed
    return reports


def test_each_rank_holds_about_one_pth_of_the_parameters_gradients_and_moments():
    """Measured on real ranks after a step: parameters + gradients + AdamW moments per rank are
    the whole model's over P (within 3%: rows that do not divide evenly), for P = 2, 4; the
    whole is 4 float32 copies of every parameter."""
    import torch

    from longnet_cli.model.transformer import LongNetTransformer

    with torch.device("meta"):
        model = LongNetTransformer(1024, 64, 4, dim_head=16, heads=4, segment_lengths=(32,),
                                   dilation_rates=(1,))  # fmt: skip
    whole = 4 * 4 * sum(p.numel() for p in model.parameters())
    for world in (2, 4):
        held = _state_bytes(world)
        for rank, count in held.items():
            assert count == pytest.approx(whole / world, rel=0.03), (world, rank)
        print(f"P={world}: {held} bytes per rank, unsharded {whole}")


# --------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
def test_cuda_sharded_runs_on_nccl_with_the_bf16_policy(corpus, tmp_path):
    """On CUDA (NCCL; 2 GPUs where there are, else a mesh of one): fp32 sharded training follows
    the unsharded run (TF32 and reduction order: close, not exact), bf16 under FSDP's policy
    trains, and its checkpoint keeps float32 shards that resume."""
    import torch
    from safetensors import safe_open

    devices = min(torch.cuda.device_count(), 2)
    recipe = write_train_recipe(tmp_path, corpus, **CHANGES)
    _train(recipe, tmp_path / "none", devices=devices)
    _train(recipe, tmp_path / "fsdp", "--set", "parallel.shard=fsdp", devices=devices)
    for a, b in zip(metrics_of(tmp_path / "none"), metrics_of(tmp_path / "fsdp")):
        assert b["loss"] == pytest.approx(a["loss"], abs=2e-3)
    bf16 = ("--set", "parallel.shard=fsdp", "--set", "train.precision=bf16")
    _train(recipe, tmp_path / "bf16", *bf16, "--set", "train.steps=5", devices=devices)
    _train(recipe, tmp_path / "bf16", *bf16, devices=devices)  # resumes from step 5
    losses = [r["loss"] for r in metrics_of(tmp_path / "bf16")]
    assert len(losses) == STEPS and losses[-1] < losses[0]
    final = tmp_path / "bf16/checkpoints/step-0000010"
    for shard in final.glob("shard-*.safetensors"):
        with safe_open(str(shard), framework="pt") as handle:
            assert {handle.get_slice(n).get_dtype() for n in list(handle.keys())} == {"F32"}
