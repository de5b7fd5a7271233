"""resume.py: which keys a resumed run may change."""

from __future__ import annotations

from longnet_cli.config.resume import safe_to_change_on_resume
from longnet_cli.config.schema import recipe_from_dict


def test_safe_to_change_on_resume(minimal):
    old = recipe_from_dict(minimal())
    safe = minimal(
        train={"steps": 20, "threads": 2},
        checkpoint={"every": 2, "keep_last": 9},
        log={"every": 1, "tensorboard": True},
        eval={"every": 4, "contexts": ["1K"], "docs": 2, "data": "elsewhere"},
        data={"eval_shards": "held"},
        parallel={"sequence": 2, "shard": "fsdp"},
    )
    assert safe_to_change_on_resume(old, recipe_from_dict(safe)) == []
    # the global batch is checked on resume instead (train.resume.check_global_batch)
    safe = minimal(train={"micro_batch_size": 4, "grad_accum": 8})
    assert safe_to_change_on_resume(old, recipe_from_dict(safe)) == []
    assert safe_to_change_on_resume(old, old) == []
    unsafe = minimal(
        train={"lr": 1e-3, "seed": 1, "seq_len": "1K", "steps": 20},
        model={"dim": 128},
        data={"shards": "other"},
    )
    assert sorted(safe_to_change_on_resume(old, recipe_from_dict(unsafe))) == [
        "data.shards",
        "model.dim",
        "train.lr",
        "train.seed",
        "train.seq_len",
    ]
