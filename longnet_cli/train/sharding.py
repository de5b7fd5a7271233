"""``parallel.shard: fsdp``: parameters, gradients and optimizer state sharded over every rank.

torch's FSDP2 (``torch.distributed.fsdp.fully_shard``) is applied from outside the single-device
model, as torchtitan does: to each block, then to the whole model (the embedding, the final norm
and the tied head form the root's group). The mesh is the whole world, one flat dimension:
sequence-parallel ranks hold different tokens of the same sequences and data-parallel ranks
different sequences, so all their gradients are averaged together (torchtitan's flattened
data x context mesh). The sequence-parallel attention keeps its own process groups.

Each block's parameters are all-gathered just before its forward (and again for its backward,
recomputation under activation checkpointing included) and freed after it; gradients are
reduce-scattered, so a rank keeps 1/P of the weights, gradients and AdamW moments between steps.
Under ``train.precision: bf16`` FSDP's mixed-precision policy gathers the parameters in bfloat16
for compute and reduces gradients in float32; the sharded master weights and optimizer state
stay float32. fp16 is refused when the recipe loads (no sharded gradient scaler here).

The model's entry points besides ``forward`` are registered with FSDP so that its hooks gather
parameters for them too: ``token_nll`` (the training loss and evaluation both run through it)
and a block's ``forward_in_chunks`` (long inference).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

# The model's methods that run its layers: FSDP's hooks must wrap them as they wrap forward
# (``loss`` and ``nll_sum`` call ``token_nll``: wrapping it alone gathers once per call).
ROOT_METHODS = ("token_nll",)
BLOCK_METHODS = ("forward_in_chunks",)


class OwnProcessGroup:
    """The one-process gloo (and NCCL on CUDA) group that a sharded run without a launcher
    starts for its trivial mesh of one rank; ``release`` destroys it when the run ends."""

    def __init__(self) -> None:
        import torch.distributed as dist

        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)

    def release(self) -> None:
        """Destroy the group (the next run in this process starts its own)."""
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def check_support() -> None:
    """InputError (exit 2) when this torch lacks what sharding needs: FSDP2's ``fully_shard``
    and torch.distributed.checkpoint's safetensors storage with per-rank files."""
    import inspect

    from longnet_cli.core.errors import InputError

    try:
        from torch.distributed.checkpoint import HuggingFaceStorageWriter
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError as err:
        raise InputError(
            f"parallel.shard: fsdp needs torch's fully_shard and HuggingFaceStorageWriter, which "
            f"torch {torch.__version__} lacks ({err}); upgrade torch, or use parallel.shard: none"
        ) from None
    if "save_distributed" not in inspect.signature(HuggingFaceStorageWriter).parameters:
        raise InputError(
            f"parallel.shard: fsdp needs HuggingFaceStorageWriter(save_distributed=...), which "
            f"torch {torch.__version__} lacks; upgrade torch, or use parallel.shard: none"
        )


def start_trivial_mesh() -> OwnProcessGroup | None:
    """A process group of one rank when no launcher started one (a single process with
    ``parallel.shard: fsdp`` is a valid, trivial mesh); None when one exists already."""
    import torch.distributed as dist

    return None if dist.is_initialized() else OwnProcessGroup()


def mixed_precision_policy(precision: str):
    """FSDP's policy for a run's ``train.precision``: bf16 gathers parameters in bfloat16 and
    reduces gradients in float32; fp32 computes and reduces in float32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard_model(model: nn.Module, device: torch.device, precision: str) -> nn.Module:
    """Shard ``model`` (a ``LongNetTransformer``, moved to ``device``) over every rank in place:
    each block, then the whole model; returns it. Its parameters become DTensors."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    model.to(device)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = mixed_precision_policy(precision)
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
        for method in BLOCK_METHODS:
            register_fsdp_forward_method(block, method)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    for method in ROOT_METHODS:
        register_fsdp_forward_method(model, method)
    return model


def clip_grad_norm(parameters: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip sharded gradients to ``max_norm`` by their global norm, and return that norm.

    The norm of DTensor gradients is reduced over the mesh (each rank's shards' partial norms
    added up), so every rank clips by the norm of the whole gradient, as torchtitan does;
    ``full_tensor`` makes it a plain tensor.
    """
    from torch.distributed.tensor import DTensor

    parameters = list(parameters)
    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    if isinstance(total, DTensor):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total)
    return total
