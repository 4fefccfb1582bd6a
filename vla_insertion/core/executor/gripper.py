"""The gripper on a ros2_control cell: its gate causes, its units, and the two ways to command it.

The executor moves the gripper as the 7th axis of its motion limiter, in the action's units
(0 open .. 1 closed), within `joint_limits.gripper` (range [min_position, max_position], rate
max_velocity [1/s], plus acceleration and jerk). Two of those rules are counted apart from the
arm joints', so that /diagnostics says what the gripper's gate did:

    gripper_range   the gripper target was outside [min_position, max_position]: clipped (or
                    the limiter braked the gripper to stay inside)
    gripper_rate    the limiter held the gripper to its max_velocity

(the arm joints' are `position_limit` and `velocity_limit`; `split_causes` sorts them).

ros2_control has the gripper in its own units (a Robotiq 2F-85's knuckle joint: 0 .. 0.8 rad,
a parallel gripper's finger: metres). `GripperScale` maps the action's 0 .. 1 linearly onto
[open_position, closed_position] and back. `gripper_output` chooses how it is commanded:

    none               not on ros2_control (command_v1 carries it, as ever)
    trajectory_joint   one more joint of robot/joint_trajectory, named `gripper_joint`: the
                       plan's gripper column, and in a stop's braking the gripper braking to
                       rest where it is (the stop holds it: a stop never opens the gripper)
    forward_command    std_msgs/Float64MultiArray [position] on gripper/commands for a
                       forward_command_controller, every control step while the robot may
                       move (armed, or a stop in force: then the stop's rest)
"""
from __future__ import annotations

from dataclasses import dataclass
import math

import numpy as np

from vla_insertion.core.config import ConfigError
from vla_insertion.core.data import NUM_JOINTS
from vla_insertion.core.executor import gate

NONE, TRAJECTORY_JOINT, FORWARD_COMMAND = 'none', 'trajectory_joint', 'forward_command'
# The limiter's per-axis flags whose gripper part is counted under the gripper's own cause.
GRIPPER_CAUSE = {gate.POSITION_LIMIT: gate.GRIPPER_RANGE, gate.VELOCITY_LIMIT: gate.GRIPPER_RATE}


def split_causes(flags: np.ndarray, cause: str) -> set[str]:
    """Return the causes one (7,) per-axis flag array stands for: the joints', the gripper's.

    `cause` is the joints' (position_limit, velocity_limit, ...); where GRIPPER_CAUSE has a
    gripper cause for it, a flag on the gripper counts under that one instead.
    """
    flags = np.asarray(flags, dtype=bool)
    gripper_cause = GRIPPER_CAUSE.get(cause, cause)
    out = set()
    if flags[:NUM_JOINTS].any():
        out.add(cause)
    if flags[NUM_JOINTS:].any():
        out.add(gripper_cause)
    return out


@dataclass(frozen=True)
class GripperScale:
    """The action's gripper (0 open .. 1 closed) <-> a ros2_control gripper joint's units."""

    joint: str = 'gripper'         # the joint's name in ros2_control ('' = no gripper there)
    open_position: float = 0.0     # its position when open [controller units]
    closed_position: float = 1.0   # its position when closed [controller units]

    def __post_init__(self) -> None:
        if not (math.isfinite(self.open_position) and math.isfinite(self.closed_position)
                and self.open_position != self.closed_position):
            raise ConfigError(f'gripper open_position {self.open_position} and closed_position '
                              f'{self.closed_position} must be finite and differ')

    @property
    def span(self) -> float:
        """Controller units per unit of the action's gripper (negative: closing decreases)."""
        return self.closed_position - self.open_position

    def to_controller(self, gripper: float) -> float:
        """Return the controller's position of 0 .. 1 (clipped into [0, 1]: never outside)."""
        return self.open_position + min(max(float(gripper), 0.0), 1.0) * self.span

    def from_controller(self, position: float) -> float:
        """Return the action's units of a controller position (not clipped: a reading)."""
        return (float(position) - self.open_position) / self.span


@dataclass(frozen=True)
class GripperOutput:
    """Which joints robot/joint_trajectory names, and the gripper's command value."""

    mode: str                      # none, trajectory_joint, forward_command
    scale: GripperScale

    @classmethod
    def from_config(cls, config) -> GripperOutput:
        """From an ExecutorConfig's gripper_output, gripper_joint and gripper_*_position."""
        return cls(config.gripper_output, GripperScale(
            config.gripper_joint, config.gripper_open_position, config.gripper_closed_position))

    def joint_names(self, arm: tuple[str, ...]) -> tuple[str, ...]:
        """Return the trajectory's joint names: the arm's, and the gripper as a joint of it."""
        return tuple(arm) + ((self.scale.joint,) if self.mode == TRAJECTORY_JOINT else ())

    def columns(self, position: np.ndarray, velocity: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
        """Return one trajectory point's (positions, velocities) of a (7,) limiter state.

        The arm's 6 [rad, rad/s]; as a trajectory joint, the gripper in the controller's units.
        """
        arm_p, arm_v = position[:NUM_JOINTS].copy(), velocity[:NUM_JOINTS].copy()
        if self.mode != TRAJECTORY_JOINT:
            return arm_p, arm_v
        gripper = self.scale.to_controller(position[NUM_JOINTS])
        return (np.append(arm_p, gripper),
                np.append(arm_v, float(velocity[NUM_JOINTS]) * self.scale.span))

    def forward_command(self, command) -> float | None:
        """Return the Float64MultiArray value for a JointCommand, None when nothing may go out.

        Only while the robot may move: armed, or a stop in force (the gripper goes to and stays
        at the stop's rest, as command_v1 HOLDs there). Disarmed without a stop: nothing.
        """
        if self.mode != FORWARD_COMMAND or not command.to_robot:
            return None
        gripper = command.rest[NUM_JOINTS] if command.stop else command.gripper
        return self.scale.to_controller(gripper)
