"""Sender clock -> local clock for every stream: offset, steps and bad times.

Each message carries a sender time `t_s` and is received at local time `t_r`. With the true
offset `o = sender_clock - local_clock` and a one-way delay `d >= 0`, `t_s - t_r = o - d`. The
messages that waited least give the best estimate, so the offset is a high quantile of
`t_s - t_r` (a min-delay estimate that one fast outlier cannot drag): calibrated once from the
first `calibration_batches` messages, then tracked over a sliding window with a slow gain so
clock drift is followed without adding jitter to the stamps (`ClockOffsetEstimator`).

`SenderClock` maps the messages of one sender (one session; for cameras one view) to local
stamps with that offset and guards the mapping (docs/wire.md, "Clocks"):

- A stamp is never later than its own receive time (nothing is captured after it arrived) and
  never earlier than the stamp published before it.
- `future_stamp`: the message looks more than `tolerance_s` less delayed than the least delayed
  of the recent ones (its time maps that far ahead of its arrival, give or take the delay
  spread). No delay explains that, so the message is dropped, and neither the offset nor the
  last stamp moves: one bad time costs one message. Before calibration a less delayed message
  only raises the provisional offset, up to `step_threshold_s`.
- `past_stamp`: the time maps more than `tolerance_s` before the last stamp published although
  the message is newer by sequence: the sender's clock went back. Dropped likewise.
- A step: `step_messages` such messages in a row that agree on one new offset (within
  2 x `tolerance_s`) re-base the clock on them at once; the one that confirms the step is
  published, and calibration starts again. Messages that only look delayed (by more than
  `step_threshold_s`) are published with their old stamps; when they agree on one offset over
  `lag_confirm_s` of sender time, the local clock stepped (or the delay lasts, which one-way
  timing cannot tell apart) and the clock re-bases too.
"""
from __future__ import annotations

from dataclasses import dataclass
import math
import threading

import numpy as np

FUTURE_STAMP = 'future_stamp'   # maps after its own receive time: no delay explains it
PAST_STAMP = 'past_stamp'       # maps before the last stamp published, though newer by sequence

# Defaults of the clock model (docs/wire.md, "Clocks")
TOLERANCE_S = 0.05      # how far a stamp may map ahead of its arrival / behind the last one [s]
STEP_MESSAGES = 3       # odd messages in a row, agreeing within 2 x TOLERANCE_S, to re-base
STEP_THRESHOLD_S = 0.5  # delays beyond this do not move the offset [s]
LAG_CONFIRM_S = 1.0     # sender time over which agreeing delays mean our clock stepped [s]


@dataclass(frozen=True)
class ClockReport:
    """What a bridge publishes about one sender clock."""

    offset_s: float          # estimated sender_clock - local_clock [s] (nan before any message)
    calibrated: bool         # True once calibration_batches messages were seen since a (re)base
    samples: int             # messages used since start
    steps: int               # clock steps detected (re-bases) since start
    residual_s: float        # newest (t_s - t_r) - offset [s]: minus the excess delay


