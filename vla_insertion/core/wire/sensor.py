"""Sensor batches: one UDP datagram = header + per-sample times + float32 samples."""
from __future__ import annotations

from dataclasses import dataclass
import struct

import numpy as np

from vla_insertion.core.wire.base import (
    BAD_COUNT, BAD_MAGIC, BAD_VALUE, BAD_VERSION, Codec, NON_FINITE, OVERSIZED, register,
    TRUNCATED, WireError)

MAX_CHANNELS = 64
MAX_SAMPLES = 1024


@dataclass(frozen=True, slots=True, eq=False)
class SensorBatch:
    """A batch of consecutive samples as sent: sender clock, sensor units."""

    sequence: int               # sequence number of the first sample (uint32, wraps)
    times_s: np.ndarray         # (N,) float64 sample times on the sender's clock [s]
    samples: np.ndarray         # (N, C) float32, oldest first
    session: int = 0            # random per sender start: a change means the sender restarted

    @property
    def count(self) -> int:
        return int(self.samples.shape[0])


@register
class SensorCodecV1(Codec[SensorBatch]):
    """`sensor_v1`: 16-byte header, N float64 times, N x C float32 samples, little-endian."""

    name = 'sensor_v1'
    stream = 'sensor'
    default_max_bytes = 16384
    MAGIC = b'VLAS'
    VERSION = 1
    # magic, version, channels, count, session, first sequence
    HEADER = struct.Struct('<4sBBHII')

    def __init__(self, max_bytes: int | None = None, channels: int | None = None) -> None:
        super().__init__(max_bytes)
        self.channels = channels    # expected channel count; None accepts any

    def encode(self, record: SensorBatch) -> bytes:
        n, c = record.samples.shape
        header = self.HEADER.pack(self.MAGIC, self.VERSION, c, n, record.session,
                                  record.sequence)
        return b''.join((header, np.ascontiguousarray(record.times_s, '<f8').tobytes(),
                         np.ascontiguousarray(record.samples, '<f4').tobytes()))

    def decode(self, data: bytes | bytearray | memoryview) -> SensorBatch:
        self.check_size(data, self.HEADER.size)
        magic, version, channels, count, session, sequence = self.HEADER.unpack_from(data)
        if magic != self.MAGIC:
            raise WireError(BAD_MAGIC, f'magic {bytes(magic)!r} != {self.MAGIC!r}')
        if version != self.VERSION:
            raise WireError(BAD_VERSION, f'version {version}, this decoder speaks {self.VERSION}')
        if not (1 <= channels <= MAX_CHANNELS and 1 <= count <= MAX_SAMPLES):
            raise WireError(BAD_COUNT, f'{count} samples x {channels} channels out of range')
        if self.channels is not None and channels != self.channels:
            raise WireError(BAD_COUNT, f'{channels} channels, configured {self.channels}')
        expected = self.HEADER.size + count * (8 + 4 * channels)
        if len(data) != expected:
            cause = TRUNCATED if len(data) < expected else OVERSIZED
            raise WireError(cause, f'{len(data)} bytes, header declares {expected}')
        times = np.frombuffer(data, '<f8', count, self.HEADER.size).astype(np.float64)
        samples = np.frombuffer(data, '<f4', count * channels, self.HEADER.size + 8 * count)
        samples = samples.astype(np.float32).reshape(count, channels)
        if not (np.isfinite(times).all() and np.isfinite(samples).all()):
            # NaN marks a missing sample in the window, so a sender's NaN would be ambiguous
            raise WireError(NON_FINITE, 'NaN or inf in sample times or values')
        if times[0] <= 0.0 or (count > 1 and np.any(np.diff(times) < 0.0)):
            raise WireError(BAD_VALUE, 'sample times must be > 0 and non-decreasing')
        return SensorBatch(sequence=sequence, times_s=times, samples=samples, session=session)
