"""Running summaries the executor reports: chunk delays, boundary velocity jumps, output jerk."""
from __future__ import annotations

from collections import deque
import math

import numpy as np

from vla_insertion.core.health import HealthReport


class Window:
    """The newest `maxlen` values of one quantity, with percentiles."""

    def __init__(self, maxlen: int) -> None:
        self._values: deque[float] = deque(maxlen=maxlen)

    def add(self, value: float) -> None:
        self._values.append(float(value))

    def __len__(self) -> int:
        return len(self._values)

    def array(self) -> np.ndarray:
        return np.array(self._values, dtype=np.float64)

    def quantile(self, q: float) -> float:
        return float(np.quantile(self.array(), q)) if self._values else math.nan

    def summary(self, prefix: str) -> dict[str, float]:
        values = self.array()
        if values.size == 0:
            return {f'{prefix}.{k}': math.nan for k in ('last', 'p50', 'p90', 'p99', 'max')} | {
                f'{prefix}.n': 0}
        p50, p90, p99 = np.quantile(values, [0.5, 0.9, 0.99])
        return {f'{prefix}.last': float(values[-1]), f'{prefix}.p50': float(p50),
                f'{prefix}.p90': float(p90), f'{prefix}.p99': float(p99),
                f'{prefix}.max': float(values.max()), f'{prefix}.n': int(values.size)}


class JerkMeter:
    """RMS and peak of the third finite difference of a position stream [unit/s^3]."""

    def __init__(self, period_s: float) -> None:
        self._period_s = period_s
        self._history: deque[np.ndarray] = deque(maxlen=4)
        self._sum_sq = 0.0
        self._count = 0
        self.peak = 0.0

    def restart(self) -> None:
        """Forget the history: the stream restarts (re-armed), the gap is not motion."""
        self._history.clear()

    def add(self, position: np.ndarray) -> None:
        self._history.append(np.asarray(position, dtype=np.float64).copy())
        if len(self._history) < 4:
            return
        p0, p1, p2, p3 = self._history
        jerk = (p3 - 3 * p2 + 3 * p1 - p0) / self._period_s ** 3
        self._sum_sq += float(np.sum(jerk * jerk))
        self._count += jerk.size
        self.peak = max(self.peak, float(np.max(np.abs(jerk))))

    @property
    def rms(self) -> float:
        return math.sqrt(self._sum_sq / self._count) if self._count else math.nan


def executor_health(stats: dict, *, rate_hz: float, sent: int, drops: dict[str, int]
                    ) -> HealthReport:
    """Return the chunk_executor's /diagnostics status.

    From ChunkExecutor.stats() and the node's own numbers (commands sent, drops).
    """
    stats = dict(stats)
    report = HealthReport()
    level, message = stats.pop('level'), stats.pop('message')
    if level != 'OK':
        report.escalate(level, message)
    else:
        report.message = message
    report.values = {'rate_hz': rate_hz, 'commands_sent': sent,
                     **{f'drops.{k}': v for k, v in drops.items()}, **stats}
    return report


def executor_status_line(stats: dict, *, commands: int, sent: int) -> str:
    """Return one line for the executor's periodic log."""
    acted = ', '.join(f'{k[5:]}={v}' for k, v in stats.items() if k.startswith('gate.') and v)
    return (f'Commands: {commands} ({sent} sent) | {stats["message"]} | chunks '
            f'{stats["chunks.accepted"]} | starved {stats["starved"]} | delay p50 '
            f'{stats.get("delay_s.p50", math.nan) * 1e3:.0f} ms'
            + (f' | gate {acted}' if acted else ''))
