"""The learning-rate schedule: warm-up, cosine decay, and its extension when train.steps changes."""

from __future__ import annotations

import itertools

import pytest

from longnet_cli.train.schedule import Schedule


@pytest.mark.parametrize("warmup", [0, 3, 10])
def test_schedule_extension_is_continuous(warmup):
    """Every (first steps, resume step, new steps): the lr at the resume step is the one the
    old schedule gives it, then never rises, and is the floor at the new last step; in warm-up
    the new schedule is the plain one of the new length (the warm-up does not depend on it)."""
    lr, floor = 1e-3, 1e-4
    for first in (12, 40):
        base = Schedule(lr, min(warmup, first), first, floor)
        for step in range(0, first + 1):
            for steps in (step + 1, step + 7, 3 * first):
                if steps < max(step, base.warmup) or steps == first:
                    continue
                new = base.extended(step, steps)
                assert new.lr_at(step) == pytest.approx(base.lr_at(step), rel=1e-12)
                if step <= base.warmup:
                    assert new == Schedule(lr, base.warmup, steps, floor)
                    continue
                tail = [new.lr_at(s) for s in range(step, steps)]
                assert all(b <= a for a, b in itertools.pairwise(tail))
                if len(tail) > 1:  # one step left: it keeps the lr (no jump to the floor)
                    assert tail[-1] == pytest.approx(floor)
                again = new.extended(steps, steps + 5)  # a second change chains on
                assert again.lr_at(steps) == pytest.approx(new.lr_at(steps))
