"""How a new chunk takes over from the ones before it: four strategies (`merge` parameter).

The merger keeps a *plan*: a function of time t -> (position, velocity) of the 6 joints and the
gripper, the executor's reference before the safety gate. A new chunk changes the plan:

latest
    The plan becomes the new chunk at the first control step after its arrival. Simplest and
    most reactive; the reference jumps wherever the new plan disagrees with the old one (the
    limiter then moves there within the limits).
temporal_ensemble (ACT, Zhao et al. 2023)
    Every chunk that covers t (stamp <= t <= last action time) votes, with weight
    w_i = exp(-k i), i = 0 for the OLDEST chunk, as ACT does (its m = our `ensemble_k`). Older
    predictions weigh more: a new chunk enters with a small share and gains influence only as
    the older ones expire, which is what makes ACT's executed motion smooth and consistent.
    k > 0 favours the old (smooth, slower to react), k = 0 is a plain mean, k < 0 favours the
    new. The reference still steps a little whenever a chunk starts or stops covering t.
blend
    At the first step after arrival (time t0) the plan blends from what it was commanding,
    the old plan o (position and velocity at t0 are the commanded ones), into the new chunk c
    over `blend_s`:
        r(t) = (1 - w) o(t) + w c(t),   w = 10 s^3 - 15 s^4 + 6 s^5,   s = (t - t0) / blend_s.
    The quintic smoothstep has zero first and second derivative at both ends, so position and
    velocity are continuous at t0 and at t0 + blend_s: no velocity step. Blending from the old
    plan rather than from a straight-line extrapolation of its state keeps overlapping blends
    (blend_s longer than the chunk period) from overshooting. After a hold, or before any
    plan, o is the state where the limiter holds the arm, p0 + v0 (t - t0).
prefix (real-time chunking, Black et al. 2025, arXiv 2506.07339)
    The executor commits to the next d actions of its plan (`committed_prefix`); d comes from
    the measured delay (`committed_steps`). The expert generates its next chunk to continue
    that prefix (flow-head inpainting). When a chunk stamped s arrives whose first m >= 1
    actions lie within `prefix_tolerance` of the plan at s + k dt, the plan keeps the old
    (committed) plan until the last matching action time s + (m - 1) dt and then switches to
    the new chunk through a blend (both agree to within the tolerance there, so the blend
    moves little but makes velocity continuous). A chunk that does not continue the plan
    (generated without the prefix) falls back to `blend` at arrival.

Plans are small objects (ChunkPlan, BlendPlan, StatePlan, EnsemblePlan); `settle(t)` replaces
a blend that has finished by its target, so the chain stays as short as the blends overlapping
at t.

Underrun (no chunk covers t any more) follows the newest chunk's underrun: decelerate at the
acceleration limits to a hold (interpolation.py).
"""
from __future__ import annotations

from dataclasses import dataclass
import math

import numpy as np

from vla_insertion.core.executor.interpolation import ChunkTrajectory

LATEST = 'latest'
TEMPORAL_ENSEMBLE = 'temporal_ensemble'
BLEND = 'blend'
PREFIX = 'prefix'


@dataclass(frozen=True)
class Sample:
    """The plan at one time."""

    position: np.ndarray           # (A,) joints [rad] and gripper [0..1]
    velocity: np.ndarray           # (A,) [rad/s, 1/s]
    sequence: int                  # the chunk that dominates at this time
    index: float                   # fractional action index into that chunk
    stamp_s: float                 # that chunk's stamp [s]
    underrun: bool                 # past the end of every chunk: decelerating or holding


def smoothstep5(s: float) -> tuple[float, float]:
    """Quintic smoothstep on [0, 1] and its derivative d/ds."""
    s = min(max(s, 0.0), 1.0)
    return s ** 3 * (10 - 15 * s + 6 * s * s), 30 * s * s * (1 - s) ** 2


class ChunkPlan:
    def __init__(self, chunk: ChunkTrajectory) -> None:
        self.chunk = chunk

    def sample(self, t: float) -> Sample:
        c = self.chunk
        pos, vel = c.sample(t)
        return Sample(pos, vel, c.sequence, c.index(t), c.stamp_s, t > c.end_s)

    def settle(self, t: float) -> 'ChunkPlan':
        return self


