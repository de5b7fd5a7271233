"""``runtime``: device resolution, the precision table and the measured matmul peak."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from longnet_cli import runtime
from longnet_cli.core.errors import InputError


def test_devices_by_name_with_the_messages_each_command_shows():
    expected = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert runtime.resolve_device(None) == expected
    assert runtime.resolve_device("auto", auto=True) == expected
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(
        InputError, match=r"^--device 'gpu0' is not a device \(cpu, cuda, cuda:1\)$"
    ):
        runtime.resolve_device("gpu0")
    with pytest.raises(InputError, match=r"\(auto, cpu, cuda, cuda:1\)$"):
        runtime.resolve_device("gpu0", auto=True)
    with pytest.raises(InputError, match="'auto' is not a device"):
        runtime.resolve_device("auto")  # only where the command accepts it
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available on this machine"):
            runtime.resolve_device("cuda:0")


def test_the_precision_table():
    assert runtime.PRECISION_NAMES == ("fp32", "bf16", "fp16")
    assert runtime.DTYPE_NAMES == ("float32", "bfloat16", "float16")
    dtypes = {name: precision.dtype for name, precision in runtime.PRECISIONS.items()}
    assert dtypes == {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    accelerate = {name: p.mixed_precision for name, p in runtime.PRECISIONS.items()}
    assert accelerate == {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def test_autocast_runs_matmuls_in_the_named_precision_on_a_cpu():
    a = torch.randn(8, 8)
    with runtime.autocast_context("bf16", "cpu"):
        assert (a @ a).dtype == torch.bfloat16
    with runtime.autocast_context("fp32", "cpu"):
        assert (a @ a).dtype == torch.float32


def test_the_matmul_peak_is_measured_once_per_device_and_dtype():
    peak = runtime.measure_peak_flops("cpu", torch.float32, size=64, seconds=0.01)
    assert peak.flops_per_s > 0 and peak.size == 64 and peak.dtype == "float32"
    assert peak.to_json()["matmul_size"] == 64
    first = runtime.device_peak_flops("cpu", torch.float32)
    assert runtime.device_peak_flops("cpu", torch.float32) is first


def test_importing_runtime_does_not_import_torch():
    code = "import sys, longnet_cli.runtime; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
