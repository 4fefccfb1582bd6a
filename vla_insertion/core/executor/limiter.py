"""The motion limiter: the last stage before a command is sent, and the one that guarantees it.

Every axis (6 joints and the gripper) goes through two stages at the control period T:

1. an acceleration-limited tracker (per axis, exact in discrete time). Its state is x (the
   position) and v = (x_n - x_{n-1}) / T. Each step it chooses the next velocity v' inside

       [v - A T, v + A T]                 acceleration |a| <= A
       [-V s, V s]                        velocity (s <= 1: force scaling), never tightened
                                          faster than braking allows
       [-vstop(x - lo), vstop(hi - x)]    position: still able to stop inside [lo, hi]

   where vstop(b) is the largest v' from which braking at A T per step, this step included,
   covers at most b: T sum_{k>=0} max(v' - k A T, 0) <= b (closed form below). That interval is
   never empty: braking (v' = v - sign(v) min(|v|, A T)) is always in it if the previous state
   was produced by the same rule (by induction from rest inside the limits). Inside it, v' is
   the velocity that tracks the reference: the reference's velocity plus the error correction
   that could still stop on the reference (the same vstop, planned with A / 2 so that the other
   half is left for the reference's own acceleration: a step is approached without overshoot),
   or 0 to brake for a hold.

2. a moving average over the last m positions of stage 1 (an FIR jerk limiter, Biagiotti and
   Melchiorri 2012). An average of positions in [lo, hi] is in [lo, hi], of velocities within
   +-V is within +-V, of accelerations within +-A within +-A, and the jerk of the average is
   (a_n - a_{n-m}) / (m T), at most 2 A / (m T). With m = ceil(2 A / (J T)) the output obeys
   the jerk limit J too. One m for all axes keeps them synchronised (the path keeps its shape);
   the averaging delays the output by (m - 1) T / 2, which the executor cancels by sampling the
   reference that much later (it knows the chunk's future).

So the positions actually sent satisfy, with finite differences at T: lo <= p <= hi, |dp/T|
<= V, |d2p/T2| <= A, |d3p/T3| <= J, for any reference, including NaN-free garbage.
"""
from __future__ import annotations

from dataclasses import dataclass
import math

import numpy as np

MAX_TAPS = 100                  # a longer jerk filter than 1 s at 100 Hz is a config mistake


def stopping_speed(budget: np.ndarray, step: np.ndarray, period_s: float) -> np.ndarray:
    """Largest v >= 0 with period_s * sum_{k>=0} max(v - k step, 0) <= budget (0 if <= 0).

    With B = budget / T and n positive terms the sum is n v - step n (n - 1) / 2 for v in
    [(n - 1) step, n step); n is the largest integer with step n (n - 1) / 2 <= B.
    """
    b = np.maximum(np.asarray(budget, dtype=np.float64), 0.0) / period_s
    n = np.floor((1.0 + np.sqrt(1.0 + 8.0 * b / step)) / 2.0)
    n = np.where(step * n * (n - 1) / 2.0 > b, n - 1, n)          # float rounding
    n = np.maximum(n, 1.0)
    v = (b + step * n * (n - 1) / 2.0) / n
    return np.minimum(v, n * step)


def jerk_taps(max_acceleration: np.ndarray, max_jerk: np.ndarray, period_s: float) -> int:
    """Moving-average length m that bounds the output jerk by 2 A / (m T) <= J on every axis."""
    ratio = 2.0 * np.asarray(max_acceleration) / (np.asarray(max_jerk) * period_s)  # inf J -> 0
    return max(1, int(math.ceil(float(np.max(ratio)) - 1e-9)))


@dataclass(frozen=True)
class LimiterStep:
    """One output of the limiter and which bounds changed the tracking velocity."""

    position: np.ndarray           # (n,) sent position
    velocity: np.ndarray           # (n,) (position - previous) / T
    velocity_limited: np.ndarray   # (n,) bool: the velocity bound (or its scaling) acted
    acceleration_limited: np.ndarray  # (n,) bool: acceleration bound or its braking plan acted
    position_limited: np.ndarray   # (n,) bool: braking to stay inside [lo, hi] acted
    jerk_limited: np.ndarray       # (n,) bool: stage 1 changed acceleration faster than J


