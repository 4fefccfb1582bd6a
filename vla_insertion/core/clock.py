"""Sender -> local clock offset estimation, shared by the three bridges.

Each message carries a sender timestamp `t_s` and is received at local time `t_r`. With the true
offset `o = sender_clock - local_clock` and a one-way delay `d >= 0`, `t_s - t_r = o - d`. The
messages that waited least give the best estimate, so the offset is a high quantile of
`t_s - t_r` (a min-delay estimate that one fast outlier cannot drag): calibrated once from the
first `calibration_batches` messages, then tracked over a sliding window with a slow gain so
clock drift is followed without adding jitter to the stamps. A step (a sender's clock was set,
or a different machine took over) shows as many consecutive large residuals and restarts the
calibration.
"""
from __future__ import annotations

from dataclasses import dataclass
import logging
import math
import threading

import numpy as np

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClockReport:
    """What a bridge publishes about its clock mapping."""

    offset_s: float          # estimated sender_clock - local_clock [s] (nan before any message)
    calibrated: bool         # True once the first calibration_batches messages were seen
    samples: int             # messages used since start
    recalibrations: int      # steps detected since start
    residual_s: float        # newest (t_s - t_r) - offset [s]: minus the excess delay


class ClockOffsetEstimator:
    """Min-delay offset estimate from (sender time, receive time) pairs; thread-safe."""

    def __init__(self, calibration_batches: int = 50, quantile: float = 0.9,
                 track_window: int = 200, gain: float = 0.02, step_threshold_s: float = 0.5,
                 step_count: int = 10) -> None:
        if calibration_batches < 1 or not 0.0 <= quantile <= 1.0 or not 0.0 < gain <= 1.0:
            raise ValueError(f'bad clock estimator settings: calibration_batches '
                             f'{calibration_batches}, quantile {quantile}, gain {gain}')
        self._n_cal = calibration_batches
        self._quantile = quantile
        self._gain = gain
        self._step_threshold_s = step_threshold_s
        self._step_count = step_count
        # newest (t_s - t_r) values in a numpy ring: the quantile runs on every message, and
        # np.partition of an array is ~50x cheaper than np.quantile of a deque
        self._ring = np.empty(max(track_window, calibration_batches))
        self._size = 0
        self._next = 0
        self._lock = threading.Lock()
        self._offset = math.nan
        self._calibrated = False
        self._samples = 0
        self._recalibrations = 0
        self._outliers = 0
        self._residual = math.nan

    def update(self, sender_s: float, local_s: float) -> float:
        """Add one (sender time, receive time) pair; return the offset to use for it [s]."""
        d = sender_s - local_s
        with self._lock:
            self._samples += 1
            if self._calibrated and abs(d - self._offset) > self._step_threshold_s:
                self._outliers += 1
                if self._outliers >= self._step_count:
                    _LOG.warning(f'clock step of {d - self._offset:+.3f} s; recalibrating')
                    self._recalibrations += 1
                    self._calibrated = False
                    self._size = self._next = 0
                    self._offset = math.nan
                else:
                    # one late message (a stall, a burst) must not move the estimate
                    self._residual = d - self._offset
                    return self._offset
            else:
                self._outliers = 0
            self._ring[self._next] = d
            self._next = (self._next + 1) % len(self._ring)
            self._size = min(self._size + 1, len(self._ring))
            if not self._calibrated:
                # provisional until calibrated: the least delayed message so far
                self._offset = d if math.isnan(self._offset) else max(self._offset, d)
                if self._size >= self._n_cal:
                    self._offset = self._recent_quantile()
                    self._calibrated = True
                    _LOG.info(f'clock offset calibrated: {self._offset * 1e3:.3f} ms '
                              f'from {self._size} messages')
            else:
                self._offset += self._gain * (self._recent_quantile() - self._offset)
            self._residual = d - self._offset
            return self._offset

    def _recent_quantile(self) -> float:
        values = self._ring[:self._size] if self._size < len(self._ring) else self._ring
        k = int(round(self._quantile * (len(values) - 1)))
        return float(np.partition(values, k)[k])

    def to_local(self, sender_s: float, local_s: float) -> float:
        """Update with this message and return its sender time on the local clock [s]."""
        return sender_s - self.update(sender_s, local_s)

    def report(self) -> ClockReport:
        with self._lock:
            return ClockReport(offset_s=self._offset, calibrated=self._calibrated,
                               samples=self._samples, recalibrations=self._recalibrations,
                               residual_s=self._residual)


class MonotonicStamp:
    """Keep one topic's stamps non-decreasing.

    Consumers take differences of consecutive stamps; an offset correction must never make a
    newer message look older than the one before it.
    """

    def __init__(self) -> None:
        self._last = -math.inf
        self.clamped = 0        # how many stamps were raised to the previous one

    def __call__(self, stamp_s: float) -> float:
        if stamp_s < self._last:
            self.clamped += 1
            return self._last
        self._last = stamp_s
        return stamp_s