class ClockOffsetEstimator:
    """Min-delay offset estimate from (sender time, receive time) pairs; thread-safe."""

    def __init__(self, calibration_batches: int = 50, quantile: float = 0.9,
                 track_window: int = 200, gain: float = 0.02,
                 step_threshold_s: float = STEP_THRESHOLD_S) -> None:
        if calibration_batches < 1 or not 0.0 <= quantile <= 1.0 or not 0.0 < gain <= 1.0:
            raise ValueError(f'bad clock estimator settings: calibration_batches '
                             f'{calibration_batches}, quantile {quantile}, gain {gain}')
        self._n_cal = calibration_batches
        self._quantile = quantile
        self._gain = gain
        self._step_threshold_s = step_threshold_s
        # newest (t_s - t_r) values in a numpy ring: the quantile runs on every message, and
        # np.partition of an array is ~50x cheaper than np.quantile of a deque
        self._ring = np.empty(max(track_window, calibration_batches))
        self._size = 0
        self._next = 0
        self._lock = threading.Lock()
        self._offset = math.nan
        self._calibrated = False
        self._samples = 0
        self._residual = math.nan
        self._max = math.nan              # largest value in the ring

    @property
    def offset_s(self) -> float:
        """The current estimate [s]; nan before the first message."""
        return self._offset

    @property
    def calibrated(self) -> bool:
        return self._calibrated

    def least_delayed(self) -> float:
        """Return the largest recent (t_s - t_r) [s]: the least delayed message's; nan if none."""
        return self._max

    def update(self, sender_s: float, local_s: float) -> float:
        """Add one (sender time, receive time) pair; return the offset to use for it [s]."""
        d = sender_s - local_s
        with self._lock:
            self._samples += 1
            self._residual = d - self._offset
            if self._calibrated and abs(d - self._offset) > self._step_threshold_s:
                # a stalled or bursting message must not move the estimate
                return self._offset
            self._add(d)
            if not self._calibrated:
                # provisional until calibrated: the least delayed message so far
                self._offset = d if math.isnan(self._offset) else max(self._offset, d)
                if self._size >= self._n_cal:
                    self._offset = self._recent_quantile()
                    self._calibrated = True
            else:
                self._offset += self._gain * (self._recent_quantile() - self._offset)
            self._residual = d - self._offset
            return self._offset

    def rebase(self, deltas: list[float]) -> float:
        """Start over from these (t_s - t_r) values of one sender clock; return the offset."""
        with self._lock:
            self._size = self._next = 0
            self._calibrated = False
            self._offset = self._max = math.nan
            for d in deltas:
                self._add(d)
            self._offset = max(deltas)
            self._residual = deltas[-1] - self._offset
            return self._offset

    def _add(self, d: float) -> None:
        evicted = self._ring[self._next] if self._size == len(self._ring) else -math.inf
        self._ring[self._next] = d
        self._next = (self._next + 1) % len(self._ring)
        self._size = min(self._size + 1, len(self._ring))
        if not d < self._max:             # also when _max is nan
            self._max = d
        elif evicted == self._max:        # the largest left the window: look again
            self._max = float(self._ring[:self._size].max())

    def _recent_quantile(self) -> float:
        values = self._ring[:self._size] if self._size < len(self._ring) else self._ring
        k = int(round(self._quantile * (len(values) - 1)))
        return float(np.partition(values, k)[k])

    def to_local(self, sender_s: float, local_s: float) -> float:
        """Update with this message and return its sender time on the local clock [s]."""
        return sender_s - self.update(sender_s, local_s)

    def report(self, steps: int = 0) -> ClockReport:
        with self._lock:
            return ClockReport(offset_s=self._offset, calibrated=self._calibrated,
                               samples=self._samples, steps=steps, residual_s=self._residual)


@dataclass(frozen=True)
class Mapping:
    """One message's time on the local clock, or why it has none."""

    stamp_s: float           # local stamp [s]; nan when `cause` is set
    cause: str = ''          # '' or FUTURE_STAMP / PAST_STAMP: do not publish this message
    step_s: float = 0.0      # offset change when this message confirmed a clock step [s]
    calibrated: bool = False  # True for the message that completed a calibration


