"""Evaluation metrics of action chunks against a recorded robot trajectory, in plain numpy.

Conventions (docs/evaluation.md):
- A chunk stamped `s` with `dt` applies its action k at `s + k * dt` [s]. The first
  `num_joints` action dimensions are absolute joint targets [rad] compared with the recorded
  joint positions linearly interpolated at those times; further dimensions (the gripper) are
  not compared. Errors are reported in rad and in deg.
- "All steps" errors use every action of every chunk whose time lies within the trajectory.
  "Executed" errors follow what a robot would run: at each control tick the newest chunk
  available (stamp <= t) gives action floor((t - s) / dt); past the horizon its last action is
  held (a stale tick).
- Discontinuity: when chunk i+1 starts, the jump between its first action and the action of
  chunk i for that same time (overlapping) or chunk i's last action (adjacent, chunk i ran out).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_EPS = 1e-9


@dataclass(frozen=True)
class Trajectory:
    """Recorded joint positions over time."""

    times_s: np.ndarray            # (N,) increasing [s]
    positions: np.ndarray          # (N, J) joint positions [rad]
    joint_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.times_s.ndim != 1 or self.positions.ndim != 2 or \
                self.positions.shape[0] != self.times_s.shape[0]:
            raise ValueError(f'times {self.times_s.shape} and positions '
                             f'{self.positions.shape} do not match')
        if self.times_s.size > 1 and np.any(np.diff(self.times_s) <= 0):
            raise ValueError('trajectory times must be strictly increasing')

    @property
    def num_joints(self) -> int:
        return self.positions.shape[1]

    def at(self, t_s: np.ndarray) -> np.ndarray:
        """Interpolate linearly at times `t_s` (any shape); NaN outside the recorded span."""
        t = np.asarray(t_s, dtype=np.float64)
        flat = t.reshape(-1)
        out = np.empty((flat.size, self.num_joints))
        for j in range(self.num_joints):
            out[:, j] = np.interp(flat, self.times_s, self.positions[:, j])
        if self.times_s.size:
            outside = (flat < self.times_s[0] - _EPS) | (flat > self.times_s[-1] + _EPS)
            out[outside] = np.nan
        else:
            out[:] = np.nan
        return out.reshape(*t.shape, self.num_joints)


@dataclass(frozen=True)
class ChunkSeries:
    """Action chunks in stamp order, with their timing fields (NaN where unknown)."""

    stamps_s: np.ndarray           # (M,) time at which action 0 applies [s]
    actions: np.ndarray            # (M, H, D)
    dt_s: float                    # time between actions of a chunk [s]
    inference_ms: np.ndarray = field(default=None)   # (M,) expert forward pass [ms]
    latency_ms: np.ndarray = field(default=None)     # (M,) observation -> chunk available [ms]
    feature_age_s: np.ndarray = field(default=None)  # (M,) VL feature age at use [s]
    reuse_index: np.ndarray = field(default=None)    # (M,) 1 = first chunk on these features
    feature_sequence: np.ndarray = field(default=None)  # (M,)

    def __post_init__(self) -> None:
        m = self.stamps_s.shape[0]
        if self.actions.ndim != 3 or self.actions.shape[0] != m:
            raise ValueError(f'actions {self.actions.shape} do not match {m} stamps')
        if m > 1 and np.any(np.diff(self.stamps_s) < 0):
            raise ValueError('chunk stamps must be in increasing order')
        if not self.dt_s > 0:
            raise ValueError(f'dt_s must be > 0, got {self.dt_s}')
        for name in ('inference_ms', 'latency_ms', 'feature_age_s', 'reuse_index',
                     'feature_sequence'):
            value = getattr(self, name)
            arr = np.full(m, np.nan) if value is None else np.asarray(value, dtype=np.float64)
            if arr.shape != (m,):
                raise ValueError(f'{name} has shape {arr.shape}, expected ({m},)')
            object.__setattr__(self, name, arr)

    @property
    def horizon(self) -> int:
        return self.actions.shape[1]

    def __len__(self) -> int:
        return self.stamps_s.shape[0]

    @classmethod
    def from_chunks(cls, chunks, latency_ms=None) -> ChunkSeries:
        """Build from a sequence of core.data.ActionChunkData, sorted by stamp."""
        chunks = sorted(chunks, key=lambda c: c.stamp_s)
        if not chunks:
            raise ValueError('no chunks')
        return cls(stamps_s=np.array([c.stamp_s for c in chunks]),
                   actions=np.stack([np.asarray(c.actions, dtype=np.float64) for c in chunks]),
                   dt_s=float(chunks[0].dt_s),
                   inference_ms=np.array([c.inference_ms for c in chunks]),
                   latency_ms=latency_ms,
                   feature_age_s=np.array([c.feature_age_s for c in chunks]),
                   reuse_index=np.array([c.reuse_index for c in chunks]),
                   feature_sequence=np.array([c.feature_sequence for c in chunks]))


# --- errors -------------------------------------------------------------------------------

def action_times(chunks: ChunkSeries) -> np.ndarray:
    """Return the time at which each action applies, (M, H) [s]."""
    return chunks.stamps_s[:, None] + np.arange(chunks.horizon)[None, :] * chunks.dt_s


def chunk_errors(traj: Trajectory, chunks: ChunkSeries) -> np.ndarray:
    """Return predicted - actual for every action, (M, H, J) [rad]; NaN outside the trajectory."""
    joints = traj.num_joints
    if chunks.actions.shape[2] < joints:
        raise ValueError(f'actions have {chunks.actions.shape[2]} dims, fewer than {joints} '
                         'joints')
    return chunks.actions[:, :, :joints] - traj.at(action_times(chunks))


def mae_rmse(errors: np.ndarray, axis=None) -> tuple[np.ndarray, np.ndarray]:
    """Return (MAE, RMSE) of an error array ignoring NaN, reduced over `axis`."""
    valid = ~np.isnan(errors)
    n = valid.sum(axis=axis)
    e = np.where(valid, errors, 0.0)
    with np.errstate(invalid='ignore', divide='ignore'):
        mae = np.abs(e).sum(axis=axis) / n
        rmse = np.sqrt((e * e).sum(axis=axis) / n)
    return mae, rmse


def per_joint(errors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return per-joint (MAE, RMSE), each (J,), over every leading axis [rad]."""
    flat = errors.reshape(-1, errors.shape[-1])
    return mae_rmse(flat, axis=0)


