"""The scripted demonstrator, closed loop: action chunks toward the hole it is told about.

It knows the episode's hole position (privileged: it is the demonstrator) and sees the measured
robot state and the wrist sensor's window. It is a function of what it sees and nothing else (no
plan, no clock, no phase memory): the same observation always gives the same chunk. A policy
trained to imitate it sees the same observation and can therefore learn the same answer; a
demonstrator with hidden state (how far along a planned line it is, which phase it has
reached) shows different answers for the same picture, and a policy cloning it averages them,
e.g. "start a slow minimum-jerk descent" from rest, every tick again, and never gets going.

Where the tip should go next is a goal chosen from the geometry, reached along a velocity field
v = (goal - tip) / `time_constant_s`, capped at the phase's speed:

    approach   far from the hole or high over it: toward a funnel over the hole, whose allowed
               height grows with the lateral error beyond `search_radius_m` (`funnel_slope` mm
               per mm, between `pre_contact_m` and `above_m` over the rim), aiming off by the
               approach offset while high and on the hole at the rim, at up to
               `approach_speed_m_s`
    descend    within `descend_radius_m` of the aim: the same funnel, at up to `descend_speed_m_s`
    insert     within `align_m` of the hole's axis at the rim's height, or already in the hole
               (below the rim within `in_hole_m` of the axis): down the axis to INSERT_DEPTH_M
               at up to `insert_speed_m_s`, through the rim (from `rim_above_m` over it to
               `rim_below_m` under it) at `rim_speed_m_s`, so that a peg that meets the block
               top or wedges builds its force slowly enough to be felt before the limits
    search     low over the block (under the funnel's bottom) beside the hole, within
               `search_radius_m`: pressed on the block top (the sensor reads `contact_force_n`
               up, or the tip is under half the hover height) it lifts straight off to
               `hover_m`; hovering, it moves over the hole there,
               at up to `search_speed_m_s`; over the axis, `insert` drops the peg in
    lift       wedged: in the rim less than `wedge_depth_m` deep and pressing up with
               `wedge_force_n` (the sensor), or below the rim off the axis by more than
               `in_hole_m` (only a wedge holds a peg there): straight up to `lift_m` over the
               rim, at up to `insert_speed_m_s`; freed above the rim, `search` re-aligns it
    hold       inserted: stay
    (a tip below the rim further than `search_radius_m` from the hole, against the block's side,
    first rises straight up: `approach`.)

The search is a hop, not a spiral: the demonstrator knows where the hole is, so it needs no
pattern to find it; what the force tells it is *that* the peg sits on the block top or in a
wedge, and a learned policy that imitates it learns the same reactions to the same forces (its
"over the hole" is its own estimate from the wrist camera; the retries are fresh estimates).

Every call rolls the field out from the measured tip: `horizon` Cartesian targets `dt_s` apart
from the observation time on, the first one the measured tip, solved by IK from the measured
joints, plus the gripper (closed): the same form as the action expert's chunks
(core/data.py ActionChunkData). `phase` tells which rule the last call used.
`reference_observation(cell)` is what it sees of the simulated cell; `EpisodeReference` drives
the episode a running sim_cell reports on its episode stream (the reference_policy node, and
the demonstrator served over a policy server's protocol, core/remote/reference.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vla_insertion.core.config import require, require_positive
from vla_insertion.core.data import ActionChunkData, RobotState, SensorWindowData
from vla_insertion.core.executor.gate import FORCE_CHANNELS
from vla_insertion.core.sim.cell import SimCell
from vla_insertion.core.sim.episode import episode_spec
from vla_insertion.core.sim.geometry import INSERT_DEPTH_M
from vla_insertion.core.sim.kinematics import solve_ik

APPROACH, DESCEND, INSERT, HOLD = 'approach', 'descend', 'insert', 'hold'
SEARCH, LIFT = 'search', 'lift'
PHASES = (APPROACH, DESCEND, INSERT, HOLD, SEARCH, LIFT)


@dataclass(frozen=True)
class ReferenceParams:
    """Funnel, speeds and tolerances of the demonstrator."""

    horizon: int = 8               # actions per chunk
    dt_s: float = 0.1              # time between actions [s]
    above_m: float = 0.06          # top of the funnel over the hole's opening [m]
    pre_contact_m: float = 0.002   # bottom of the funnel over the block top [m]
    funnel_slope: float = 3.0      # allowed height over the bottom per lateral error [m/m]
    descend_radius_m: float = 0.005  # lateral error under which the descent speed applies [m]
    # at the funnel's bottom this close to the axis: insert [m]. The hole takes a peg entering
    # up to 1.2 mm off (the contact model's jam_lateral_m); 0.5 mm kept a learned policy,
    # which knows the axis to about a millimetre, centring for ever a millimetre off
    align_m: float = 0.001
    insert_tolerance_m: float = 0.0005  # inserted once this close to INSERT_DEPTH_M [m]
    approach_speed_m_s: float = 0.25   # fastest tip speed of the approach [m/s]
    descend_speed_m_s: float = 0.05    # ... of the descent [m/s]
    insert_speed_m_s: float = 0.02     # ... of the insertion [m/s]
    time_constant_s: float = 0.3   # the field's speed per distance to the goal: 1 / this [1/s]
    # through the rim, searching and lifting (the force-guided part)
    rim_above_m: float = 0.001     # the rim speed applies from this over the rim ... [m]
    rim_below_m: float = 0.0025    # ... to this under it (past the 1.5 mm a wedge lets in) [m]
    rim_speed_m_s: float = 0.002   # fastest tip speed through the rim [m/s]
    in_hole_m: float = 0.0008      # below the rim this close to the axis: in the hole [m]
    search_radius_m: float = 0.004  # low beside the hole within this: search, not approach [m]
    hover_m: float = 0.001         # the search's height over the block top [m]
    search_speed_m_s: float = 0.01  # fastest tip speed of the search [m/s]
    contact_force_n: float = 3.0   # the sensor's fz from this up: pressed on the block [N]
    wedge_force_n: float = 10.0    # ... from this up, in the rim: wedged [N]
    wedge_depth_m: float = 0.003   # the rim's depth where a push up means a wedge [m]
    lift_m: float = 0.003          # a wedged peg is lifted this far over the rim [m]
    force_samples: int = 10        # newest window samples averaged into the force [samples]

    def __post_init__(self) -> None:
        require(isinstance(self.horizon, int) and self.horizon >= 1,
                f'horizon must be an integer >= 1, got {self.horizon!r}')
        require(isinstance(self.force_samples, int) and self.force_samples >= 1,
                f'force_samples must be an integer >= 1, got {self.force_samples!r}')
        for name in ('dt_s', 'above_m', 'pre_contact_m', 'funnel_slope', 'descend_radius_m',
                     'align_m', 'insert_tolerance_m', 'approach_speed_m_s',
                     'descend_speed_m_s', 'insert_speed_m_s', 'time_constant_s',
                     'rim_above_m', 'rim_below_m', 'rim_speed_m_s', 'in_hole_m',
                     'search_radius_m', 'hover_m', 'search_speed_m_s', 'contact_force_n',
                     'wedge_force_n', 'wedge_depth_m', 'lift_m'):
            require_positive(name, getattr(self, name))
        require(self.pre_contact_m < self.above_m,
                f'pre_contact_m ({self.pre_contact_m}) must be below above_m ({self.above_m})')
        require(self.hover_m < self.pre_contact_m,
                f'hover_m ({self.hover_m}) must be below pre_contact_m ({self.pre_contact_m})')
        require(max(self.align_m, self.in_hole_m) < self.search_radius_m,
                f'align_m and in_hole_m must be below search_radius_m, got {self.align_m}, '
                f'{self.in_hole_m}, {self.search_radius_m}')
        require(self.contact_force_n < self.wedge_force_n,
                f'contact_force_n ({self.contact_force_n}) must be below wedge_force_n '
                f'({self.wedge_force_n})')


@dataclass(frozen=True)
class ReferenceObservation:
    """What the demonstrator sees: the measured robot, the sensor and the episode's hole."""

    robot: RobotState              # measured joints, tool pose, gripper; stamp = observation time
    hole_top_m: np.ndarray         # (3,) centre of the hole's opening [m]
    approach_offset_m: np.ndarray = field(default_factory=lambda: np.zeros(2))  # (2,) [m]
    window: SensorWindowData | None = None   # the newest sensor window; None: no force felt


