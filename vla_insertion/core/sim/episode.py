"""Episodes of the simulated cell: seeded hole positions, success criteria, outcome records.

Episode `index` of a run with `seed` puts the hole's opening at HOLE_CENTRE_M plus an offset
drawn uniformly from +-`hole_range_m` in x and y (the block top at z = 0.05 m), and gives the
demonstrator an approach offset drawn uniformly from +-`approach_offset_m` per axis (it aims
that far off the hole above it and corrects it while inserting, as a person would). Both come
from numpy's generator seeded with (seed, index), so any episode is reproducible on its own.

An episode succeeds when the peg tip is in the hole at least INSERT_DEPTH_M - `insert_tolerance_m`
deep within `timeout_s` of its start, with the contact force never above `max_contact_force_n`.
It fails as `timeout`, `over_force` (the first step above the limit ends it) or `dropped` (the
gripper opened before the peg was in). The cell then holds the arm for `settle_s` and starts the
next episode.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import math

import numpy as np

from vla_insertion.core.config import require, require_non_negative, require_positive
from vla_insertion.core.sim.geometry import BLOCK_SIZE_M, HOLE_CENTRE_M, INSERT_DEPTH_M
from vla_insertion.core.sim.kinematics import HOME_RAD

SUCCESS = 'success'
TIMEOUT = 'timeout'
OVER_FORCE = 'over_force'
DROPPED = 'dropped'
REASONS = (SUCCESS, TIMEOUT, OVER_FORCE, DROPPED)


@dataclass(frozen=True)
class EpisodeParams:
    """Success criteria and randomisation of the episodes."""

    timeout_s: float = 20.0        # an episode not inserted after this long fails [s]
    max_contact_force_n: float = 50.0  # contact force above this fails the episode [N]
    insert_tolerance_m: float = 0.001  # success once deeper than INSERT_DEPTH_M minus this [m]
    settle_s: float = 0.5          # arm held after the outcome before the next episode [s]
    hole_range_m: float = 0.03     # hole x y within +- this of HOLE_CENTRE_M [m]
    approach_offset_m: float = 0.0015  # demonstrator's approach offset, +- per axis [m]
    start_range_rad: float = 0.0   # start joints = home + U(+- this) per joint (0: home) [rad]

    def __post_init__(self) -> None:
        require_positive('timeout_s', self.timeout_s)
        require_positive('max_contact_force_n', self.max_contact_force_n)
        require(0.0 < self.insert_tolerance_m < INSERT_DEPTH_M,
                f'insert_tolerance_m must be in (0, {INSERT_DEPTH_M}) m, '
                f'got {self.insert_tolerance_m!r}')
        require_non_negative('settle_s', self.settle_s)
        require(0.0 <= self.hole_range_m <= 0.1,
                f'hole_range_m must be in 0..0.1 m, got {self.hole_range_m!r}')
        require(0.0 <= self.approach_offset_m <= 0.005,
                f'approach_offset_m must be in 0..0.005 m, got {self.approach_offset_m!r}')
        require(0.0 <= self.start_range_rad <= 0.5,
                f'start_range_rad must be in 0..0.5 rad, got {self.start_range_rad!r}')


@dataclass(frozen=True)
class EpisodeSpec:
    """What is random about one episode."""

    index: int                     # episode number in the run, from 0
    seed: int                      # the run's seed
    hole_top_m: np.ndarray         # (3,) centre of the hole's opening [m]
    approach_offset_m: np.ndarray  # (2,) demonstrator's approach offset in x y [m]
    start_rad: np.ndarray = field(default_factory=lambda: HOME_RAD.copy())  # (6,) start joints


def episode_spec(seed: int, index: int, params: EpisodeParams = EpisodeParams()) -> EpisodeSpec:
    """Return the hole position and approach offset of episode `index` of the run `seed`."""
    rng = np.random.default_rng([seed, index])
    xy = HOLE_CENTRE_M + rng.uniform(-params.hole_range_m, params.hole_range_m, 2)
    offset = rng.uniform(-params.approach_offset_m, params.approach_offset_m, 2)
    # drawn after the hole and offset, so a run's holes do not depend on start_range_rad
    start = HOME_RAD + rng.uniform(-1.0, 1.0, 6) * params.start_range_rad
    return EpisodeSpec(index=index, seed=seed, hole_top_m=np.r_[xy, BLOCK_SIZE_M[2]],
                       approach_offset_m=offset, start_rad=start)


@dataclass(frozen=True)
class EpisodeRecord:
    """The outcome of one episode."""

    index: int                     # episode number in the run
    seed: int                      # the run's seed
    hole_top_m: tuple[float, float, float]  # centre of the hole's opening [m]
    success: bool
    reason: str                    # one of REASONS
    duration_s: float              # start to outcome [s]
    time_to_insert_s: float        # start to success [s], NaN if not inserted
    peak_force_n: float            # largest contact force magnitude [N]
    mean_force_n: float            # mean contact force magnitude while in contact [N], 0 if none
    max_depth_m: float             # deepest the tip got into the hole [m]

    def as_dict(self) -> dict:
        """Plain values for JSON and msgpack (NaN time_to_insert_s becomes None)."""
        return {'episode': self.index, 'seed': self.seed, 'hole_m': list(self.hole_top_m),
                'success': self.success, 'reason': self.reason, 'duration_s': self.duration_s,
                'time_to_insert_s': None if math.isnan(self.time_to_insert_s)
                else self.time_to_insert_s, 'peak_force_n': self.peak_force_n,
                'mean_force_n': self.mean_force_n, 'max_depth_m': self.max_depth_m}


class EpisodeJudge:
    """Watches one episode step by step and returns its record once it is decided."""

    def __init__(self, spec: EpisodeSpec, params: EpisodeParams, start_s: float) -> None:
        self.spec = spec
        self.params = params
        self.start_s = start_s
        self.peak_force_n = 0.0
        self.max_depth_m = 0.0
        self._force_sum = 0.0
        self._contact_steps = 0

    @property
    def mean_force_n(self) -> float:
        """Mean contact force magnitude over the steps in contact so far [N], 0 if none."""
        return self._force_sum / self._contact_steps if self._contact_steps else 0.0

    def update(self, t_s: float, force_n: float, depth_m: float, gripper: float
               ) -> EpisodeRecord | None:
        """Account one step at t_s; return the record if the episode ended at this step."""
        self.peak_force_n = max(self.peak_force_n, force_n)
        self.max_depth_m = max(self.max_depth_m, depth_m)
        if force_n > 0.0:
            self._force_sum += force_n
            self._contact_steps += 1
        if force_n > self.params.max_contact_force_n:
            return self._record(t_s, OVER_FORCE)
        if depth_m >= INSERT_DEPTH_M - self.params.insert_tolerance_m:
            return self._record(t_s, SUCCESS)
        if gripper < 0.5:
            return self._record(t_s, DROPPED)
        if t_s - self.start_s >= self.params.timeout_s:
            return self._record(t_s, TIMEOUT)
        return None

    def _record(self, t_s: float, reason: str) -> EpisodeRecord:
        elapsed = t_s - self.start_s
        return EpisodeRecord(
            index=self.spec.index, seed=self.spec.seed,
            hole_top_m=tuple(float(v) for v in self.spec.hole_top_m),
            success=reason == SUCCESS, reason=reason, duration_s=elapsed,
            time_to_insert_s=elapsed if reason == SUCCESS else math.nan,
            peak_force_n=self.peak_force_n,
            mean_force_n=self.mean_force_n,
            max_depth_m=self.max_depth_m)
