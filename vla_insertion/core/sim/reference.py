"""The scripted demonstrator, closed loop: action chunks toward the hole it is told about.

It knows the episode's hole position (privileged: it is the demonstrator) and sees the measured
robot state. It is a function of what it sees and nothing else (no plan, no clock, no phase
memory): the same observation always gives the same chunk. A policy trained to imitate it sees
the same observation and can therefore learn the same answer; a demonstrator with hidden state
(how far along a planned line it is, which phase it has reached) shows different answers for
the same picture, and a policy cloning it averages them, e.g. "start a slow minimum-jerk
descent" from rest, every tick again, and never gets going.

Where the tip should go next is a goal chosen from the geometry, reached along a velocity field
v = (goal - tip) / `time_constant_s`, capped at the phase's speed:

    approach   far from the hole or high over it: toward a funnel over the hole, whose allowed
               height grows with the lateral error (`funnel_slope` mm per mm, between
               `pre_contact_m` and `above_m` over the rim), aiming off by the approach offset
               while high and on the hole at the rim, at up to `approach_speed_m_s`
    descend    within `descend_radius_m` of the aim: the same funnel, at up to `descend_speed_m_s`
    insert     within `align_m` of the hole's axis at the rim's height, or already in the hole:
               down the axis to INSERT_DEPTH_M at up to `insert_speed_m_s`
    hold       inserted: stay
    (a tip below the rim beside the hole first rises straight up: `approach`.)

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
from vla_insertion.core.data import ActionChunkData, RobotState
from vla_insertion.core.sim.cell import SimCell
from vla_insertion.core.sim.episode import episode_spec
from vla_insertion.core.sim.geometry import INSERT_DEPTH_M
from vla_insertion.core.sim.kinematics import solve_ik

APPROACH, DESCEND, INSERT, HOLD = 'approach', 'descend', 'insert', 'hold'
PHASES = (APPROACH, DESCEND, INSERT, HOLD)


@dataclass(frozen=True)
class ReferenceParams:
    """Funnel, speeds and tolerances of the demonstrator."""

    horizon: int = 8               # actions per chunk
    dt_s: float = 0.1              # time between actions [s]
    above_m: float = 0.06          # top of the funnel over the hole's opening [m]
    pre_contact_m: float = 0.002   # bottom of the funnel over the block top [m]
    funnel_slope: float = 3.0      # allowed height over the bottom per lateral error [m/m]
    descend_radius_m: float = 0.005  # lateral error under which the descent speed applies [m]
    align_m: float = 0.0005        # at the funnel's bottom this close to the axis: insert [m]
    insert_tolerance_m: float = 0.0005  # inserted once this close to INSERT_DEPTH_M [m]
    approach_speed_m_s: float = 0.25   # fastest tip speed of the approach [m/s]
    descend_speed_m_s: float = 0.05    # ... of the descent [m/s]
    insert_speed_m_s: float = 0.02     # ... of the insertion [m/s]
    time_constant_s: float = 0.3   # the field's speed per distance to the goal: 1 / this [1/s]

    def __post_init__(self) -> None:
        require(isinstance(self.horizon, int) and self.horizon >= 1,
                f'horizon must be an integer >= 1, got {self.horizon!r}')
        for name in ('dt_s', 'above_m', 'pre_contact_m', 'funnel_slope', 'descend_radius_m',
                     'align_m', 'insert_tolerance_m', 'approach_speed_m_s',
                     'descend_speed_m_s', 'insert_speed_m_s', 'time_constant_s'):
            require_positive(name, getattr(self, name))
        require(self.pre_contact_m < self.above_m,
                f'pre_contact_m ({self.pre_contact_m}) must be below above_m ({self.above_m})')


@dataclass(frozen=True)
class ReferenceObservation:
    """What the demonstrator sees: the measured robot and the episode's hole."""

    robot: RobotState              # measured joints, tool pose, gripper; stamp = observation time
    hole_top_m: np.ndarray         # (3,) centre of the hole's opening [m]
    approach_offset_m: np.ndarray = field(default_factory=lambda: np.zeros(2))  # (2,) [m]


def reference_observation(cell: SimCell) -> ReferenceObservation:
    """Return the demonstrator's observation now: measured state and the episode's hole."""
    return ReferenceObservation(robot=cell.state().robot_state(),
                                hole_top_m=cell.spec.hole_top_m.copy(),
                                approach_offset_m=cell.spec.approach_offset_m.copy())


class ReferencePolicy:
    """`infer(ReferenceObservation) -> ActionChunkData`, `reset()`: the shared model interface."""

    def __init__(self, params: ReferenceParams = ReferenceParams()) -> None:
        self.params = params
        self.reset()

    def reset(self) -> None:
        self.phase = APPROACH
        self._sequence = 0

    def goal(self, tip: np.ndarray, hole: np.ndarray, offset: np.ndarray
             ) -> tuple[str, np.ndarray]:
        """Return (phase, where the tip should head (3,)) for the tip (3,) and the hole (3,)."""
        p = self.params
        height = tip[2] - hole[2]                                  # over the rim [m]
        to_axis = float(np.hypot(*(tip[:2] - hole[:2])))           # off the hole's axis [m]
        bottom = hole - np.array([0.0, 0.0, INSERT_DEPTH_M])
        if height <= -(INSERT_DEPTH_M - p.insert_tolerance_m):
            return HOLD, bottom
        entered = height < 0.0 and to_axis <= p.align_m * 3.0
        at_rim = height <= p.pre_contact_m + p.funnel_slope * p.align_m and to_axis <= p.align_m
        if entered or at_rim:
            return INSERT, bottom
        if height < 0.0:                                           # beside the hole, below it
            return APPROACH, np.r_[tip[:2], hole[2] + p.above_m]
        # the aim moves from the approach offset (at the funnel's top) onto the axis (bottom)
        share = np.clip((height - p.pre_contact_m) / (p.above_m - p.pre_contact_m), 0.0, 1.0)
        aim = hole[:2] + share * offset
        error = float(np.hypot(*(aim - tip[:2])))
        allowed = np.clip(p.pre_contact_m + p.funnel_slope * error, p.pre_contact_m, p.above_m)
        phase = DESCEND if error <= p.descend_radius_m and height <= p.above_m + 0.005 \
            else APPROACH
        return phase, np.r_[aim, hole[2] + allowed]

    def _speed(self, phase: str) -> float:
        p = self.params
        return {APPROACH: p.approach_speed_m_s, DESCEND: p.descend_speed_m_s}.get(
            phase, p.insert_speed_m_s)

    def infer(self, obs: ReferenceObservation) -> ActionChunkData:
        p = self.params
        hole = np.asarray(obs.hole_top_m, dtype=np.float64)
        offset = np.asarray(obs.approach_offset_m, dtype=np.float64)
        tip = np.asarray(obs.robot.tool_position_m, dtype=np.float64)
        targets = [tip.copy()]
        for k in range(p.horizon - 1):
            phase, goal = self.goal(targets[-1], hole, offset)
            if k == 0:
                self.phase = phase
            step = (goal - targets[-1]) * min(1.0, p.dt_s / p.time_constant_s)
            limit = self._speed(phase) * p.dt_s
            norm = float(np.linalg.norm(step))
            targets.append(targets[-1] + (step * (limit / norm) if norm > limit else step))
        if p.horizon == 1:
            self.phase = self.goal(tip, hole, offset)[0]
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

    def act(self, report, robot: RobotState | None) -> ActionChunkData | None:
        """`report`: the newest core.wire.EpisodeMessage, or None before the first."""
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
                                                      spec.approach_offset_m))
