"""Rates, latencies and drop counters that every node reports, and their readers; free of ROS.

The reporting side (RateMeter, LatencyStats, DropCounter, HealthReport) fills a node's
/diagnostics values; the reading side (number, counters, drop_counts, ..., pipeline_numbers)
is the one place that knows the key names when a monitor, the demo's summary or an evaluation
reads them back.
"""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
import math
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


# Reading the numbers back: what a monitor, the demo's summary and a closed-loop evaluation take
# out of a node's /diagnostics values (strings in a DiagnosticStatus, numbers from
# ChunkExecutor.stats()). The key names are the reporting side's: `drops.<cause>` (every node's
# DropCounter), `skipped.<cause>` (the VLM's skipped view sets), `frames.<view>` (frames per
# view), `gate.<rule>` (the executor's interventions), `stops.<trigger>` (the executor's
# stops), and the executor's and the expert's named numbers below.

def number(values: dict, key: str) -> float | None:
    """Return the finite number under `key`; None if missing, not a number or not finite."""
    try:
        value = float(values[key])
    except (KeyError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def counters(values: dict, prefix: str) -> dict[str, int]:
    """Return the positive counts under `prefix` (`gate.`, `drops.`) by what follows it."""
    out = {}
    for key in values:
        if key.startswith(prefix) and len(key) > len(prefix):
            count = number(values, key)
            if count is not None and count > 0:
                out[key[len(prefix):]] = int(count)
    return out


def drop_counts(values: dict) -> dict[str, int]:
    """Return the drop counters of one node, zeros included (a monitor shows every cause).

    `drops.<cause>` becomes `<cause>`, the VLM's `skipped.<cause>` becomes `skipped_<cause>`;
    a value that is not a number is left out.
    """
    out = {}
    for key in values:
        prefix, _, cause = key.partition('.')
        if prefix in ('drops', 'skipped') and cause:
            count = number(values, key)
            if count is not None:
                out[cause if prefix == 'drops' else f'skipped_{cause}'] = int(count)
    return out


def frame_counts(values: dict) -> dict[str, int]:
    """Return the frames received per view (keys `frames.<view>`)."""
    return {key[len('frames.'):]: int(count) for key in values
            if key.startswith('frames.') and (count := number(values, key)) is not None}


def untrained_flag(values: dict) -> bool | None:
    """Return a node's `untrained` value (the VLM's and the expert's), None if it has none."""
    flag = values.get('untrained')
    return None if flag is None else str(flag).strip().lower() == 'true'


def executor_state(values: dict) -> dict:
    """Return the chunk executor's commands, state, fault, interventions, stops, starvation.

    Empty when the executor reported nothing (it did not run).
    """
    if not values:
        return {}

    def value(key: str) -> float:
        found = number(values, key)
        return math.nan if found is None else found

    return {'commands': int(number(values, 'steps') or 0),
            'sent': int(number(values, 'commands_sent') or 0),
            'armed': str(values.get('armed')) == 'True', 'state': str(values.get('state', '')),
            'fault': str(values.get('fault', '')), 'gate': counters(values, 'gate.'),
            'stops': counters(values, 'stops.'), 'stop': str(values.get('stop', '')),
            'starved': int(number(values, 'starved') or 0),
            'chunk_delay_s_p50': value('delay_s.p50'), 'jerk_rms': value('jerk.rms')}


def pipeline_numbers(executor: dict, expert: dict) -> dict:
    """Return a run's smoothness, starvation, delays, refusals and interventions.

    From the newest values of chunk_executor and action_expert, in the keys of the episode
    summary (core/evaluation/summary.py), so a run of the real nodes and an in-process run
    report the same columns. None where the node did not report the number.
    """
    return {'gate': counters(executor, 'gate.'),
            'starved': int(number(executor, 'starved') or 0),
            'jerk_rms_mean': number(executor, 'jerk.rms'),
            'velocity_jump_p50_mean': number(executor, 'boundary.velocity_jump.p50'),
            'velocity_jump_max': number(executor, 'boundary.velocity_jump.max'),
            'chunk_delay_s_mean': number(executor, 'delay_s.p50'),
            'feature_age_s_mean': number(expert, 'feature_age_s_mean'),
            'refused': counters(expert, 'drops.')}
