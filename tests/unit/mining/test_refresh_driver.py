"""Rank 0's refresh driver in sync mode: training waits for each refresh, says so while it waits,
and stops waiting at refresh.sync_timeout_s, taking the late pool as async mode would."""
import pytest

from embedray.pipeline import refresh as refresh_mod
from embedray.pipeline.config import RefreshConfig
from embedray.pipeline.refresh import RefreshDriver


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Log:
    def __init__(self):
        self.events = []

    def event(self, kind, step, record):
        self.events.append((kind, step, record))


def _driver(clock, done_at: float, timeout: float = 3600.0):
    submitted = []
    cfg = RefreshConfig(mode="sync", every=10, sync_timeout_s=timeout)
    driver = RefreshDriver(cfg, submit=lambda step, w: submitted.append(step) or step,
                           ready=lambda handle: clock.now >= done_at, result=lambda handle: {"pool_version": 2},
                           clock=clock, sleep=clock.sleep)
    return driver, submitted


def test_sync_waits_for_the_refresh_and_says_so(monkeypatch, capsys):
    monkeypatch.setattr(refresh_mod, "SYNC_NOTE_S", 60.0)
    clock = FakeClock()
    driver, submitted = _driver(clock, done_at=150.0)
    driver.snapshot(10, lambda: {})
    assert submitted == [10] and clock.now == pytest.approx(150.0, abs=0.3)  # waited until it was done
    out = capsys.readouterr().out
    assert out.count("training waits for the sync refresh") == 2  # at 60 s and at 120 s
    log = Log()
    driver.on_step(10, log)
    assert log.events == [("refresh", 10, {"pool_version": 2, "finished_step": 10, "skipped_snapshots": 0})]


def test_sync_stops_waiting_at_its_timeout_and_takes_the_pool_when_it_lands(capsys):
    clock = FakeClock()
    driver, submitted = _driver(clock, done_at=1000.0, timeout=300.0)
    driver.snapshot(10, lambda: {})
    assert clock.now == pytest.approx(300.0, abs=0.3)  # gave up waiting
    assert "not done after 300 s (refresh.sync_timeout_s)" in capsys.readouterr().out
    log = Log()
    driver.on_step(10, log)
    assert log.events == []  # still running: training goes on with the pool it has
    driver.snapshot(20, lambda: {})  # the late refresh still runs: no second one is queued behind it
    assert submitted == [10] and driver.skipped == 1 and clock.now == pytest.approx(300.0, abs=0.3)
    clock.now = 1000.0
    driver.on_step(23, log)
    ((kind, step, record),) = log.events
    assert step == 23 and record["sync_timed_out"] is True and record["finished_step"] == 23


def test_the_timeout_must_be_positive():
    with pytest.raises(ValueError, match="refresh.sync_timeout_s must be > 0"):
        RefreshConfig(mode="sync", sync_timeout_s=0)
