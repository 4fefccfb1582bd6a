"""One action chunk as a function of time: position and velocity continuous.

Action k of a chunk stamped s applies at s + k dt. Between the action points the chunk is a
cubic Hermite curve; its slopes at the points are those of the monotone piecewise-cubic
interpolant (PCHIP, Fritsch and Carlson 1980, as scipy's PchipInterpolator on a uniform grid):

    d_k = (a[k+1] - a[k]) / dt                         secant of segment k
    m_k = 2 / (1/d_{k-1} + 1/d_k)  if d_{k-1} d_k > 0  harmonic mean inside
    m_k = 0                        otherwise           a turning point stays a turning point
    m_0 = d_0, m_{H-1} = d_{H-2}                       one-sided at the ends

Why PCHIP and not Catmull-Rom or a natural spline: it is local (one action changes two
segments), C1, and never overshoots: between two actions every joint stays between them, so
the interpolation itself never commands a joint past what the policy asked for (a spline
through a step rings). Acceleration jumps at the action points; the limiter's jerk stage
(limiter.py) smooths those.

Before the first action time the curve continues along the first slope (only chunks stamped up
to max_clock_skew_s in the future get there). After the last action (underrun) every joint
decelerates from the last slope at its acceleration limit to a stop and holds: position and
velocity stay continuous, so running out of actions never makes a jump.
"""
from __future__ import annotations

import numpy as np


def pchip_slopes(points: np.ndarray, dt_s: float) -> np.ndarray:
    """(H, A) action points on a uniform grid -> (H, A) slopes [unit/s]."""
    h = points.shape[0]
    slopes = np.zeros_like(points)
    if h < 2:
        return slopes
    secant = np.diff(points, axis=0) / dt_s                  # (H - 1, A)
    slopes[0], slopes[-1] = secant[0], secant[-1]
    if h > 2:
        left, right = secant[:-1], secant[1:]                # (H - 2, A)
        same_sign = left * right > 0
        with np.errstate(divide='ignore', invalid='ignore'):
            harmonic = 2.0 * left * right / (left + right)
        slopes[1:-1] = np.where(same_sign, harmonic, 0.0)
    return slopes


def hermite(p0: np.ndarray, p1: np.ndarray, m0: np.ndarray, m1: np.ndarray, s: float,
            dt_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Cubic Hermite segment at s in [0, 1]: (position, velocity) with slopes in unit/s."""
    s2, s3 = s * s, s * s * s
    pos = ((2 * s3 - 3 * s2 + 1) * p0 + (s3 - 2 * s2 + s) * dt_s * m0
           + (-2 * s3 + 3 * s2) * p1 + (s3 - s2) * dt_s * m1)
    vel = ((6 * s2 - 6 * s) * (p0 - p1) / dt_s + (3 * s2 - 4 * s + 1) * m0
           + (3 * s2 - 2 * s) * m1)
    return pos, vel


class ChunkTrajectory:
    """A chunk's actions as (position, velocity) at any time, underrun included."""

    def __init__(self, stamp_s: float, actions: np.ndarray, dt_s: float,
                 max_acceleration: np.ndarray, sequence: int = 0) -> None:
        self.stamp_s = float(stamp_s)
        self.dt_s = float(dt_s)
        self.sequence = int(sequence)
        self.points = np.asarray(actions, dtype=np.float64)      # (H, A)
        self.end_s = self.stamp_s + (self.points.shape[0] - 1) * self.dt_s
        self._decel = np.asarray(max_acceleration, dtype=np.float64)  # (A,) > 0
        # absurd (finite) actions may overflow here; the executor's gate refuses the result
        with np.errstate(over='ignore', invalid='ignore'):
            self.slopes = pchip_slopes(self.points, self.dt_s)   # (H, A)
            # Underrun: decelerate from the last slope at the acceleration limit, then hold.
            v_end = self.slopes[-1]
            self._stop_after_s = np.abs(v_end) / self._decel         # (A,)
            self.rest_position = self.points[-1] + v_end * self._stop_after_s / 2.0

    @property
    def horizon(self) -> int:
        return self.points.shape[0]

    def covers(self, t: float) -> bool:
        """Whether t lies within the chunk's actions (not before, not in underrun)."""
        return self.stamp_s <= t <= self.end_s

    def index(self, t: float) -> float:
        """Fractional action index at t (k at stamp + k dt)."""
        return (t - self.stamp_s) / self.dt_s

    def action_time(self, k: int) -> float:
        return self.stamp_s + k * self.dt_s

    def sample(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Return the (A,) position and (A,) velocity at time t [s]."""
        if t <= self.stamp_s or self.horizon == 1:
            if t >= self.stamp_s:                                # one action: hold it
                return self.points[0].copy(), np.zeros_like(self.points[0])
            return self.points[0] + self.slopes[0] * (t - self.stamp_s), self.slopes[0].copy()
        if t >= self.end_s:
            return self._underrun(t - self.end_s)
        u = (t - self.stamp_s) / self.dt_s
        k = min(int(u), self.horizon - 2)
        return hermite(self.points[k], self.points[k + 1], self.slopes[k], self.slopes[k + 1],
                       u - k, self.dt_s)

    def _underrun(self, after_s: float) -> tuple[np.ndarray, np.ndarray]:
        v_end = self.slopes[-1]
        tau = np.minimum(after_s, self._stop_after_s)               # (A,)
        direction = np.sign(v_end)
        pos = self.points[-1] + v_end * tau - 0.5 * direction * self._decel * tau * tau
        vel = v_end - direction * self._decel * tau
        return pos, vel
