"""A node's ros2_control side: the joint states of its configured source, the gripper command.

    JointStateInput(node, config, deliver, drops, lock=None)
        subscribes robot/joint_states (joint_state_source: robot_bridge) or ros2_control's
        joint_states (joint_states, read through core/bridge/joint_map.py) and delivers each
        as a RobotState (under `lock` if given); one that does not read is counted in
        `drops` under its cause (`missing_joint`, `bad_joint_states`) with a throttled
        warning naming the joint
    GripperCommand(node, config)
        gripper_output: forward_command: publishes the gripper's position in the controller's
        units (std_msgs/Float64MultiArray [position]) on gripper/commands each control step
        while the robot may move (core/executor/gripper.py); otherwise nothing
    joint_state_source(config, put) -> (JointState, topic, put, reader)
        the action expert's subscription to the same source with the same reader; it holds
        what does not read as Malformed, so that its ticks say why they refuse

docs/bringup.md "ros2_control" says how a cell sets them up.
"""
from __future__ import annotations

from collections.abc import Callable
import contextlib
import threading

from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray

from vla_insertion.core import topics
from vla_insertion.core.bridge.joint_map import (
    BAD_JOINT_STATES, CAUSES, joint_state_reader, joint_state_topic)
from vla_insertion.core.data import RobotState
from vla_insertion.core.executor.gripper import FORWARD_COMMAND, GripperOutput
from vla_insertion.core.health import DropCounter
from vla_insertion.ros.qos import publisher, subscription

JOINT_STATE_DROPS = CAUSES          # what JointStateInput counts: bad_joint_states, missing_joint


def joint_state_source(config, put: Callable) -> tuple[type, topics.Topic, Callable, Callable]:
    """Return (message type, topic, put, reader) of the config's joint_state_source."""
    return JointState, joint_state_topic(config), put, joint_state_reader(config)


class JointStateInput:
    """The configured joint-state source, read into RobotStates; see the module docstring."""

    def __init__(self, node: Node, config, deliver: Callable[[RobotState], object],
                 drops: DropCounter, lock: threading.Lock | None = None) -> None:
        self._read = joint_state_reader(config)
        self._deliver, self._drops, self._logger = deliver, drops, node.get_logger()
        self._lock = lock if lock is not None else contextlib.nullcontext()
        self.topic = joint_state_topic(config)
        self._subscription = subscription(node, JointState, self.topic, self._on_message)

    def _on_message(self, msg: JointState) -> None:
        try:
            state = self._read(msg)
        except ValueError as exc:       # ConversionError, JointMapError (its cause)
            cause = getattr(exc, 'cause', BAD_JOINT_STATES)
            self._drops.count(cause)
            self._logger.warning(f'{self.topic.name}: {exc}', throttle_duration_sec=2.0)
            return
        with self._lock:
            self._deliver(state)


class GripperCommand:
    """gripper/commands for a forward_command_controller, when gripper_output says so."""

    def __init__(self, node: Node, config) -> None:
        self._output = GripperOutput.from_config(config)
        self._publisher = (publisher(node, Float64MultiArray, topics.GRIPPER_COMMAND)
                           if self._output.mode == FORWARD_COMMAND else None)
        self.published = 0

    def publish(self, command) -> bool:
        """Publish the gripper of one JointCommand if it may go out; return whether it did."""
        value = self._output.forward_command(command) if self._publisher is not None else None
        if value is None:
            return False
        self._publisher.publish(Float64MultiArray(data=[value]))
        self.published += 1
        return True
