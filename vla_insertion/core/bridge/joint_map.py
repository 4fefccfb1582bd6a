"""ros2_control's joint states -> the robot state the expert and the chunk executor work on.

On a ros2_control cell the robot state comes from joint_state_broadcaster instead of the ZMQ
robot wire (robot_bridge): sensor_msgs/JointState on `joint_states` with every joint of the
controller manager's hardware, in its order, under its names, the gripper in its own units, and
often joints the policy does not know (the gripper's other knuckles, a rail, a mimic joint).
A node with `joint_state_source: joint_states` reads it through a JointStateMap:

    arm       the 6 arm joints in action order, by the names in `joint_names`
    gripper   the joint `gripper_joint`, from [open_position, closed_position] to 0 .. 1
              ('' = the cell reports no gripper: it reads 0)

Every other name is ignored. A message that lacks a joint the map needs is refused with
JointMapError (cause `missing_joint`), one with fewer positions than names too
(`bad_joint_states`); the node counts the cause and says which joint.

The tool pose is not in a JointState: it comes from robot/pose when something publishes it
(robot_bridge from the robot wire, or a pose_broadcaster remapped there) and is otherwise
absent: the expert then refuses its ticks as `no_tool_pose`, the executor needs it only for
a workspace box (docs/bringup.md "ros2_control").

`joint_state_reader(config)` and `joint_state_topic(config)` give a node the reader and the topic
of its configured source; with `robot_bridge` they are robot/joint_states and its reader
(`robot_state_from_msgs`: the arm's joints and the `gripper` entry, 0 .. 1), as before.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from vla_insertion.core import topics
from vla_insertion.core.bag.messages import (
    ConversionError, robot_state_from_joint_states, robot_state_from_msgs)
from vla_insertion.core.data import NUM_JOINTS, RobotState
from vla_insertion.core.executor.gripper import GripperScale

MISSING_JOINT = 'missing_joint'          # a joint the map needs is not in the message
BAD_JOINT_STATES = 'bad_joint_states'    # the message does not read (sizes)
CAUSES = (BAD_JOINT_STATES, MISSING_JOINT)
NO_POSE_POSITION = np.zeros(3)                     # a JointState carries no tool pose
NO_POSE_ORIENTATION = np.array([0.0, 0.0, 0.0, 1.0])


class JointMapError(ConversionError):
    """A joint state the map cannot read; `cause` is one of CAUSES."""

    def __init__(self, cause: str, detail: str) -> None:
        super().__init__(f'{cause}: {detail}')
        self.cause = cause


@dataclass(frozen=True)
class JointStateMap:
    """Which names of a ros2_control JointState are the arm's joints and the gripper."""

    arm: tuple[str, ...]           # the 6 arm joints in action order, named as the joint states
    gripper: GripperScale          # the gripper joint and its units (joint '' = none)

    def __post_init__(self) -> None:
        if len(self.arm) != NUM_JOINTS or len(set(self.arm)) != NUM_JOINTS \
                or self.gripper.joint in self.arm:
            raise ValueError(f'a joint map needs {NUM_JOINTS} distinct arm joints and another '
                             f'gripper joint, got {list(self.arm)} and {self.gripper.joint!r}')

    @classmethod
    def from_config(cls, config) -> JointStateMap:
        """From a config's joint_names, gripper_joint and gripper_*_position (Expert, Executor)."""
        return cls(tuple(config.joint_names), GripperScale(
            config.gripper_joint, config.gripper_open_position, config.gripper_closed_position))

    @property
    def needed(self) -> tuple[str, ...]:
        """The names a joint state must hold: the arm's and the gripper's (if any)."""
        return self.arm + ((self.gripper.joint,) if self.gripper.joint else ())

    def robot_state(self, stamp_s: float, names: Sequence[str],
                    positions: Sequence[float]) -> RobotState:
        """Return the robot state of one joint state (its tool pose left out); see the module."""
        names = list(names)
        positions = np.asarray(positions, dtype=np.float64).reshape(-1)
        if positions.size < len(names):
            raise JointMapError(BAD_JOINT_STATES,
                                f'{len(names)} names but {positions.size} positions')
        index = {}
        for i, name in enumerate(names):
            index.setdefault(name, i)              # the first of a repeated name
        missing = [n for n in self.needed if n not in index]
        if missing:
            raise JointMapError(MISSING_JOINT, f'no {missing} among the joint states '
                                f'{names}; joint_names and gripper_joint name them')
        gripper = (self.gripper.from_controller(positions[index[self.gripper.joint]])
                   if self.gripper.joint else 0.0)
        return RobotState(stamp_s=float(stamp_s),
                          joint_positions_rad=positions[[index[n] for n in self.arm]],
                          tool_position_m=NO_POSE_POSITION.copy(),
                          tool_orientation_xyzw=NO_POSE_ORIENTATION.copy(),
                          gripper=gripper,
                          joint_names=self.arm)


def joint_state_topic(config) -> topics.Topic:
    """Return the topic a node reads its joint states from: robot/joint_states or joint_states."""
    return topics.JOINT_STATES if config.joint_state_source == 'robot_bridge' \
        else topics.ROS2_JOINT_STATES


def joint_state_reader(config) -> Callable[[object], RobotState]:
    """Return the reader JointState -> RobotState of the config's joint_state_source.

    Raises ConversionError (JointMapError for the map's refusals).
    """
    if config.joint_state_source == 'robot_bridge':
        return robot_state_from_msgs
    joint_map = JointStateMap.from_config(config)
    return lambda msg: robot_state_from_joint_states(msg, joint_map)
