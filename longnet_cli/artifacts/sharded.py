"""Sharded checkpoints (``parallel.shard: fsdp``): every rank writes its own shards, nothing is
gathered on one process, and nothing is pickled.

torch.distributed.checkpoint (DCP) writes the model's parameters and the optimizer's tensors
through its safetensors storage (``HuggingFaceStorageWriter(save_distributed=True)``): one
``shard-RRRRR-model-00001-of-00001.safetensors`` per rank (R = rank + 1), each header recording
where its pieces sit in the whole tensors. DCP's default storage would pickle its metadata
(``.metadata``); this one writes none: ``HuggingFaceStorageReader`` rebuilds it from the
headers, so a checkpoint loads on any number of processes, or on one without a process group.
The optimizer's hyper-parameters (its param groups, parameters named by their path in the
model) are JSON (``optimizer.json``). Everything else of a checkpoint is as in ``checkpoints``:
the same staging directory, RNG files, recipe, tokenizer, hashes and ``state.json`` last.

The tensors are named ``model/<parameter path>`` (tied weights once, under their first name)
and ``optim/<parameter path>/<state>`` (AdamW's ``step``, ``exp_avg``, ``exp_avg_sq``).

Any layout reads any other: ``load_sharded`` fills a sharded model's shards or an unsharded
model's whole tensors (a run resumed with ``parallel.shard: none``), ``load_full_optimizer``
shards an unsharded checkpoint's optimizer state, and ``read_sharded_model`` consolidates the
weights on one process without a process group (eval, generate, export, ``train.init_from``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from longnet_cli.artifacts.layout import OPTIMIZER_GROUPS_FILE, SHARD_PATTERN
from longnet_cli.core.files import write_synced

MODEL_PREFIX = "model/"
OPTIMIZER_PREFIX = "optim/"


def _inner(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer under accelerate's wrapper (or the optimizer itself)."""
    return getattr(optimizer, "optimizer", optimizer)


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state as ``model/<path>`` tensors, a weight tied to another once (under the
    name ``named_parameters`` gives it first); DTensors on a sharded model."""
    first: dict[int, str] = {}
    names = set()
    for name, parameter in model.named_parameters(remove_duplicate=False):
        first.setdefault(id(parameter), name)
        names.add(name)
    keep = set(first.values())
    return {
        MODEL_PREFIX + name: tensor
        for name, tensor in model.state_dict().items()
        if name not in names or name in keep
    }


def _optimizer_state(model: nn.Module, optimizer) -> dict[str, Any]:
    """The optimizer's state keyed by parameter path (DCP's form: any sharding, any world);
    its state is created first when it has none yet (before the first step)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, _inner(optimizer))


def _flat(model: nn.Module, optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Every tensor a sharded checkpoint holds, by name, and the optimizer's param groups."""
    table = model_tensors(model)
    state = _optimizer_state(model, optimizer)
    for path, entries in state["state"].items():
        for key, value in entries.items():
            table[f"{OPTIMIZER_PREFIX}{path}/{key}"] = value
    return table, state["param_groups"]


def write_sharded(directory: Path, model: nn.Module, optimizer, main: bool) -> None:
    """Every rank (a collective): its shards of the model and the optimizer into
    ``directory``; the main process also the param groups (``optimizer.json``)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    table, groups = _flat(model, optimizer)
    dcp.save(table, storage_writer=HuggingFaceStorageWriter(str(directory), save_distributed=True))
    if main:
        text = json.dumps({"param_groups": groups}, indent=2, sort_keys=True)
        write_synced(directory / OPTIMIZER_GROUPS_FILE, text.encode())


def load_sharded(directory: Path, model: nn.Module, optimizer) -> None:
    """Every rank (a collective): the model's and the optimizer's state from the sharded
    checkpoint in ``directory``, each rank reading the pieces of its own shards (the world
    that wrote it may have had another size), or of an unsharded ``model`` the whole tensors."""
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    table, _ = _flat(model, optimizer)
    single = not torch.distributed.is_initialized()  # an unsharded run of one process
    _load(table, HuggingFaceStorageReader(str(directory)), no_dist=single)  # in place
    groups = json.loads((Path(directory) / OPTIMIZER_GROUPS_FILE).read_text())["param_groups"]
    for group in groups:
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
    state: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in table.items():
        if name.startswith(OPTIMIZER_PREFIX):
            path, _, key = name[len(OPTIMIZER_PREFIX) :].rpartition("/")
            state.setdefault(path, {})[key] = tensor
    set_optimizer_state_dict(model, _inner(optimizer), {"state": state, "param_groups": groups})


def _load(table: dict[str, torch.Tensor], reader, no_dist: bool) -> None:
    """``dcp.load`` into ``table`` in place; ``no_dist``: on this process alone, without the
    warning DCP gives for it ("assuming the intent is to load in a single process")."""
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(table, storage_reader=reader, no_dist=no_dist)


def read_sharded_model(directory: Path) -> dict[str, torch.Tensor]:
    """The whole model of the sharded checkpoint in ``directory``, consolidated on this process
    (no process group needed; any world may have written it): parameter path -> tensor, a tied
    weight once."""
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    reader = HuggingFaceStorageReader(str(directory))
    table = {
        name: torch.empty(entry.size, dtype=entry.properties.dtype)
        for name, entry in reader.read_metadata().state_dict_metadata.items()
        if name.startswith(MODEL_PREFIX)
    }
    _load(table, reader, no_dist=True)
    return {name[len(MODEL_PREFIX) :]: tensor for name, tensor in table.items()}


def sharded_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    """The whole shape of every model tensor of the sharded checkpoint in ``directory``, read
    from its files' headers (nothing loaded)."""
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    entries = HuggingFaceStorageReader(str(directory)).read_metadata().state_dict_metadata
    return {
        name[len(MODEL_PREFIX) :]: tuple(entry.size)
        for name, entry in entries.items()
        if name.startswith(MODEL_PREFIX)
    }


def load_full_optimizer(model: nn.Module, optimizer, state: dict) -> None:
    """Every rank (a collective): an unsharded checkpoint's optimizer state (``state``, as
    ``optimizer.state_dict()`` gave it: parameters by index) into the shards of a sharded
    ``model``'s optimizer, each rank keeping its pieces (a run resumed with ``fsdp``)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    inner = _inner(optimizer)
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    path_of: dict[int, str] = {}
    for saved, group in zip(state["param_groups"], inner.param_groups, strict=True):
        for index, parameter in zip(saved["params"], group["params"], strict=True):
            path_of[index] = names[id(parameter)]
    by_path = {
        "state": {path_of[index]: entries for index, entries in state["state"].items()},
        "param_groups": [
            {**group, "params": [path_of[index] for index in group["params"]]}
            for group in state["param_groups"]
        ],
    }
    options = StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(model, inner, by_path, options=options)


def is_sharded(directory: Path) -> bool:
    """Whether ``directory`` holds a sharded checkpoint (its shard files)."""
    return any(Path(directory).glob(SHARD_PATTERN))