def reference_observation(cell: SimCell, window: SensorWindowData | None = None
                          ) -> ReferenceObservation:
    """Return the demonstrator's observation now: measured state, `window`, the episode's hole.

    `window`: the sensor window a reader took at this moment (PipelineLoop.window), the one the
    learned policy's tick gets too.
    """
    return ReferenceObservation(robot=cell.state().robot_state(),
                                hole_top_m=cell.spec.hole_top_m.copy(),
                                approach_offset_m=cell.spec.approach_offset_m.copy(),
                                window=window)


def felt_force(window: SensorWindowData | None, samples: int) -> np.ndarray:
    """Return the mean force (3,) [N] of the newest `samples` valid rows; zeros without any.

    The environment's force on the peg in the base axes (fz > 0 pushes the peg up).
    """
    if window is None or window.valid_samples < 1:
        return np.zeros(3)
    names = tuple(window.channel_names) or FORCE_CHANNELS
    if not all(c in names for c in FORCE_CHANNELS):
        return np.zeros(3)
    rows = np.asarray(window.samples, dtype=np.float64)[-min(samples, window.valid_samples):]
    force = rows[:, [names.index(c) for c in FORCE_CHANNELS]]
    force = force[np.isfinite(force).all(axis=1)]
    return force.mean(axis=0) if len(force) else np.zeros(3)


