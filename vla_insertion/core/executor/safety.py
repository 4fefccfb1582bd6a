"""The cell's safety inputs beside the chunk stream: e-stop, deadman, workspace box.

Each is secondary to the cell's hardware safety (the e-stop circuit, the robot controller's own
protective stops and limits): these make the executor stop *with* the cell, brake on the
command outputs at once and refuse to arm, so no command ever fights a stopped robot. They never
replace the hardware. docs/safety.md says what each catches and what it does not.

    input                what it does                                         cleared by
    safety/estop (Bool)  true: latch fault `estop`, stop at once; arming and   estop false,
                         reset_fault refused while true                        then reset_fault
    safety/heartbeat     deadman_timeout_s > 0: no `true` within the timeout   a fresh true,
      (Bool)             (or a `false`): stop at once (event `deadman`)        then arm
    robot/pose           workspace box set: the tool, at its measured          move inside,
                         velocity, would leave the box before it can stop:     reset_fault, arm
                         latch fault `workspace`, stop at once

Pure: the executor passes every time in. Nothing here commands anything; the executor reads
`deadman_released`, `workspace_breach` and `arming_refusal` and stops (core/executor/stops.py).
"""
from __future__ import annotations

from dataclasses import dataclass
import math

import numpy as np

from vla_insertion.core.data import ToolPose

ESTOP = 'estop'
DEADMAN = 'deadman'
WORKSPACE = 'workspace'
VELOCITY_BASELINE_S = 0.03         # the tool velocity is measured over at least this long [s]


@dataclass(frozen=True)
class SafetySettings:
    """What the executor's config says about these inputs (ExecutorConfig fields)."""

    estop_input: bool              # safety/estop is wired: its state must be known to arm
    deadman_timeout_s: float       # 0: no deadman [s]
    workspace_min_m: tuple[float, ...]  # (3,) box corner, base frame; () no box [m]
    workspace_max_m: tuple[float, ...]  # (3,) other corner [m]
    workspace_decel_mps2: float    # the tool's braking deceleration when stopped [m/s^2]
    reaction_s: float              # commands already in flight when a stop begins [s]
    max_pose_age_s: float          # a tool pose older than this is no pose [s]
    # A measured pose implying a faster tool is a discontinuity, not motion: the robot re-homed
    # by another program, the sim's reset to an episode's start pose, a bad reading. Projected
    # as a velocity it puts the stopping point metres outside the box and latches a fault that
    # says nothing true about the motion; it is a stop of its own instead (`pose_jump`, not
    # latched), and the velocity restarts there.
    max_tool_speed_mps: float = 2.0

    @property
    def has_box(self) -> bool:
        return len(self.workspace_min_m) == 3