def by_horizon_step(errors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (MAE, RMSE) per horizon step k over chunks and joints, each (H,) [rad]."""
    moved = np.moveaxis(errors, 1, 0).reshape(errors.shape[1], -1)
    return mae_rmse(moved, axis=1)


@dataclass(frozen=True)
class Executed:
    """The action stream a robot would execute at each control tick."""

    times_s: np.ndarray            # (T,) control ticks [s]
    actions: np.ndarray            # (T, D); NaN before the first chunk
    chunk_index: np.ndarray        # (T,) chunk in effect, -1 before the first
    step: np.ndarray               # (T,) action index used within that chunk
    stale: np.ndarray              # (T,) bool: the chunk had run out, its last action held


def executed(chunks: ChunkSeries, times_s: np.ndarray) -> Executed:
    """Select at each time the action of the newest chunk available (stamp <= t)."""
    t = np.asarray(times_s, dtype=np.float64)
    idx = np.searchsorted(chunks.stamps_s, t + _EPS, side='right') - 1
    have = idx >= 0
    safe = np.where(have, idx, 0)
    raw_step = np.floor((t - chunks.stamps_s[safe]) / chunks.dt_s + _EPS).astype(int)
    step = np.clip(raw_step, 0, chunks.horizon - 1)
    actions = chunks.actions[safe, step].astype(np.float64)
    actions[~have] = np.nan
    return Executed(times_s=t, actions=actions, chunk_index=np.where(have, idx, -1),
                    step=np.where(have, step, -1), stale=have & (raw_step >= chunks.horizon))


def control_ticks(chunks: ChunkSeries, traj: Trajectory, period_s: float | None = None
                  ) -> np.ndarray:
    """Return control tick times from the first chunk to the end of the trajectory [s]."""
    period = period_s or chunks.dt_s
    if not len(chunks) or not traj.times_s.size:
        return np.zeros(0)
    start, end = chunks.stamps_s[0], traj.times_s[-1]
    n = int(np.floor((end - start) / period + _EPS)) + 1
    return start + np.arange(max(n, 0)) * period


@dataclass(frozen=True)
class Discontinuity:
    """Jumps at chunk boundaries, per joint [rad]."""

    jumps: np.ndarray              # (M-1, J) |first action of i+1 - action of i at that time|
    overlapping: np.ndarray        # (M-1,) bool: chunk i still covered the new start


def discontinuity(chunks: ChunkSeries, num_joints: int) -> Discontinuity:
    """Return the jump of each joint where a new chunk takes over from the previous one."""
    m = len(chunks)
    if m < 2:
        return Discontinuity(np.zeros((0, num_joints)), np.zeros(0, dtype=bool))
    gap = np.diff(chunks.stamps_s)
    raw_k = np.floor(gap / chunks.dt_s + 0.5).astype(int)   # step of chunk i at the new start
    overlapping = raw_k < chunks.horizon
    k = np.clip(raw_k, 0, chunks.horizon - 1)
    previous = chunks.actions[np.arange(m - 1), k, :num_joints]
    jumps = np.abs(chunks.actions[1:, 0, :num_joints] - previous)
    return Discontinuity(jumps, overlapping)


# --- timing -------------------------------------------------------------------------------

def summary(values, scale: float = 1.0) -> dict:
    """Return mean, p50, p99, max and n of the finite values (times `scale`)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)] * scale
    if v.size == 0:
        return {'mean': None, 'p50': None, 'p99': None, 'max': None, 'n': 0}
    return {'mean': float(v.mean()), 'p50': float(np.percentile(v, 50)),
            'p99': float(np.percentile(v, 99)), 'max': float(v.max()), 'n': int(v.size)}