class ReferencePolicy:
    """`infer(ReferenceObservation) -> ActionChunkData`, `reset()`: the shared model interface."""

    def __init__(self, params: ReferenceParams = ReferenceParams()) -> None:
        self.params = params
        self.reset()

    def reset(self) -> None:
        self.phase = APPROACH
        self._sequence = 0

    def goal(self, tip: np.ndarray, hole: np.ndarray, offset: np.ndarray,
             force: np.ndarray | None = None) -> tuple[str, np.ndarray]:
        """Return (phase, where the tip should head (3,)).

        For the tip (3,), the hole (3,), the approach offset (2,) and the felt force (3,) [N]
        (None: none).
        """
        p = self.params
        fz = 0.0 if force is None else float(force[2])             # > 0: pushed up [N]
        height = tip[2] - hole[2]                                  # over the rim [m]
        to_axis = float(np.hypot(*(tip[:2] - hole[:2])))           # off the hole's axis [m]
        bottom = hole - np.array([0.0, 0.0, INSERT_DEPTH_M])
        if height <= -(INSERT_DEPTH_M - p.insert_tolerance_m):
            return HOLD, bottom
        below = height < 0.0
        wedged = below and ((height > -p.wedge_depth_m and fz >= p.wedge_force_n)
                            or p.in_hole_m < to_axis <= p.search_radius_m)
        if wedged:
            return LIFT, np.r_[tip[:2], hole[2] + p.lift_m]
        entered = below and to_axis <= p.in_hole_m
        at_rim = height <= p.pre_contact_m + p.funnel_slope * p.align_m and to_axis <= p.align_m
        if entered or at_rim:
            return INSERT, bottom
        if below:                                                  # against the block's side
            return APPROACH, np.r_[tip[:2], hole[2] + p.above_m]
        if height < p.pre_contact_m and to_axis <= p.search_radius_m:
            if fz >= p.contact_force_n or height < 0.5 * p.hover_m:   # on the block: lift off
                return SEARCH, np.r_[tip[:2], hole[2] + p.hover_m]
            return SEARCH, np.r_[hole[:2], hole[2] + p.hover_m]    # hovering: over the hole
        # the aim moves from the approach offset (at the funnel's top) onto the axis (bottom)
        share = np.clip((height - p.pre_contact_m) / (p.above_m - p.pre_contact_m), 0.0, 1.0)
        aim = hole[:2] + share * offset
        error = float(np.hypot(*(aim - tip[:2])))
        # flat at the bottom within the search radius: a policy that knows the hole to a
        # millimetre or two gets one answer there (go down to the funnel's bottom, centre
        # there), not "rise by 3 mm per mm of an error it cannot see", whose average over its
        # uncertainty holds it hovering a centimetre up
        allowed = np.clip(p.pre_contact_m + p.funnel_slope * max(0.0, error - p.search_radius_m),
                          p.pre_contact_m, p.above_m)
        phase = DESCEND if error <= p.descend_radius_m and height <= p.above_m + 0.005 \
            else APPROACH
        return phase, np.r_[aim, hole[2] + allowed]

    def _speed(self, phase: str, height: float) -> float:
        """Fastest tip speed [m/s] of `phase` at `height` over the rim [m]."""
        p = self.params
        if phase == INSERT and -p.rim_below_m < height < p.rim_above_m:
            return p.rim_speed_m_s
        return {APPROACH: p.approach_speed_m_s, DESCEND: p.descend_speed_m_s,
                SEARCH: p.search_speed_m_s}.get(phase, p.insert_speed_m_s)

    def infer(self, obs: ReferenceObservation) -> ActionChunkData:
        p = self.params
        hole = np.asarray(obs.hole_top_m, dtype=np.float64)
        offset = np.asarray(obs.approach_offset_m, dtype=np.float64)
        tip = np.asarray(obs.robot.tool_position_m, dtype=np.float64)
        # the force as felt now holds for the whole roll-out: a chunk is one decision
        force = felt_force(obs.window, p.force_samples)
        targets = [tip.copy()]
        lift = None                  # a lift is one decision: its goal holds for the chunk
        for k in range(p.horizon - 1):
            phase, goal = (LIFT, lift) if lift is not None else self.goal(
                targets[-1], hole, offset, force)
            if k == 0:
                self.phase = phase
                lift = goal if phase == LIFT else None
            step = (goal - targets[-1]) * min(1.0, p.dt_s / p.time_constant_s)
            limit = self._speed(phase, float(targets[-1][2] - hole[2])) * p.dt_s
            norm = float(np.linalg.norm(step))
            targets.append(targets[-1] + (step * (limit / norm) if norm > limit else step))
        if p.horizon == 1:
            self.phase = self.goal(tip, hole, offset, force)[0]
        joints = solve_ik(np.array(targets), obs.robot.joint_positions_rad)    # (H, 6)
        actions = np.concatenate([joints, np.ones((p.horizon, 1))], axis=1)    # (H, 7)
        self._sequence += 1
        return ActionChunkData(stamp_s=obs.robot.stamp_s, actions=actions.astype(np.float32),
                               dt_s=p.dt_s, sequence=self._sequence)