class MotionLimiter:
    """Acceleration-limited tracking then an FIR jerk limiter; see the module docstring."""

    def __init__(self, lower: np.ndarray, upper: np.ndarray, max_velocity: np.ndarray,
                 max_acceleration: np.ndarray, max_jerk: np.ndarray, period_s: float) -> None:
        self.lower = np.asarray(lower, dtype=np.float64)
        self.upper = np.asarray(upper, dtype=np.float64)
        self.v_max = np.asarray(max_velocity, dtype=np.float64)
        self.a_max = np.asarray(max_acceleration, dtype=np.float64)
        self.j_max = np.asarray(max_jerk, dtype=np.float64)
        self.period_s = float(period_s)
        if not (np.all(self.lower < self.upper) and np.all(self.v_max > 0)
                and np.all(self.a_max > 0) and np.all(self.j_max > 0)):
            raise ValueError('limiter needs lower < upper and positive velocity, acceleration '
                             'and jerk limits')
        self.taps = jerk_taps(self.a_max, self.j_max, self.period_s)
        if self.taps > MAX_TAPS:
            raise ValueError(f'jerk limits need a {self.taps}-period filter (> {MAX_TAPS}): '
                             'raise max_jerk or lower max_acceleration')
        self._step = self.a_max * self.period_s                     # (n,) A T
        self._x = np.zeros_like(self.lower)                         # stage 1 position
        self._v = np.zeros_like(self.lower)                         # stage 1 velocity
        self._a = np.zeros_like(self.lower)                         # stage 1 acceleration
        self._history = np.zeros((self.taps, self.lower.size))      # (m, n) stage 1 positions
        self._head = 0
        self._output = np.zeros_like(self.lower)
        self.initialized = False

    @property
    def delay_s(self) -> float:
        """How far the output lags stage 1 for a constant velocity: (m - 1) T / 2."""
        return (self.taps - 1) * self.period_s / 2.0

    @property
    def position(self) -> np.ndarray:
        """The last output position."""
        return self._output.copy()

    @property
    def tracker_state(self) -> tuple[np.ndarray, np.ndarray]:
        """Stage 1 (position, velocity): the commanded state at the reference's time."""
        return self._x.copy(), self._v.copy()

    @property
    def at_rest(self) -> bool:
        return bool(np.all(self._v == 0.0) and np.all(self._history == self._x))

    def reset(self, position: np.ndarray) -> None:
        """Start at rest at `position`, clipped into [lower, upper]."""
        x = np.clip(np.asarray(position, dtype=np.float64), self.lower, self.upper)
        self._x, self._v, self._a = x.copy(), np.zeros_like(x), np.zeros_like(x)
        self._history[:] = x
        self._output = x.copy()
        self.initialized = True

    def copy(self) -> 'MotionLimiter':
        other = object.__new__(MotionLimiter)
        other.__dict__.update(self.__dict__)
        for name in ('_x', '_v', '_a', '_history', '_output'):
            setattr(other, name, getattr(self, name).copy())
        return other

    def step(self, target: np.ndarray | None, target_velocity: np.ndarray | None = None,
             speed_scale: float = 1.0) -> LimiterStep:
        """Advance one period towards `target` (None: brake to a stop where possible)."""
        x, v, h, T = self._x, self._v, self._step, self.period_s
        # Hard interval for the next stage-1 velocity; braking is always inside it.
        v_cap = np.maximum(self.v_max * speed_scale, np.abs(v) - h)
        v_cap = np.minimum(v_cap, self.v_max)
        acc_lo, acc_hi = v - h, v + h
        pos_lo = -stopping_speed(x - self.lower, h, T)
        pos_hi = stopping_speed(self.upper - x, h, T)
        lo = np.maximum.reduce([acc_lo, -v_cap, pos_lo])
        hi = np.minimum.reduce([acc_hi, v_cap, pos_hi])
        if target is None:
            desired = np.zeros_like(v)
        else:
            ref_v = np.zeros_like(v) if target_velocity is None else target_velocity
            error = np.asarray(target, dtype=np.float64) - x - ref_v * T
            # catch up planning with half the acceleration: the other half is left for the
            # reference's own acceleration, so chasing an accelerating plan does not overshoot
            desired = ref_v + np.sign(error) * stopping_speed(np.abs(error), h / 2, T)
        brake = v - np.sign(v) * np.minimum(np.abs(v), h)
        empty = lo > hi                      # only from a state outside the limits
        v_new = np.where(empty, brake, np.clip(desired, lo, hi))
        tol = 1e-12 * (1.0 + np.abs(desired))
        changed = np.abs(v_new - desired) > tol
        at_hi, at_lo = v_new >= hi - tol, v_new <= lo + tol
        velocity_limited = changed & ((at_hi & (hi == v_cap)) | (at_lo & (lo == -v_cap)))
        position_limited = changed & ((at_hi & (hi == pos_hi)) | (at_lo & (lo == pos_lo)))
        acceleration_limited = changed & ~velocity_limited & ~position_limited
        a_new = (v_new - v) / T
        jerk_limited = np.abs(a_new - self._a) > self.j_max * T * (1 + 1e-9)
        self._x = np.clip(x + v_new * T, self.lower, self.upper)
        self._v, self._a = v_new, a_new
        self._history[self._head] = self._x
        self._head = (self._head + 1) % self.taps
        previous = self._output
        self._output = np.clip(self._history.mean(axis=0), self.lower, self.upper)
        return LimiterStep(self._output.copy(), (self._output - previous) / T, velocity_limited,
                           acceleration_limited, position_limited, jerk_limited)
