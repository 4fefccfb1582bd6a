"""The scripted demonstrator, closed loop: action chunks toward the hole it is told about.

It knows the episode's hole position (privileged: it is the demonstrator) and sees the measured
robot state. It moves the peg tip through four phases, each a minimum-jerk straight line in
Cartesian space with the tool pointing down:

    approach   from wherever the tip is to `above_m` over the hole, off by the approach offset
    descend    down to `pre_contact_m` over the block top, off by half the approach offset
    insert     down to INSERT_DEPTH_M in the hole, the offset corrected on the way
    hold       stay at the inserted pose

Closed loop: each phase's line starts from the measured tip when the phase begins, a phase ends
only when the measured tip is within `tolerance_m` of its goal, and the plan's clock never runs
more than `max_plan_lead_s` ahead of the measured progress along the line (an arm that is held
back, by latency or by a hold, is not left behind by its plan). Every call returns a chunk of
`horizon` absolute joint targets `dt_s` apart from the observation time on, solved by IK from the
measured joints, plus the gripper (closed), the same form as the action expert's
(core/data.py ActionChunkData).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vla_insertion.core.config import require, require_positive
from vla_insertion.core.data import ActionChunkData, RobotState
from vla_insertion.core.sim.geometry import INSERT_DEPTH_M
from vla_insertion.core.sim.kinematics import min_jerk, solve_ik

APPROACH, DESCEND, INSERT, HOLD = 'approach', 'descend', 'insert', 'hold'
PHASES = (APPROACH, DESCEND, INSERT, HOLD)
_S_TABLE = np.linspace(0.0, 1.0, 401)
_MIN_JERK_TABLE = min_jerk(_S_TABLE)    # to invert the profile: progress -> time


@dataclass(frozen=True)
class ReferenceParams:
    """Waypoints, speeds and tolerances of the demonstrator."""

    horizon: int = 8               # actions per chunk
    dt_s: float = 0.1              # time between actions [s]
    above_m: float = 0.06          # approach height over the hole's opening [m]
    pre_contact_m: float = 0.002   # end of the descent over the block top [m]
    approach_speed_m_s: float = 0.25   # peak tip speed of the approach [m/s]
    descend_speed_m_s: float = 0.05    # peak tip speed of the descent [m/s]
    insert_speed_m_s: float = 0.02     # peak tip speed of the insertion [m/s]
    min_segment_s: float = 0.5     # shortest phase [s]
    tolerance_m: float = 0.001     # a phase ends with the measured tip this close to its goal [m]
    max_plan_lead_s: float = 0.5   # the plan runs at most this far ahead of the measured tip [s]

    def __post_init__(self) -> None:
        require(isinstance(self.horizon, int) and self.horizon >= 1,
                f'horizon must be an integer >= 1, got {self.horizon!r}')
        for name in ('dt_s', 'above_m', 'pre_contact_m', 'approach_speed_m_s',
                     'descend_speed_m_s', 'insert_speed_m_s', 'min_segment_s', 'tolerance_m',
                     'max_plan_lead_s'):
            require_positive(name, getattr(self, name))


@dataclass(frozen=True)
class ReferenceObservation:
    """What the demonstrator sees: the measured robot and the episode's hole."""

    robot: RobotState              # measured joints, tool pose, gripper; stamp = observation time
    hole_top_m: np.ndarray         # (3,) centre of the hole's opening [m]
    approach_offset_m: np.ndarray = field(default_factory=lambda: np.zeros(2))  # (2,) [m]


@dataclass
class _Segment:
    """A minimum-jerk line from start to goal, starting at start_s and lasting duration_s."""

    start: np.ndarray              # (3,) [m]
    goal: np.ndarray               # (3,) [m]
    start_s: float
    duration_s: float

    def progress_time(self, tip: np.ndarray) -> float:
        """Plan time [s] at which the line passes closest to `tip` (3,)."""
        line = self.goal - self.start
        length2 = float(line @ line)
        if length2 < 1e-12:
            return self.duration_s
        s = float(np.clip((tip - self.start) @ line / length2, 0.0, 1.0))
        return float(np.interp(s, _MIN_JERK_TABLE, _S_TABLE)) * self.duration_s

    def at(self, plan_s: np.ndarray) -> np.ndarray:
        """Positions (N, 3) at plan times (N,) [s] after start_s."""
        s = min_jerk(np.asarray(plan_s) / self.duration_s)[:, None]
        return self.start + s * (self.goal - self.start)


class ReferencePolicy:
    """`infer(ReferenceObservation) -> ActionChunkData`, `reset()`: the shared model interface."""

    def __init__(self, params: ReferenceParams = ReferenceParams()) -> None:
        self.params = params
        self.reset()

    def reset(self) -> None:
        self.phase = APPROACH
        self._segment: _Segment | None = None
        self._sequence = 0

    def _goal(self, phase: str, hole: np.ndarray, offset: np.ndarray) -> np.ndarray:
        p = self.params
        if phase == APPROACH:
            return hole + np.r_[offset, p.above_m]
        if phase == DESCEND:
            return hole + np.r_[0.5 * offset, p.pre_contact_m]
        return hole - np.array([0.0, 0.0, INSERT_DEPTH_M])

    def _speed(self, phase: str) -> float:
        p = self.params
        return {APPROACH: p.approach_speed_m_s, DESCEND: p.descend_speed_m_s}.get(
            phase, p.insert_speed_m_s)

    def _begin(self, phase: str, tip: np.ndarray, now_s: float, hole: np.ndarray,
               offset: np.ndarray) -> None:
        self.phase = phase
        goal = self._goal(phase, hole, offset)
        # a minimum-jerk line peaks at 1.875 times its mean speed
        duration = max(self.params.min_segment_s,
                       1.875 * float(np.linalg.norm(goal - tip)) / self._speed(phase))
        self._segment = _Segment(tip.copy(), goal, now_s, duration)

    def infer(self, obs: ReferenceObservation) -> ActionChunkData:
        p = self.params
        now = obs.robot.stamp_s
        tip = np.asarray(obs.robot.tool_position_m, dtype=np.float64)
        hole = np.asarray(obs.hole_top_m, dtype=np.float64)
        offset = np.asarray(obs.approach_offset_m, dtype=np.float64)
        if self._segment is None:
            self._begin(APPROACH, tip, now, hole, offset)
        seg = self._segment
        elapsed = now - seg.start_s
        arrived = float(np.linalg.norm(tip - seg.goal)) <= p.tolerance_m
        if self.phase != HOLD and elapsed >= seg.duration_s and arrived:
            self._begin(PHASES[PHASES.index(self.phase) + 1], tip, now, hole, offset)
            seg, elapsed = self._segment, 0.0
        plan_s = min(elapsed, seg.progress_time(tip) + p.max_plan_lead_s)
        targets = seg.at(plan_s + p.dt_s * np.arange(p.horizon))               # (H, 3)
        joints = solve_ik(targets, obs.robot.joint_positions_rad)              # (H, 6)
        actions = np.concatenate([joints, np.ones((p.horizon, 1))], axis=1)    # (H, 7)
        self._sequence += 1
        return ActionChunkData(stamp_s=now, actions=actions.astype(np.float32), dt_s=p.dt_s,
                               sequence=self._sequence)
