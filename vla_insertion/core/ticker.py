"""DeadlineTicker: the pacer of the fixed-rate loops that pace themselves.

Its callers: the action expert's thread scheduler, the chunk executor's control loop, the
reference policy, the sim cell's senders and the open-loop replay (on the recorded clock).
Not paced by it: rclpy timers (diagnostics, the expert's `scheduler: timer`), sim_cell's
status log, bag_player (each message at its recorded time; /clock every 1 / clock_rate_hz
after the last), and the VLM worker (a cap on its rate, not a rate).

Ticks fall on an absolute grid start + k * period of a monotonic clock, so the rate has no
drift and a late tick does not push the next one back. A tick that is due runs at once, even a
little late (lateness is recorded); when the loop falls more than `max_lateness_s` behind (a
stall), the deadlines it missed are skipped and counted as `overruns` rather than run in a
burst (`max_lateness_s=0`: always wait for the next deadline in the future, as a loop that
must not start a step late does). Sleeping waits on a stop Event, so stopping never waits out
a period.

    ticker = DeadlineTicker(10.0, stop)
    while ticker.wait():
        tick()

The clock and the sleep are parameters so that a replay can pace on recorded time and tests can
run on a fake clock.
"""
from __future__ import annotations

from collections.abc import Callable
import math
import threading
import time


class DeadlineTicker:
    """Absolute-deadline ticks at `rate_hz`; `wait()` returns False once stopped."""

    def __init__(self, rate_hz: float, stop: threading.Event | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], bool] | None = None,
                 max_lateness_s: float | None = None, start_s: float | None = None) -> None:
        if not (math.isfinite(rate_hz) and rate_hz > 0):
            raise ValueError(f'rate_hz must be a finite number > 0, got {rate_hz!r}')
        self.period_s = 1.0 / rate_hz
        self._stop = stop if stop is not None else threading.Event()
        self._clock = clock
        self._sleep = sleep if sleep is not None else self._stop.wait
        # catching up within one period keeps data senders lossless; beyond, skip
        self.max_lateness_s = self.period_s if max_lateness_s is None else max_lateness_s
        self._next_s: float | None = start_s
        self.ticks = 0
        self.overruns = 0              # deadlines skipped after a stall
        self.last_lateness_s = 0.0     # how late the last tick started [s]
        self.tick_s = math.nan         # the deadline of the current tick [s]

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def wait(self) -> bool:
        """Sleep until the next deadline; return False (at once) when stopped."""
        if self._stop.is_set():
            return False
        now = self._clock()
        if self._next_s is None:
            self._next_s = now
        late = now - self._next_s
        if late > self.max_lateness_s:       # a stall: skip what was missed, keep the grid
            missed = math.ceil((late - self.max_lateness_s) / self.period_s - 1e-9)
            self.overruns += missed
            self._next_s += missed * self.period_s
        delay = self._next_s - now
        if delay > 0 and self._sleep(delay):
            return False
        if self._stop.is_set():
            return False
        self.tick_s = self._next_s
        self.last_lateness_s = max(0.0, self._clock() - self._next_s)
        self._next_s += self.period_s
        self.ticks += 1
        return True

    def stop(self) -> None:
        self._stop.set()