def histogram(values, bins: int = 30) -> dict:
    """Return a JSON-friendly histogram {edges, counts} of the finite values."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {'edges': [], 'counts': []}
    counts, edges = np.histogram(v, bins=bins)
    return {'edges': edges.tolist(), 'counts': counts.tolist()}


def action_rate(stamps_s: np.ndarray, nominal_period_s: float | None = None) -> dict:
    """Return the achieved chunk rate [Hz] and period statistics [ms]."""
    s = np.asarray(stamps_s, dtype=np.float64)
    out = {'chunks': int(s.size), 'span_s': float(s[-1] - s[0]) if s.size else 0.0,
           'rate_hz': None, 'period_ms': summary([])}
    if s.size >= 2 and s[-1] > s[0]:
        periods = np.diff(s)
        out['rate_hz'] = float((s.size - 1) / (s[-1] - s[0]))
        out['period_ms'] = summary(periods, 1e3)
        if nominal_period_s:
            out['period_error_ms'] = summary(np.abs(periods - nominal_period_s), 1e3)
    return out


def feature_stats(chunks: ChunkSeries) -> dict:
    """Return VL feature age [s] and reuse statistics of the chunks."""
    seq = chunks.feature_sequence[np.isfinite(chunks.feature_sequence)]
    reuse = chunks.reuse_index[np.isfinite(chunks.reuse_index)]
    out = {'age_s': summary(chunks.feature_age_s), 'reuse_index': summary(reuse),
           'distinct_features': int(np.unique(seq).size)}
    out['chunks_per_feature'] = (float(seq.size / out['distinct_features'])
                                 if out['distinct_features'] else None)
    return out


# --- everything at once -------------------------------------------------------------------

def _joint_table(names, mae, rmse) -> dict:
    return {name: {'mae_rad': _num(a), 'rmse_rad': _num(r), 'mae_deg': _num(np.degrees(a)),
                   'rmse_deg': _num(np.degrees(r))} for name, a, r in zip(names, mae, rmse)}


def _num(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def evaluate(traj: Trajectory, chunks: ChunkSeries, control_period_s: float | None = None,
             nominal_period_s: float | None = 0.1) -> dict:
    """Return every metric as a JSON-friendly dict (units in the key names)."""
    names = traj.joint_names or tuple(f'joint_{j + 1}' for j in range(traj.num_joints))
    errors = chunk_errors(traj, chunks)
    mae, rmse = per_joint(errors)
    all_mae, all_rmse = mae_rmse(errors)
    h_mae, h_rmse = by_horizon_step(errors)
    ticks = control_ticks(chunks, traj, control_period_s)
    ex = executed(chunks, ticks)
    ex_err = ex.actions[:, :traj.num_joints] - traj.at(ticks)
    ex_mae, ex_rmse = per_joint(ex_err)
    ex_all = mae_rmse(ex_err)
    disc = discontinuity(chunks, traj.num_joints)
    return {
        'units': {'errors': 'rad (and deg)', 'times': 's', 'latency': 'ms'},
        'chunks': len(chunks), 'horizon': chunks.horizon, 'dt_s': chunks.dt_s,
        'compared_actions': int((~np.isnan(errors[..., 0])).sum()),
        'all_steps': {'per_joint': _joint_table(names, mae, rmse),
                      'mae_rad': _num(all_mae), 'rmse_rad': _num(all_rmse),
                      'mae_deg': _num(np.degrees(all_mae)),
                      'rmse_deg': _num(np.degrees(all_rmse))},
        'horizon_steps': [{'step': k, 'mae_rad': _num(a), 'rmse_rad': _num(r)}
                          for k, (a, r) in enumerate(zip(h_mae, h_rmse))],
        'executed': {'per_joint': _joint_table(names, ex_mae, ex_rmse),
                     'mae_rad': _num(ex_all[0]), 'rmse_rad': _num(ex_all[1]),
                     'mae_deg': _num(np.degrees(ex_all[0])),
                     'rmse_deg': _num(np.degrees(ex_all[1])),
                     'ticks': int(ticks.size),
                     'stale_fraction': _num(ex.stale.mean()) if ticks.size else None},
        'discontinuity': {
            'boundaries': int(disc.jumps.shape[0]),
            'overlapping': int(disc.overlapping.sum()),
            'per_joint_mean_rad': dict(zip(names, map(_num, disc.jumps.mean(axis=0))))
            if disc.jumps.size else {},
            'per_joint_max_rad': dict(zip(names, map(_num, disc.jumps.max(axis=0))))
            if disc.jumps.size else {},
            'mean_rad': _num(disc.jumps.mean()) if disc.jumps.size else None,
        },
        'action_rate': action_rate(chunks.stamps_s, nominal_period_s),
        'inference_ms': summary(chunks.inference_ms),
        'latency_ms': summary(chunks.latency_ms),
        'latency_histogram_ms': histogram(chunks.latency_ms),
        'features': feature_stats(chunks),
    }
