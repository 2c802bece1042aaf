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
