"""The chunk_executor node on real DDS and a real ZMQ socket standing in for the robot PC.

A helper node publishes the robot's joint states, sensor windows and 10 Hz action chunks that
move joint_1 slowly; a ZMQ PULL socket bound on a free port is the robot PC. Disarmed, the node
publishes its preview on vla/command and sends nothing to the robot; enabled, command_v1
messages arrive ARMED and follow the chunks, a JointTrajectory goes out for ros2_control; when
the chunks stop the watchdog holds; a force over the hard limit latches a fault until
~/reset_fault. Waits are bounded waits on conditions.
"""
from __future__ import annotations

import socket
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
import pytest
from rclpy.node import Node
from rclpy.parameter import Parameter
from std_srvs.srv import SetBool, Trigger
from support import spinning
from trajectory_msgs.msg import JointTrajectory
import zmq

from vla_insertion import conversions as conv
from vla_insertion.core.data import ActionChunkData, RobotState, SensorWindowData
from vla_insertion.core.wire import CommandCodecV1, WireError
from vla_insertion.msg import ActionChunk, ExecutorCommand, SensorWindow
from vla_insertion.nodes.chunk_executor import ChunkExecutorNode
from vla_insertion.ros.qos import DIAGNOSTICS_QOS, qos_profile, ROBOT_QOS, STATE_QOS, WINDOW_QOS

CHANNELS = ('fx', 'fy', 'fz', 'tx', 'ty', 'tz', 'distance')
HOME = np.array([0.0, -1.7, 1.7, -1.6, -1.6, 0.0])
WAIT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Robot:
    """The robot PC's side of command_v1: a PULL socket that keeps what it received."""

    def __init__(self, port: int) -> None:
        self.context = zmq.Context(1)
        self.pull = self.context.socket(zmq.PULL)
        self.pull.bind(f'tcp://127.0.0.1:{port}')
        self.codec = CommandCodecV1()
        self.received = []
        self.bad = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            if self.pull.poll(50):
                try:
                    self.received.append(self.codec.decode(self.pull.recv()))
                except WireError:
                    self.bad += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5.0)
        self.pull.close(linger=0)
        self.context.term()


class Cell(Node):
    """Joint states at 100 Hz, sensor windows at 65 Hz, 10 Hz chunks while `chunks` is set."""

    def __init__(self, context) -> None:
        super().__init__('executor_test_cell', context=context)
        self.lock = threading.Lock()
        self.commands: list[ExecutorCommand] = []
        self.trajectories: list[JointTrajectory] = []
        self.diagnostics = []
        self.chunks = threading.Event()
        self.force = 0.0
        self.q = HOME.copy()
        self.joints_pub = self.create_publisher(conv.JointState, 'robot/joint_states', ROBOT_QOS)
        self.window_pub = self.create_publisher(SensorWindow, 'sensor/window', WINDOW_QOS)
        self.chunk_pub = self.create_publisher(ActionChunk, 'vla/action_chunk', STATE_QOS)
        self.create_subscription(ExecutorCommand, 'vla/command', self._on_command,
                                 qos_profile('state'))
        self.create_subscription(JointTrajectory, 'robot/joint_trajectory',
                                 self.trajectories.append, qos_profile('state'))
        self.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, DIAGNOSTICS_QOS)
        self.create_timer(0.01, self._publish_state)
        self.create_timer(1 / 65.0, self._publish_window)
        self.create_timer(0.1, self._publish_chunk)
        self.sequence = 0

    def now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _publish_state(self) -> None:
        joints, _ = conv.robot_state_to_msgs(RobotState(
            stamp_s=self.now_s(), joint_positions_rad=self.q, tool_position_m=np.zeros(3),
            tool_orientation_xyzw=np.array([0, 0, 0, 1.0]), gripper=1.0))
        self.joints_pub.publish(joints)

    def _publish_window(self) -> None:
        samples = np.zeros((65, 7), np.float32)
        samples[:, 2] = self.force
        self.window_pub.publish(conv.sensor_window_to_msg(SensorWindowData(
            stamp_s=self.now_s(), samples=samples, valid_samples=65, sample_rate_hz=650.0,
            channel_names=CHANNELS)))

    def _publish_chunk(self) -> None:
        if not self.chunks.is_set():
            return
        self.sequence += 1
        now = self.now_s()
        actions = np.tile(np.r_[HOME, 1.0], (8, 1)).astype(np.float32)
        actions[:, 0] = 0.05 * np.sin(0.5 * (now + 0.1 * np.arange(8)))   # joint_1 moves
        self.chunk_pub.publish(conv.action_chunk_to_msg(ActionChunkData(
            stamp_s=now, actions=actions, dt_s=0.1, sequence=self.sequence)))

    def _on_command(self, msg: ExecutorCommand) -> None:
        with self.lock:
            self.commands.append(msg)

    def _on_diag(self, msg: DiagnosticArray) -> None:
        with self.lock:
            self.diagnostics += [s for s in msg.status if s.name == 'chunk_executor']

    def since(self, n: int) -> list[ExecutorCommand]:
        with self.lock:
            return self.commands[n:]


