"""The newest `window_size` sensor samples, as one contiguous run of received samples.

The window only ever holds a contiguous run of received samples at its end (`valid_samples`);
the rows before it are NaN. The sequence rules (gaps, late samples, restarts) are those of every
stream, in core.stream.StreamTracker; a batch after a gap or a restart starts a new run, so the
window reports itself incomplete until enough samples followed, instead of silently splicing
samples that were never adjacent in time.
"""
from __future__ import annotations

import threading

import numpy as np

from vla_insertion.core.data import SensorWindowData


class SensorWindowBuffer:
    """Ring buffer of the newest samples; thread-safe."""

    def __init__(self, window_size: int, channel_names: tuple[str, ...],
                 sample_rate_hz: float) -> None:
        if window_size < 1 or not channel_names or sample_rate_hz <= 0:
            raise ValueError(f'window_size {window_size}, {len(channel_names)} channels, '
                             f'{sample_rate_hz} Hz: all must be > 0')
        self.window_size = window_size
        self.channel_names = tuple(channel_names)
        self.sample_rate_hz = float(sample_rate_hz)
        self._ring = np.full((window_size, len(channel_names)), np.nan, np.float32)  # (W, C)
        self._head = 0           # next row to write
        self._run = 0            # contiguous received samples ending at the newest, <= W
        self._lock = threading.Lock()
        self.accepted_samples = 0

    def push(self, samples: np.ndarray, contiguous: bool = True) -> None:
        """Append (n, C) samples, oldest first; `contiguous` False starts a new valid run.

        Pass False after a sequence gap or when the sender restarted, so samples that were
        never adjacent in time are not spliced together.
        """
        if samples.ndim != 2 or samples.shape[1] != len(self.channel_names):
            raise ValueError(f'samples of shape {samples.shape}, '
                             f'window has {len(self.channel_names)} channels')
        with self._lock:
            if not contiguous:
                self._run = 0
            self._append(samples)
            self.accepted_samples += len(samples)

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

    def window(self, stamp_s: float, clock_offset_s: float = 0.0,
               clock_calibrated: bool = False, gap_samples: int = 0,
               late_samples: int = 0) -> SensorWindowData:
        """Return a copy of the window, oldest row first; rows before the valid run are NaN."""
        with self._lock:
            samples = np.roll(self._ring, -self._head, axis=0)      # (W, C), a copy
            samples[:self.window_size - self._run] = np.nan
            return SensorWindowData(
                stamp_s=stamp_s, samples=samples, valid_samples=self._run,
                sample_rate_hz=self.sample_rate_hz, channel_names=self.channel_names,
                clock_offset_s=clock_offset_s, clock_calibrated=clock_calibrated,
                gap_samples=gap_samples, late_samples=late_samples)
