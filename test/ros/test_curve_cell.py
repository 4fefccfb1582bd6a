"""The cell's three ZMQ links with CURVE keys, end to end: sim_cell and the real nodes.

`cell_keys generate` writes the keys; sim_cell (a subprocess: camera sender, robot PC) and the
camera bridge, robot bridge and chunk executor (in this process) all get the folder. Frames
reach cameras/oak/image/compressed, states reach robot/joint_states, and the executor's
command_v1 moves the simulated arm, seen in the joint states: every link carries data only
through CURVE. A subscriber without keys, on the same robot port, hears nothing (its
handshake fails); test/unit/wire/test_curve.py tries every wrong key on every link.
"""
from __future__ import annotations

from pathlib import Path
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage, JointState
from support import free_port
import zmq
from zmq.utils.monitor import recv_monitor_message

from vla_insertion import conversions as conv
from vla_insertion.core.data import ActionChunkData
from vla_insertion.msg import ActionChunk
from vla_insertion.nodes.camera_bridge import CameraBridgeNode
from vla_insertion.nodes.chunk_executor import ChunkExecutorNode
from vla_insertion.nodes.robot_bridge import RobotBridgeNode
from vla_insertion.ros.qos import ROBOT_QOS, SENSOR_QOS, STATE_QOS

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 60.0
STEP_RAD = 0.08              # joint_1 target above where the arm was first seen


@pytest.fixture(scope='module')
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp('cell') / 'keys'
    result = subprocess.run([sys.executable, '-m', 'vla_insertion.tools.cell_keys', 'generate',
                             str(folder)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return folder


@pytest.fixture(scope='module')
def ports():
    return {name: free_port(socket.SOCK_DGRAM if name == 'sensor' else socket.SOCK_STREAM)
            for name in ('camera', 'robot', 'sensor', 'command', 'episode')}


@pytest.fixture(scope='module')
def sim(ros_env, keys, ports, tmp_path_factory):
    log = tmp_path_factory.mktemp('sim') / 'sim_cell.log'
    proc = subprocess.Popen(
        [sys.executable, '-m', 'vla_insertion.tools.sim_cell', '--curve-keys-dir', str(keys),
         '--streams', 'cameras', 'robot', '--view-names', 'oak', '--wrist-views', 'oak',
         '--width', '64', '--height', '48', '--camera-fps', '5', '--robot-rate-hz', '50',
         '--episode-timeout-s', '300', '--camera-port', str(ports['camera']),
         '--robot-port', str(ports['robot']), '--sensor-port', str(ports['sensor']),
         '--command-port', str(ports['command']), '--episode-port', str(ports['episode'])],
        cwd=ROOT, env=ros_env, stdout=open(log, 'w'), stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        print(log.read_text()[-3000:])


class Operator(Node):
    """Collects frames and joint states; sends chunks that move joint_1 once it knows where."""

    def __init__(self, context) -> None:
        super().__init__('curve_test_operator', context=context)
        self.frames: list[CompressedImage] = []
        self.joints: list[np.ndarray] = []
        self.create_subscription(CompressedImage, 'cameras/oak/image/compressed',
                                 self.frames.append, SENSOR_QOS)
        self.create_subscription(JointState, 'robot/joint_states', self._on_joints, ROBOT_QOS)
        self._chunks = self.create_publisher(ActionChunk, 'vla/action_chunk', STATE_QOS)
        self.create_timer(0.1, self._send_chunk)
        self._sequence = 0

    def _on_joints(self, msg: JointState) -> None:
        self.joints.append(np.array(msg.position[:6]))

    def _send_chunk(self) -> None:
        if not self.joints:
            return
        target = np.r_[self.joints[0], 0.0].astype(np.float32)
        target[0] += STEP_RAD
        self._sequence += 1
        self._chunks.publish(conv.action_chunk_to_msg(ActionChunkData(
            stamp_s=self.get_clock().now().nanoseconds * 1e-9, actions=np.tile(target, (8, 1)),
            dt_s=0.1, sequence=self._sequence)))

    def moved_rad(self) -> float:
        return float(self.joints[-1][0] - self.joints[0][0]) if self.joints else 0.0


def test_camera_robot_and_command_links_carry_data_only_through_curve(
        rclpy_context, sim, keys, ports, spin_until):
    curve = Parameter('curve_keys_dir', value=str(keys))
    nodes = [
        CameraBridgeNode(context=rclpy_context, parameter_overrides=[
            curve, Parameter('port', value=ports['camera']),
            Parameter('view_names', value=['oak'])]),
        RobotBridgeNode(context=rclpy_context, parameter_overrides=[
            curve, Parameter('port', value=ports['robot'])]),
        ChunkExecutorNode(context=rclpy_context, parameter_overrides=[
            curve, Parameter('command_port', value=ports['command']),
            Parameter('start_armed', value=True), Parameter('require_sensor', value=False)]),
        Operator(rclpy_context)]
    operator = nodes[-1]
    executor = SingleThreadedExecutor(context=rclpy_context)
    for node in nodes:
        executor.add_node(node)
    stranger_context = zmq.Context(1)
    stranger = stranger_context.socket(zmq.SUB)           # no keys, on the robot link
    stranger.subscribe(b'')
    monitor = stranger.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
    stranger.connect(f'tcp://127.0.0.1:{ports["robot"]}')
    try:
        assert spin_until(executor, lambda: len(operator.frames) >= 3 and operator.joints,
                          WAIT_S), 'frames and states through the CURVE camera and robot links'
        assert spin_until(executor, lambda: operator.moved_rad() > STEP_RAD / 2, WAIT_S), (
            f'the arm moved {operator.moved_rad():.4f} rad: commands through the command link')
        assert monitor.poll(int(WAIT_S * 1000)), "the stranger's handshake fails"
        assert recv_monitor_message(monitor)['event'] == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        assert not stranger.poll(0), 'no robot state for a subscriber without keys'
        assert sim.poll() is None, 'sim_cell runs'
    finally:
        stranger.disable_monitor()
        monitor.close(0)
        stranger.close(0)
        stranger_context.term()
        executor.shutdown()
        for node in nodes:
            node.destroy_node()