def wait_for(predicate, timeout_s: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def call(node: Node, srv_type, name: str, request, timeout_s: float = WAIT_S):
    client = node.create_client(srv_type, name)
    assert client.wait_for_service(timeout_sec=timeout_s), name
    future = client.call_async(request)
    assert wait_for(future.done, timeout_s), f'{name} did not answer'
    return future.result()


@pytest.fixture
def setup(rclpy_context):
    port = free_port()
    robot = Robot(port)
    node = ChunkExecutorNode(context=rclpy_context, parameter_overrides=[
        Parameter('command_port', value=port),
        Parameter('outputs', value=['command_v1', 'joint_trajectory']),
        Parameter('joint_limits.joint_1.max_velocity', value=0.5)])
    cell = Cell(rclpy_context)
    with spinning(rclpy_context, node, cell):
        yield node, cell, robot
    robot.close()


def test_disarmed_previews_enabled_sends_watchdog_holds(setup):
    node, cell, robot = setup
    cell.chunks.set()
    assert wait_for(lambda: sum(m.chunk_sequence >= 0 for m in cell.since(0)) >= 50)
    preview = [m for m in cell.since(0) if m.chunk_sequence >= 0]
    assert not any(m.armed or m.sent for m in preview)
    assert robot.received == [], 'a disarmed executor sent commands to the robot'
    assert cell.trajectories == [], 'a disarmed executor sent a trajectory'
    assert node.get_parameter('joint_limits.joint_1.max_velocity').value == 0.5

    # arming is refused while the robot state is stale (right): on a loaded machine the test's
    # publisher can fall behind, so ask again until fresh state lets it arm
    assert wait_for(lambda: call(cell, SetBool, '/chunk_executor/enable',
                                 SetBool.Request(data=True)).success)
    assert wait_for(lambda: len(robot.received) >= 50), len(robot.received)
    armed = [m for m in robot.received if m.armed]
    assert armed and robot.bad == 0
    following = [m for m in armed if not m.hold]
    assert following, 'no command followed the chunks'
    for m in following:
        assert abs(m.positions_rad[0]) <= 0.05 + 1e-6            # the chunks' range
        np.testing.assert_allclose(m.positions_rad[1:], HOME[1:], atol=1e-3)
        assert abs(m.velocities_rad_s[0]) <= 0.5 + 1e-6          # joint_limits from params
    assert wait_for(lambda: len(cell.trajectories) >= 1)
    trajectory = cell.trajectories[-1]
    assert list(trajectory.joint_names) == [f'joint_{i}' for i in range(1, 7)]
    assert trajectory.points and np.allclose(trajectory.points[-1].velocities, 0.0)

    cell.chunks.clear()                                           # the policy stops
    n = len(cell.since(0))
    assert wait_for(lambda: any('watchdog' in m.interventions for m in cell.since(n)))
    assert wait_for(lambda: robot.received[-1].hold)


def test_force_over_the_hard_limit_latches_a_fault_until_reset(setup):
    node, cell, robot = setup
    cell.chunks.set()
    assert wait_for(lambda: any(m.chunk_sequence >= 0 for m in cell.since(0)))   # previewing
    assert call(cell, SetBool, '/chunk_executor/enable', SetBool.Request(data=True)).success
    assert wait_for(lambda: any(m.sent for m in cell.since(0)))
    cell.force = 100.0                                            # N, hard limit 40 N
    assert wait_for(lambda: any(m.fault for m in cell.since(0)))
    assert wait_for(lambda: any(s.level == s.ERROR for s in cell.diagnostics))
    with cell.lock:
        values = {kv.key: kv.value for kv in cell.diagnostics[-1].values}
    assert int(values['gate.force_limit']) > 0
    assert robot.received[-1].hold
    cell.force = 0.0
    n = len(cell.since(0))
    assert wait_for(lambda: len(cell.since(n)) >= 20)             # the fault stays latched
    assert all(m.fault and m.hold for m in cell.since(n))
    # reset, as an operator would, until a window without the force has reached the gate
    # (a reset while the old window is the newest latches again)
    deadline = time.monotonic() + WAIT_S
    resumed = False
    while not resumed and time.monotonic() < deadline:
        n = len(cell.since(0))
        assert call(cell, Trigger, '/chunk_executor/reset_fault', Trigger.Request()).success
        # the stop disarmed it: nothing moves until it is armed again
        call(cell, SetBool, '/chunk_executor/enable', SetBool.Request(data=True))
        resumed = wait_for(lambda: any(not m.fault and m.sent and m.armed and not m.hold
                                       for m in cell.since(n)), 2.0)
    assert resumed