class SenderClock:
    """One sender's times on the local clock: calibrated offset, outliers and steps.

    `stamp` runs in one receive thread; `report` may run in another.
    """

    def __init__(self, calibration_batches: int = 50, tolerance_s: float = TOLERANCE_S,
                 step_messages: int = STEP_MESSAGES, step_threshold_s: float = STEP_THRESHOLD_S,
                 lag_confirm_s: float = LAG_CONFIRM_S, **estimator_options) -> None:
        if tolerance_s <= 0 or step_messages < 1 or step_threshold_s < tolerance_s:
            raise ValueError(f'bad sender clock settings: tolerance {tolerance_s} s, '
                             f'step_messages {step_messages}, step threshold '
                             f'{step_threshold_s} s')
        self._estimator = ClockOffsetEstimator(calibration_batches,
                                               step_threshold_s=step_threshold_s,
                                               **estimator_options)
        self._tolerance_s = tolerance_s
        self._step_messages = step_messages
        self._step_threshold_s = step_threshold_s
        self._lag_confirm_s = lag_confirm_s
        self._last_s = -math.inf          # last stamp published [s, local clock]
        self._run: list[float] = []       # (t_s - t_r) of the current run of odd messages
        self._run_kind = ''               # 'bad' (dropped) or 'lag' (published, delayed)
        self._run_start_s = math.nan      # sender time of the run's first message [s]
        self.steps = 0
        self.held = 0                     # stamps held at the previous one (within tolerance)

    @property
    def offset_s(self) -> float:
        return self._estimator.offset_s

    def report(self) -> ClockReport:
        return self._estimator.report(self.steps)

    def judge(self, sender_s: float, local_s: float) -> str:
        """Return FUTURE_STAMP, PAST_STAMP or '' for this time, changing nothing."""
        estimator = self._estimator
        offset = estimator.offset_s
        if math.isnan(offset):
            return ''
        ahead_limit = self._tolerance_s if estimator.calibrated else self._step_threshold_s
        if sender_s - local_s - estimator.least_delayed() > ahead_limit:
            return FUTURE_STAMP
        if sender_s - offset < self._last_s - self._tolerance_s:
            return PAST_STAMP
        return ''

    def stamp(self, sender_s: float, local_s: float) -> Mapping:
        """Return this message's local stamp, or the cause to drop it for."""
        estimator = self._estimator
        offset = estimator.offset_s
        if math.isnan(offset):
            return self._publish(sender_s - estimator.update(sender_s, local_s), local_s)
        delta = sender_s - local_s
        cause = self.judge(sender_s, local_s)
        if cause:
            if self._extend_run('bad', delta, sender_s) >= self._step_messages:
                return self._rebase(sender_s, local_s, offset)
            return Mapping(math.nan, cause)
        lagging = estimator.calibrated and delta - offset < -self._step_threshold_s
        if lagging:
            n = self._extend_run('lag', delta, sender_s)
            if (n >= self._step_messages
                    and sender_s - self._run_start_s >= self._lag_confirm_s):
                return self._rebase(sender_s, local_s, offset)
        else:
            self._run.clear()
        was_calibrated = estimator.calibrated
        offset = estimator.update(sender_s, local_s)
        mapping = self._publish(sender_s - offset, local_s)
        if estimator.calibrated and not was_calibrated:
            return Mapping(mapping.stamp_s, calibrated=True)
        return mapping

    def _extend_run(self, kind: str, delta: float, sender_s: float) -> int:
        """Add one odd message to the run if it agrees with it, else start a new run."""
        run = self._run
        agree = 2.0 * self._tolerance_s
        if (kind != self._run_kind or not run
                or max(max(run), delta) - min(min(run), delta) > agree):
            run.clear()
            self._run_kind, self._run_start_s = kind, sender_s
        run.append(delta)
        return len(run)

    def _rebase(self, sender_s: float, local_s: float, old_offset: float) -> Mapping:
        offset = self._estimator.rebase(self._run)
        self._run.clear()
        self.steps += 1
        # the old mapping was wrong from the step on: stamps continue from the new one
        self._last_s = -math.inf
        mapping = self._publish(sender_s - offset, local_s)
        return Mapping(mapping.stamp_s, step_s=offset - old_offset)

    def _publish(self, stamp_s: float, local_s: float) -> Mapping:
        stamp_s = min(stamp_s, local_s)
        if stamp_s < self._last_s:
            self.held += 1
            stamp_s = self._last_s
        self._last_s = stamp_s
        return Mapping(stamp_s)