class EpisodeReference:
    """The demonstrator for the episode a sim_cell reports running (its episode stream).

    `act(report, robot)` returns the chunk for the measured robot, or None with the reason in
    `waiting` (no report yet, no robot state yet, the episode is decided). A new (seed,
    episode) resets the demonstrator. Privileged: it knows the hole from the report's episode.
    """

    def __init__(self, policy: ReferencePolicy | None = None) -> None:
        self.policy = policy or ReferencePolicy()
        self.waiting = 'no episode report yet'
        self._episode: tuple[int, int] | None = None      # (seed, index) planned for

    def act(self, report, robot: RobotState | None, window: SensorWindowData | None = None
            ) -> ActionChunkData | None:
        """Return the chunk for the running episode, or None (the reason in `waiting`).

        `report`: the newest core.wire.EpisodeMessage, or None before the first; `window` the
        newest sensor window (None: the demonstrator decides from geometry alone).
        """
        if report is None or robot is None:
            self.waiting = 'no episode report yet' if report is None else 'no robot state yet'
            return None
        if report.state != 'running':           # decided: the cell holds, then resets
            self.waiting = f'episode {report.episode} {report.state}'
            return None
        if self._episode != (report.seed, report.episode):
            self._episode = (report.seed, report.episode)
            self.policy.reset()
        spec = episode_spec(report.seed, report.episode)
        self.waiting = ''
        return self.policy.infer(ReferenceObservation(robot, spec.hole_top_m,
                                                      spec.approach_offset_m, window))
