"""Rates, latencies and drop counters that every node reports, free of ROS."""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
import threading

import numpy as np


class RateMeter:
    """Event rate over a sliding time window."""

    def __init__(self, window_s: float = 5.0) -> None:
        self._window_s = window_s
        self._times: deque[float] = deque()
        self._lock = threading.Lock()
        self.count = 0

    def tick(self, t_s: float) -> None:
        with self._lock:
            self.count += 1
            self._times.append(t_s)
            while self._times and self._times[0] < t_s - self._window_s:
                self._times.popleft()

    def rate_hz(self, now_s: float) -> float:
        with self._lock:
            while self._times and self._times[0] < now_s - self._window_s:
                self._times.popleft()
            if len(self._times) < 2:
                return 0.0
            span = max(now_s - self._times[0], self._times[-1] - self._times[0])
            return (len(self._times) - 1) / span if span > 0 else 0.0


class LatencyStats:
    """The last `maxlen` samples of a duration, summarised as mean and percentiles."""

    def __init__(self, maxlen: int = 1000) -> None:
        self._values: deque[float] = deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def add(self, value: float) -> None:
        with self._lock:
            self._values.append(float(value))

    def __len__(self) -> int:
        return len(self._values)

    def summary(self) -> dict[str, float]:
        with self._lock:
            values = np.array(self._values, dtype=np.float64)
        if values.size == 0:
            return {'mean': float('nan'), 'p50': float('nan'), 'p99': float('nan'),
                    'max': float('nan'), 'n': 0}
        return {'mean': float(values.mean()), 'p50': float(np.percentile(values, 50)),
                'p99': float(np.percentile(values, 99)), 'max': float(values.max()),
                'n': int(values.size)}


class DropCounter:
    """Counts dropped inputs by cause; thread-safe.

    The `causes` given are reported from the start with 0, so a monitor sees every key before
    the first drop; other causes are added when first counted.
    """

    def __init__(self, causes: tuple[str, ...] = ()) -> None:
        self._counts: Counter[str] = Counter(dict.fromkeys(causes, 0))
        self._lock = threading.Lock()

    def count(self, cause: str, n: int = 1) -> int:
        with self._lock:
            self._counts[cause] += n
            return self._counts[cause]

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


@dataclass
class HealthReport:
    """What a node says about itself in /diagnostics: level, reason and numbers."""

    level: str = 'OK'              # 'OK', 'WARN', 'ERROR' or 'STALE'
    message: str = 'ok'
    values: dict = field(default_factory=dict)

    _ORDER = {'OK': 0, 'WARN': 1, 'ERROR': 2, 'STALE': 3}

    def escalate(self, level: str, reason: str) -> None:
        """Raise the level to at least `level`, collecting every reason in the message."""
        if self._ORDER[level] > self._ORDER[self.level]:
            self.level = level
        self.message = reason if self.message == 'ok' else f'{self.message}; {reason}'