class StatePlan:
    """A restart from a commanded state: p0 + v0 (t - t0) (v0 = 0 after a hold)."""

    def __init__(self, t0: float, p0: np.ndarray, v0: np.ndarray) -> None:
        self.t0, self.p0, self.v0 = t0, np.asarray(p0, float), np.asarray(v0, float)

    def sample(self, t: float) -> Sample:
        return Sample(self.p0 + self.v0 * (t - self.t0), self.v0.copy(), -1, math.nan,
                      math.nan, False)

    def settle(self, t: float) -> 'StatePlan':
        return self


class BlendPlan:
    """`source` until t0, then into `target` over `duration_s` (quintic smoothstep weight)."""

    def __init__(self, t0: float, source, target, duration_s: float) -> None:
        self.t0, self.source, self.target, self.duration_s = t0, source, target, duration_s

    def sample(self, t: float) -> Sample:
        if t < self.t0:
            return self.source.sample(t)
        into = self.target.sample(t)
        if t >= self.t0 + self.duration_s:
            return into
        start = self.source.sample(t)
        w, dw = smoothstep5((t - self.t0) / self.duration_s)
        pos = (1 - w) * start.position + w * into.position
        vel = (1 - w) * start.velocity + w * into.velocity + dw / self.duration_s * (
            into.position - start.position)
        return Sample(pos, vel, into.sequence, into.index, into.stamp_s, into.underrun)

    def settle(self, t: float):
        if t >= self.t0 + self.duration_s:
            return self.target.settle(t)
        self.source, self.target = self.source.settle(t), self.target.settle(t)
        return self


class EnsemblePlan:
    """ACT temporal ensembling over the chunks that cover t (oldest first)."""

    def __init__(self, k: float) -> None:
        self.k = k
        self.chunks: list[ChunkTrajectory] = []

    def add(self, chunk: ChunkTrajectory) -> None:
        self.chunks.append(chunk)

    def sample(self, t: float) -> Sample:
        covering = [c for c in self.chunks if c.covers(t)]
        if not covering:                                  # underrun: the latest-ending chunk
            return ChunkPlan(max(self.chunks, key=lambda c: c.end_s)).sample(t)
        weights = np.exp(-self.k * np.arange(len(covering)))      # (n,), i = 0 oldest
        weights /= weights.sum()
        samples = [c.sample(t) for c in covering]
        pos = sum(w * s[0] for w, s in zip(weights, samples))
        vel = sum(w * s[1] for w, s in zip(weights, samples))
        newest = covering[-1]
        return Sample(pos, vel, newest.sequence, newest.index(t), newest.stamp_s, False)

    def settle(self, t: float) -> 'EnsemblePlan':
        # Drop chunks whose last action has passed, keeping the newest for its underrun.
        newest = max(self.chunks, key=lambda c: c.end_s)
        self.chunks = [c for c in self.chunks if c.end_s >= t or c is newest]
        return self


@dataclass(frozen=True)
class Arrival:
    """What happened when a chunk joined the plan (for counters and tests)."""

    mode: str                      # first, latest, ensemble, blend, restart, prefix, fallback
    matched_actions: int = 0       # prefix: leading actions that continue the plan
    switch_s: float = math.nan     # blend/prefix: when the blend into the new chunk starts [s]


