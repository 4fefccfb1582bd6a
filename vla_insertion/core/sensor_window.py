"""The newest `window_size` sensor samples, with gaps, late samples and restarts accounted for.

Samples arrive in batches with the sequence number of their first sample. The window only ever
holds a contiguous run of received samples at its end (`valid_samples`); the rows before it are
NaN. A gap in the sequence therefore starts a new run: the window reports itself incomplete
until enough samples followed the gap, instead of silently splicing samples that were never
adjacent in time. Samples older than the newest one already taken are late and dropped.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
import threading

import numpy as np

from vla_insertion.core.data import SensorWindowData
from vla_insertion.core.wire.base import seq_delta
from vla_insertion.core.wire.sensor import SensorBatch


@dataclass(frozen=True)
class PushResult:
    """What one batch did to the window."""

    accepted: int            # samples appended
    late: int                # samples dropped because the window already had newer ones
    gap: int                 # samples missing between the previous batch and this one
    restarted: bool          # the sender's session changed: the window started over
    stale: bool = False      # from a sender session that was since replaced: dropped


class SensorWindowBuffer:
    """Ring buffer of the newest samples; thread-safe."""

    def __init__(self, window_size: int, channel_names: tuple[str, ...],
                 sample_rate_hz: float, max_jump_samples: int = 65536) -> None:
        if window_size < 1 or not channel_names or sample_rate_hz <= 0:
            raise ValueError(f'window_size {window_size}, {len(channel_names)} channels, '
                             f'{sample_rate_hz} Hz: all must be > 0')
        self.window_size = window_size
        self.channel_names = tuple(channel_names)
        self.sample_rate_hz = float(sample_rate_hz)
        # a sequence jump beyond this (~100 s at 650 Hz) is a reset by the sender, not loss
        self.max_jump_samples = max_jump_samples
        self._ring = np.full((window_size, len(channel_names)), np.nan, np.float32)  # (W, C)
        self._head = 0           # next row to write
        self._run = 0            # contiguous received samples ending at the newest, <= W
        self._next_seq: int | None = None
        self._session: int | None = None
        self._old_sessions: deque[int] = deque(maxlen=16)
        self._newest_time_s = float('nan')   # sender clock [s]
        self._lock = threading.Lock()
        self.gap_samples = 0
        self.late_samples = 0
        self.restarts = 0
        self.accepted_samples = 0

    def push(self, batch: SensorBatch) -> PushResult:
        """Append a decoded batch; samples must have len(channel_names) columns."""
        if batch.samples.shape[1] != len(self.channel_names):
            raise ValueError(f'batch has {batch.samples.shape[1]} channels, '
                             f'window has {len(self.channel_names)}')
        with self._lock:
            if batch.session in self._old_sessions:
                # a restarted sender's old socket can still deliver a datagram or two
                return PushResult(accepted=0, late=0, gap=0, restarted=False, stale=True)
            restarted = self._session is not None and (
                batch.session != self._session or (
                    self._next_seq is not None
                    and abs(seq_delta(batch.sequence, self._next_seq)) > self.max_jump_samples))
            if restarted:
                self.restarts += 1
                if batch.session != self._session:
                    self._old_sessions.append(self._session)
                self._next_seq, self._run = None, 0
            self._session = batch.session
            gap = late = 0
            samples, times = batch.samples, batch.times_s
            if self._next_seq is not None:
                delta = seq_delta(batch.sequence, self._next_seq)
                if delta > 0:
                    gap = delta
                    self._run = 0
                elif delta < 0:
                    late = min(-delta, batch.count)
                    samples, times = samples[late:], times[late:]
            self._append(samples)
            if len(samples):
                self._newest_time_s = float(times[-1])
                self._next_seq = (batch.sequence + batch.count) & 0xFFFFFFFF
            self.gap_samples += gap
            self.late_samples += late
            self.accepted_samples += len(samples)
            return PushResult(accepted=len(samples), late=late, gap=gap, restarted=restarted)

    def _append(self, samples: np.ndarray) -> None:
        n = len(samples)
        if n >= self.window_size:
            samples, n = samples[-self.window_size:], self.window_size
        end = self._head + n
        if end <= self.window_size:
            self._ring[self._head:end] = samples
        else:
            split = self.window_size - self._head
            self._ring[self._head:] = samples[:split]
            self._ring[:end - self.window_size] = samples[split:]
        self._head = end % self.window_size
        self._run = min(self._run + n, self.window_size)

    @property
    def valid_samples(self) -> int:
        with self._lock:
            return self._run

    @property
    def newest_time_s(self) -> float:
        """Sender time of the newest accepted sample [s] (nan before the first)."""
        with self._lock:
            return self._newest_time_s

    def window(self, stamp_s: float, clock_offset_s: float = 0.0,
               clock_calibrated: bool = False) -> SensorWindowData:
        """Return a copy of the window, oldest row first; rows before the valid run are NaN."""
        with self._lock:
            samples = np.roll(self._ring, -self._head, axis=0)      # (W, C), a copy
            samples[:self.window_size - self._run] = np.nan
            return SensorWindowData(
                stamp_s=stamp_s, samples=samples, valid_samples=self._run,
                sample_rate_hz=self.sample_rate_hz, channel_names=self.channel_names,
                clock_offset_s=clock_offset_s, clock_calibrated=clock_calibrated,
                gap_samples=self.gap_samples, late_samples=self.late_samples)
