"""bench attention's timing rule: what it measures at long lengths."""

from __future__ import annotations

import time

from longnet_cli.bench.attention import AttentionBenchConfig, _timed


def test_long_first_run_is_not_the_measurement():
    """A first run longer than ``long_seconds`` (cold: page faults of new buffers) is followed
    by one measured run, whose time is the result."""
    durations = iter([0.2, 0.01, 0.5, 0.5])
    calls = []

    def run():
        calls.append(1)
        time.sleep(next(durations))

    cfg = AttentionBenchConfig(lengths=[8], long_seconds=0.1, repeats=3)
    seconds = _timed(run, cfg, lambda: None)
    assert len(calls) == 2
    assert seconds < 0.1


def test_short_runs_keep_the_best_of_repeats_after_warm_up():
    durations = iter([0.02, 0.05, 0.03, 0.01, 0.04])
    calls = []

    def run():
        calls.append(1)
        time.sleep(next(durations))

    cfg = AttentionBenchConfig(lengths=[8], warmup_seconds=0.06, min_seconds=1.0, repeats=2)
    seconds = _timed(run, cfg, lambda: None)
    assert len(calls) == 4  # warm-up 0.02 + 0.05 (>= 0.06), then two measured
    assert 0.01 <= seconds < 0.025