class SafetyInputs:
    """The newest e-stop state, deadman heartbeat and tool pose, and the rules on them."""

    def __init__(self, settings: SafetySettings) -> None:
        self._s = settings
        self._lo = np.asarray(settings.workspace_min_m, dtype=np.float64)
        self._hi = np.asarray(settings.workspace_max_m, dtype=np.float64)
        self.estop_active: bool | None = None     # None: no state received yet
        self._heartbeat_s = -math.inf             # newest `true` heartbeat
        self._held = False
        self.forget_motion()

    def forget_motion(self) -> None:
        """Forget the tool's pose and motion (a new episode).

        The e-stop and deadman states are the cell's, not the episode's: they stay.
        """
        self._pose: ToolPose | None = None
        self._base: ToolPose | None = None            # the velocity's older pose
        self._velocity = np.zeros(3)                  # (3,) tool velocity [m/s]
        self._jumped = False                          # a pose jump not yet taken (take_jump)

    @property
    def settings(self) -> SafetySettings:
        return self._s

    # --- inputs -------------------------------------------------------------------------

    def on_estop(self, active: bool) -> bool:
        """Take the e-stop state; return True when it has just become active."""
        began = bool(active) and self.estop_active is not True
        self.estop_active = bool(active)
        return began

    def on_heartbeat(self, held: bool, now_s: float) -> bool:
        """Take one heartbeat; return True when it says released (false)."""
        self._held = bool(held)
        if self._held:
            self._heartbeat_s = now_s
        return not self._held

    def on_tool_pose(self, pose: ToolPose) -> bool:
        """Take the measured tool pose; False for one that cannot be used (the caller counts)."""
        position = np.asarray(pose.position_m, dtype=np.float64).reshape(-1)
        if position.size != 3 or not (np.isfinite(position).all() and math.isfinite(pose.stamp_s)):
            return False
        last = self._pose
        if last is not None and pose.stamp_s < last.stamp_s:
            return False
        self._pose = ToolPose(pose.stamp_s, position, np.asarray(pose.orientation_xyzw))
        base = self._base
        if base is None:
            self._base = self._pose
        elif pose.stamp_s - base.stamp_s >= VELOCITY_BASELINE_S:
            # a finite difference over at least VELOCITY_BASELINE_S: poses that arrive in a
            # burst, or stamps with a few ms of clock jitter, would make two close poses a
            # velocity of metres per second (and a false stop)
            velocity = (position - base.position_m) / (pose.stamp_s - base.stamp_s)
            if float(np.linalg.norm(velocity)) > self._s.max_tool_speed_mps:
                velocity, self._jumped = np.zeros(3), True
            self._velocity = velocity
            self._base = self._pose
        return True

    def take_jump(self) -> bool:
        """Return True once after a pose that jumped (faster than max_tool_speed_mps)."""
        jumped, self._jumped = self._jumped, False
        return jumped

    # --- rules --------------------------------------------------------------------------

    def deadman_released(self, now_s: float) -> bool:
        """Whether the deadman is on and not held: released, or silent past its timeout."""
        timeout = self._s.deadman_timeout_s
        return timeout > 0 and not (self._held and now_s - self._heartbeat_s <= timeout)

    def pose_fresh(self, now_s: float) -> bool:
        pose = self._pose
        return pose is not None and now_s - pose.stamp_s <= self._s.max_pose_age_s

    def stopping_point(self, now_s: float) -> np.ndarray:
        """Where the tool would come to rest if a stop began now [m] (3,).

        The distance covered while the commands in flight run out (reaction_s) and the pose's
        age, then braking at workspace_decel_mps2: |v| t + v^2 / 2a, per axis.
        """
        pose, v = self._pose, self._velocity
        react = self._s.reaction_s + max(0.0, now_s - pose.stamp_s)
        return pose.position_m + v * react + v * np.abs(v) / (2.0 * self._s.workspace_decel_mps2)

    def workspace_breach(self, now_s: float) -> str:
        """'' when the tool can still stop inside the box (or there is no box/pose), else why."""
        if not self._s.has_box or self._pose is None:
            return ''
        position = self._pose.position_m
        stop = self.stopping_point(now_s)
        for name, points in (('is', position), ('would stop', stop)):
            low, high = points < self._lo, points > self._hi
            if low.any() or high.any():
                axis = int(np.flatnonzero(low | high)[0])
                bound = self._lo[axis] if low[axis] else self._hi[axis]
                return (f'tool {name} at {"xyz"[axis]} = {points[axis]:.3f} m, outside the '
                        f'workspace box ({"min" if low[axis] else "max"} {bound:.3f} m)')
        return ''

    def arming_refusal(self, now_s: float) -> tuple[str, str] | None:
        """(reason, message) if these inputs forbid arming now, else None."""
        if self.estop_active:
            return 'estop_active', 'the e-stop is active: release it, then reset_fault'
        if self._s.estop_input and self.estop_active is None:
            return 'estop_unknown', 'no e-stop state received on safety/estop yet'
        if self.deadman_released(now_s):
            return 'deadman', (f'the deadman is not held (no true heartbeat on safety/heartbeat '
                               f'within {self._s.deadman_timeout_s} s)')
        if self._s.has_box:
            if not self.pose_fresh(now_s):
                return 'no_tool_pose', ('a workspace box is set but no fresh tool pose '
                                        '(robot/pose) was received')
            position = self._pose.position_m
            if (position < self._lo).any() or (position > self._hi).any():
                return 'outside_workspace', (f'the tool at {np.round(position, 3).tolist()} m '
                                             'is outside the workspace box: move it inside')
        return None
