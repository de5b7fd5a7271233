"""``tools/bench_launch_cuts.py``: the code it copies as "before" still gives the package's
values, and the package's side launches fewer operations, forward and backward."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

TOOL = Path(__file__).resolve().parents[2] / "tools" / "bench_launch_cuts.py"


def _load_tool():
    spec = importlib.util.spec_from_file_location("bench_launch_cuts", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _load_tool()


def test_the_new_side_launches_fewer_operations():
    for name, steps in bench.cases(64).items():
        old, new = bench.count_ops(steps["old"]), bench.count_ops(steps["new"])
        assert new <= old, name
        if name != "rmsnorm":  # on a CPU build torch's rms_norm is the same composite
            assert new < 0.7 * old, (name, old, new)


def test_the_copied_code_gives_the_package_values():
    from longnet_cli.model.layers import RMSNorm
    from longnet_cli.model.positions import XPos, apply_positions

    q, k = torch.randn(1, 64, 2, 16), torch.randn(1, 64, 2, 16)
    tables = XPos(16).tables(64)
    for got, want in zip(apply_positions(q, k, tables), bench.old_apply_positions(q, k, tables)):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    norm, x = RMSNorm(16), torch.randn(3, 16)
    torch.testing.assert_close(norm(x), bench.old_rms_norm(x, norm.weight, norm.eps))


def test_the_model_case_patches_the_old_code_in_and_out():
    from longnet_cli.model import layers
    from longnet_cli.model.layers import RMSNorm

    steps = bench.model_case(64)
    forward, apply = RMSNorm.forward, layers.apply_positions
    old, new = bench.count_ops(steps["old"]), bench.count_ops(steps["new"])
    assert new < old
    assert (RMSNorm.forward, layers.apply_positions) == (forward, apply)  # restored
