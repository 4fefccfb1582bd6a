"""A ros2_control cell on loopback DDS: /joint_states in, the gripper out, the recorder records.

A helper node plays joint_state_broadcaster (`joint_states` with the UR joint names in its own
order, a Robotiq knuckle in radians and extra joints) and the policy (10 Hz chunks that hold the
arm and ask the gripper for 1.3: out of range, and a step). The chunk_executor node reads the
joint states through its joint map (joint_state_source: joint_states), with no ZMQ robot
anywhere. With gripper_output trajectory_joint every JointTrajectory names the knuckle after
the arm, in radians, and passes joint_trajectory_controller's rules, the stop of a disarm too;
with forward_command the gripper goes out on gripper/commands (Float64MultiArray), inside the
controller's range. The gripper's gate counts gripper_range and gripper_rate; a joint state
that lacks an arm joint is dropped as missing_joint. bag_recorder records joint_states by
default. Waits are bounded waits on conditions.
"""
from __future__ import annotations

import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
import pytest
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import SetBool
from support import wait_for
from trajectory_msgs.msg import JointTrajectory

from vla_insertion import conversions as conv
from vla_insertion.core import bag
from vla_insertion.core.config import BagRecorderConfig
from vla_insertion.core.data import ActionChunkData, SensorWindowData
from vla_insertion.core.executor.trajectory_rules import check_trajectory
from vla_insertion.msg import ActionChunk, ExecutorCommand, SensorWindow
from vla_insertion.nodes.chunk_executor import ChunkExecutorNode
from vla_insertion.ros.qos import DIAGNOSTICS_QOS, qos_profile, ROBOT_QOS, STATE_QOS, WINDOW_QOS
from vla_insertion.tools.bag_recorder import BagRecorderNode

UR = ('shoulder_pan_joint', 'shoulder_lift_joint', 'elbow_joint', 'wrist_1_joint',
      'wrist_2_joint', 'wrist_3_joint')
KNUCKLE = 'robotiq_85_left_knuckle_joint'        # 0 open .. 0.8 rad closed
HOME = np.array([0.1, -1.7, 1.7, -1.6, -1.6, 0.2])
CHANNELS = ('fx', 'fy', 'fz', 'tx', 'ty', 'tz', 'distance')
WAIT_S = 30.0


class Broadcaster(Node):
    """joint_state_broadcaster at 100 Hz (its order, extra joints), windows, 10 Hz chunks."""

    def __init__(self, context) -> None:
        super().__init__('ros2_control_test_cell', context=context)
        self.lock = threading.Lock()
        self.commands: list[ExecutorCommand] = []
        self.trajectories: list[JointTrajectory] = []
        self.gripper_commands: list[float] = []
        self.diagnostics = []
        self.drop_arm_joint = False
        self.gripper_rad = 0.4             # the knuckle follows the armed commands
        self.joints_pub = self.create_publisher(JointState, 'joint_states', ROBOT_QOS)
        self.window_pub = self.create_publisher(SensorWindow, 'sensor/window', WINDOW_QOS)
        self.chunk_pub = self.create_publisher(ActionChunk, 'vla/action_chunk', STATE_QOS)
        self.create_subscription(ExecutorCommand, 'vla/command', self._on_command,
                                 qos_profile('state'))
        self.create_subscription(JointTrajectory, 'robot/joint_trajectory',
                                 self._keep(self.trajectories), qos_profile('state'))
        self.create_subscription(Float64MultiArray, 'gripper/commands',
                                 lambda m: self._keep(self.gripper_commands)(m.data[0]),
                                 qos_profile('state'))
        self.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, DIAGNOSTICS_QOS)
        self.create_timer(0.01, self._publish_joints)
        self.create_timer(1 / 65.0, self._publish_window)
        self.create_timer(0.1, self._publish_chunk)
        self.sequence = 0

    def _keep(self, items: list):
        def append(item) -> None:
            with self.lock:
                items.append(item)
        return append

    def _on_command(self, msg: ExecutorCommand) -> None:
        with self.lock:
            self.commands.append(msg)
            if msg.armed:
                self.gripper_rad = 0.8 * msg.gripper

    def now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _publish_joints(self) -> None:
        positions = dict(zip(UR, HOME))
        positions.update({KNUCKLE: self.gripper_rad, 'robotiq_85_right_knuckle_joint': -0.4,
                          'linear_rail': 1.25})
        names = ['linear_rail', 'elbow_joint', KNUCKLE, 'shoulder_lift_joint',
                 'robotiq_85_right_knuckle_joint', 'shoulder_pan_joint', 'wrist_3_joint',
                 'wrist_2_joint', 'wrist_1_joint']
        if self.drop_arm_joint:
            names.remove('wrist_2_joint')
        msg = JointState(name=names, position=[positions[n] for n in names])
        msg.header.stamp = conv.time_to_msg(self.now_s())
        self.joints_pub.publish(msg)

    def _publish_window(self) -> None:
        self.window_pub.publish(conv.sensor_window_to_msg(SensorWindowData(
            stamp_s=self.now_s(), samples=np.zeros((65, 7), np.float32), valid_samples=65,
            sample_rate_hz=650.0, channel_names=CHANNELS)))

    def _publish_chunk(self) -> None:
        self.sequence += 1
        actions = np.tile(np.r_[HOME, 1.3], (8, 1)).astype(np.float32)   # gripper: too far
        self.chunk_pub.publish(conv.action_chunk_to_msg(ActionChunkData(
            stamp_s=self.now_s(), actions=actions, dt_s=0.1, sequence=self.sequence)))

    def _on_diag(self, msg: DiagnosticArray) -> None:
        with self.lock:
            self.diagnostics += [{kv.key: kv.value for kv in s.values} for s in msg.status
                                 if s.name == 'chunk_executor']

    def copy(self, items: list) -> list:
        with self.lock:
            return list(items)

    def diagnostic(self, key: str) -> int:
        with self.lock:
            return int(self.diagnostics[-1][key]) if self.diagnostics else 0


