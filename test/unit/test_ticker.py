"""DeadlineTicker on a fake clock: the grid, catching up, skipping after a stall, stopping."""
import threading

import pytest

from vla_insertion.core.ticker import DeadlineTicker


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t
        self.slept: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> bool:
        self.slept.append(seconds)
        self.t += seconds
        return False


def test_ticks_fall_on_an_absolute_grid_without_drift():
    clock = FakeClock()
    ticker = DeadlineTicker(10.0, clock=clock.now, sleep=clock.sleep)
    starts = []
    for _ in range(5):
        assert ticker.wait()
        starts.append(clock.t)
        clock.t += 0.013                         # the tick's work
    assert starts == pytest.approx([100.0, 100.1, 100.2, 100.3, 100.4])
    assert ticker.overruns == 0 and ticker.ticks == 5


def test_a_little_late_runs_at_once_a_stall_skips_and_counts():
    clock = FakeClock()
    ticker = DeadlineTicker(10.0, clock=clock.now, sleep=clock.sleep)
    assert ticker.wait()
    clock.t += 0.15                              # late by 0.05 s for the next deadline
    assert ticker.wait() and clock.t == pytest.approx(100.15)
    assert ticker.last_lateness_s == pytest.approx(0.05) and ticker.overruns == 0
    clock.t += 0.55                              # a stall past several deadlines
    assert ticker.wait()                         # 100.2 .. 100.5 skipped, 100.6 a period late
    assert ticker.overruns == 4 and ticker.tick_s == pytest.approx(100.6)
    clock.t += 0.01
    assert ticker.wait() and ticker.tick_s == pytest.approx(100.7)   # due: at once
    assert ticker.wait() and clock.t == pytest.approx(100.8)         # back on the grid


def test_max_lateness_zero_waits_for_the_next_future_deadline():
    clock = FakeClock()
    ticker = DeadlineTicker(10.0, clock=clock.now, sleep=clock.sleep, max_lateness_s=0.0)
    assert ticker.wait()
    clock.t += 0.85                              # a step that took 8.5 periods
    assert ticker.wait() and clock.t == pytest.approx(100.9)
    assert ticker.overruns == 8


def test_stop_ends_the_wait_at_once():
    stop = threading.Event()
    ticker = DeadlineTicker(0.001, stop)         # a 1000 s period
    assert ticker.wait()                          # the first deadline is now
    threading.Timer(0.05, stop.set).start()
    assert ticker.wait() is False                 # woken by stop, not by the period
    assert ticker.wait() is False


@pytest.mark.parametrize('rate', [0.0, -1.0, float('nan'), float('inf')])
def test_bad_rates_are_refused(rate):
    with pytest.raises(ValueError):
        DeadlineTicker(rate)