class Merger:
    """Keeps the plan; `add` a chunk at a control step, `sample` the plan at any time."""

    def __init__(self, strategy: str, *, ensemble_k: float = 0.01, blend_s: float = 0.1,
                 prefix_tolerance: float = 0.01) -> None:
        if strategy not in (LATEST, TEMPORAL_ENSEMBLE, BLEND, PREFIX):
            raise ValueError(f'unknown merge strategy {strategy!r}')
        self.strategy = strategy
        self._k, self._blend_s, self._tolerance = ensemble_k, blend_s, prefix_tolerance
        self.plan = None

    @property
    def empty(self) -> bool:
        return self.plan is None

    def sample(self, t: float) -> Sample | None:
        if self.plan is None:
            return None
        # absurd (finite) actions may overflow; the gate's first rule refuses the result
        with np.errstate(over='ignore', invalid='ignore'):
            return self.plan.sample(t)

    def settle(self, t: float) -> None:
        """Forget the parts of the plan that no time >= t can reach."""
        if self.plan is not None:
            self.plan = self.plan.settle(t)

    def matched_actions(self, chunk: ChunkTrajectory) -> int:
        """Leading actions of `chunk` within the tolerance of the current plan at their times."""
        if self.plan is None:
            return 0
        m = 0
        for k in range(chunk.horizon):
            planned = self.plan.sample(chunk.action_time(k)).position
            if np.max(np.abs(chunk.points[k] - planned)) > self._tolerance:
                break
            m += 1
        return m

    def add(self, chunk: ChunkTrajectory, t0: float,
            restart: tuple[np.ndarray, np.ndarray] | None = None) -> Arrival:
        """Join `chunk` at time t0.

        `restart` = (position, velocity): the commanded state to blend from instead of the
        plan (after a hold the arm is not where the plan is; before the first plan there is
        none). None: blend from the current plan.
        """
        if self.strategy == TEMPORAL_ENSEMBLE:
            if not isinstance(self.plan, EnsemblePlan):
                self.plan = EnsemblePlan(self._k)
            self.plan.add(chunk)
            return Arrival('ensemble')
        new = ChunkPlan(chunk)
        if self.strategy == LATEST:
            mode = 'first' if self.plan is None else 'latest'
            self.plan = new
            return Arrival(mode)
        source = self.plan if restart is None else StatePlan(t0, *restart)
        if source is None:
            self.plan = new
            return Arrival('first')
        if self.strategy == PREFIX and restart is None:
            m = self.matched_actions(chunk)
            if m >= 1:
                # keep the plan through the last matching (committed) action, then blend
                t_switch = max(t0, chunk.action_time(m - 1))
                self.plan = BlendPlan(t_switch, source, new, self._blend_s)
                return Arrival('prefix', m, t_switch)
        self.plan = BlendPlan(t0, source, new, self._blend_s)
        mode = 'restart' if restart is not None else (
            'fallback' if self.strategy == PREFIX else 'blend')
        return Arrival(mode, switch_s=t0)


def committed_steps(delays_s: np.ndarray, quantile: float, dt_s: float, horizon: int,
                    ahead_s: float = 0.0) -> int:
    """Count the actions to commit, in 1..horizon - 1.

    A chunk from an observation at s arrives at s + delay, when the executor already samples
    its plan `ahead_s` later (actuator lead + filter delay). The plan must stay unchanged up
    to there, and the switch happens at the last committed action, s + (d - 1) dt, so
    d = ceil((delay quantile + ahead_s) / dt) + 1. No delay measured yet counts as 0.
    """
    if horizon < 2:
        return 1
    delay = float(np.quantile(delays_s, quantile)) if delays_s.size else 0.0
    d = math.ceil((max(delay, 0.0) + ahead_s) / dt_s - 1e-9) + 1
    return int(min(max(d, 1), horizon - 1))


def align_prefix(stamp_s: float, actions: np.ndarray, dt_s: float,
                 now_s: float) -> np.ndarray | None:
    """Resample a committed prefix published at stamp_s to actions applying from now_s.

    The expert ticks at its own now_s, a little after the executor published; it needs the
    committed actions at now_s + k dt. They are interpolated linearly between the published
    ones, and extrapolated past the last by less than one dt (a point beyond is dropped: the
    executor compares every action against its plan anyway and switches after the last that
    matches). Returns (d', A) float32 with d' <= d, or None when nothing is left.
    """
    actions = np.asarray(actions, dtype=np.float64)                    # (d, A)
    d = actions.shape[0]
    if d == 0 or not np.isfinite(actions).all():
        return None
    if d == 1:
        return actions.astype(np.float32) if abs(now_s - stamp_s) < dt_s else None
    u = (now_s - stamp_s) / dt_s + np.arange(d)                        # published-grid index
    u = u[u < d]                                                       # < 1 dt past the last
    if u.size == 0:
        return None
    k = np.clip(np.floor(u).astype(int), 0, d - 2)
    frac = (u - k)[:, None]
    return ((1 - frac) * actions[k] + frac * actions[k + 1]).astype(np.float32)
