"""The refresher's torch threads follow its mode: its CPU share in async, every core in sync."""
import os

import pytest
import torch

from embedray.cluster.refresh import _set_threads
from embedray.pipeline.config import RefreshConfig


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("num_cpus, expected", [(0.25, 1), (1.0, 1), (2.0, 2)])
def test_async_refresher_uses_its_cpu_share(num_cpus, expected):
    _set_threads(RefreshConfig(mode="async", num_cpus=num_cpus))
    assert torch.get_num_threads() == min(expected, len(os.sched_getaffinity(0)))


def test_sync_refresher_uses_every_core_while_training_waits():
    torch.set_num_threads(1)
    _set_threads(RefreshConfig(mode="sync", num_cpus=0.25))
    assert torch.get_num_threads() == len(os.sched_getaffinity(0))


def test_refresh_summary_counts_what_the_refresher_delivered():
    from embedray.pipeline.refresh import refresh_summary

    cfg = RefreshConfig(mode="async", every=40, niceness="idle")
    events = [{"kind": "pool", "step": 0, "version": 1},
              {"kind": "refresh", "step": 101, "version": 2, "snapshot_step": 40},
              {"kind": "refresh", "step": 165, "failed": True, "error": "RayActorError: died"},
              {"kind": "refresh", "step": 239, "version": 3, "snapshot_step": 200}]
    line = refresh_summary(cfg, 240, events)
    assert line == ("[embedray] refresher: 2 refreshed pool(s) of 5 snapshot(s) (every 40 steps), "
                    "in use from step 101, 239; 1 failed")
    # none arrived: say so and what to change (the setting's value named)
    starved = refresh_summary(cfg, 240, events[:1])
    assert starved.startswith("[embedray] refresher: 0 refreshed pool(s) of 5 snapshot(s)")
    assert "none finished before training ended" in starved and "refresh.niceness idle" in starved
    # a run too short for any snapshot, or one whose only refreshes failed, gets no CPU hint
    assert "none finished" not in refresh_summary(cfg, 40, events[:1])
    assert "none finished" not in refresh_summary(cfg, 240, events[:1] + events[2:3])
    assert refresh_summary(RefreshConfig(mode="static"), 240, events) is None
    assert refresh_summary(RefreshConfig(mode="off"), 240, []) is None