def executor_node(context, gripper_output: str) -> ChunkExecutorNode:
    params = {'outputs': ['joint_trajectory'], 'joint_state_source': 'joint_states',
              'joint_names': list(UR), 'gripper_joint': KNUCKLE,
              'gripper_closed_position': 0.8, 'gripper_output': gripper_output,
              'start_armed': True,
              # a busy machine may starve the helper's timers: fewer stops for a late input
              'max_robot_age_s': 1.0, 'max_sensor_age_s': 1.0, 'chunk_timeout_s': 2.0}
    return ChunkExecutorNode(context=context, parameter_overrides=[
        Parameter(k, value=v) for k, v in params.items()])


def call_enable(node: Node, data: bool) -> SetBool.Response:
    client = node.create_client(SetBool, '/chunk_executor/enable')
    assert client.wait_for_service(timeout_sec=WAIT_S)
    future = client.call_async(SetBool.Request(data=data))
    assert wait_for(future.done, WAIT_S)
    return future.result()


def armed_until(cell: Broadcaster, predicate) -> bool:
    """Wait for `predicate`, arming again after a stop (a starved helper's inputs go stale)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if predicate():
            return True
        commands = cell.copy(cell.commands)
        if commands and not commands[-1].armed:
            call_enable(cell, True)         # refused while an input is stale: asked again
        time.sleep(0.05)
    return bool(predicate())


def test_joint_states_in_the_gripper_as_a_trajectory_joint_and_the_stop(rclpy_context, spin):
    cell = Broadcaster(rclpy_context)
    spin(executor_node(rclpy_context, 'trajectory_joint'), cell)
    # armed at the first fresh joint state: the arm where the broadcaster says, in action order
    assert wait_for(lambda: any(m.armed for m in cell.copy(cell.commands)), WAIT_S)
    first = next(m for m in cell.copy(cell.commands) if m.armed)
    np.testing.assert_allclose(first.positions, HOME, atol=1e-6)
    assert first.gripper == pytest.approx(0.5, abs=0.01)          # 0.4 rad of 0.8
    assert list(first.joint_names) == list(UR)

    joints = UR + (KNUCKLE,)
    assert armed_until(cell, lambda: any(p.positions[6] > 0.79 for tr in
                                         cell.copy(cell.trajectories) for p in tr.points))
    for msg in cell.copy(cell.trajectories):
        trajectory = conv.joint_trajectory_from_msg(msg)
        assert trajectory.joint_names == joints
        check = check_trajectory(trajectory, joints, trajectory.stamp_s)
        assert check.accepted, check
        knuckle = [p.positions[6] for p in trajectory.points]
        assert min(knuckle) >= 0.4 - 1e-9 and max(knuckle) <= 0.8 + 1e-9   # closing, in range
    assert wait_for(lambda: cell.diagnostic('gate.gripper_range') > 0
                    and cell.diagnostic('gate.gripper_rate') > 0, WAIT_S)

    def stops() -> list:                    # a stop is stamped 0 (on arrival), a plan never
        return [m for m in cell.copy(cell.trajectories) if m.header.stamp.sec == 0
                and m.header.stamp.nanosec == 0]

    before = len(stops())                   # 0, unless a starved helper tripped the watchdog
    assert call_enable(cell, False).success
    assert wait_for(lambda: len(stops()) > before, WAIT_S)
    stop = conv.joint_trajectory_from_msg(stops()[before])
    assert stop.joint_names == joints                               # the stop holds it too
    assert check_trajectory(stop, joints, 0.0).accepted
    np.testing.assert_array_equal(stop.points[-1].velocities, 0.0)

    cell.drop_arm_joint = True              # a broadcaster without wrist_2_joint: refused
    assert wait_for(lambda: cell.diagnostic('drops.missing_joint') > 0, WAIT_S)


def test_the_gripper_on_a_forward_command_controller(rclpy_context, spin):
    cell = Broadcaster(rclpy_context)
    spin(executor_node(rclpy_context, 'forward_command'), cell)
    assert armed_until(cell, lambda: any(v > 0.79 for v in cell.copy(cell.gripper_commands)))
    values = np.array(cell.copy(cell.gripper_commands))
    assert values.min() >= 0.4 - 1e-9 and values.max() <= 0.8 + 1e-9   # from 0.4 rad, in range
    assert all(tr.joint_names == list(UR) for tr in cell.copy(cell.trajectories))
    assert wait_for(lambda: cell.diagnostic('gate.gripper_range') > 0
                    and cell.diagnostic('gate.gripper_rate') > 0, WAIT_S)


def test_the_recorder_records_joint_states_by_default(rclpy_context, tmp_path):
    recorder = BagRecorderNode(BagRecorderConfig(output_dir=str(tmp_path), bag_name='r2c',
                                                 split_duration_s=0.0), context=rclpy_context)
    cell = Broadcaster(rclpy_context)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(recorder)
    executor.add_node(cell)
    try:
        deadline = time.monotonic() + WAIT_S
        while recorder.received['/joint_states'] < 20 and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
    finally:
        executor.shutdown()
        recorder.destroy_node()             # closes the bag
        cell.destroy_node()
    recorded = [msg for topic, _, msg in bag.read_messages(tmp_path / 'r2c')
                if topic == '/joint_states']
    assert len(recorded) >= 20
    assert KNUCKLE in recorded[0].name and 'linear_rail' in recorded[0].name
