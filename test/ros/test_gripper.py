"""The gripper from bytes on the robot wire to the expert's state, a recorded bag and a target.

A ZMQ PUB in the test sends robot_v1 states with gripper 0.8 to a real robot_bridge process;
the joint states it publishes carry a `gripper` entry, which reaches the expert's observation
vector (the node's reader), a bag recorded by bag_recorder, and the training targets built from
that bag.
"""
from __future__ import annotations

from pathlib import Path
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import JointState
import zmq

from vla_insertion import conversions as conv
from vla_insertion.core.bag.recording import load_recording, RecordedInputs
from vla_insertion.core.config import BagRecorderConfig
from vla_insertion.core.expert.policy import robot_state_vector
from vla_insertion.core.train.dataset import tick_targets
from vla_insertion.core.wire import RobotCodecV1, RobotMessage
from vla_insertion.ros.qos import ROBOT_QOS
from vla_insertion.tools.bag_recorder import BagRecorderNode

ROOT = Path(__file__).resolve().parents[2]
GRIPPER = 0.8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def send_states(port: int, stop: threading.Event) -> None:
    """Publish robot_v1 states at ~100 Hz until stopped (bounded by the test's waits)."""
    codec = RobotCodecV1()
    context = zmq.Context(1)
    pub = context.socket(zmq.PUB)
    pub.bind(f'tcp://127.0.0.1:{port}')
    try:
        k = 0
        while not stop.wait(0.01):
            k += 1
            pub.send(codec.encode(RobotMessage(
                sender_time_s=time.time(), joints_deg=(10.0 + 0.01 * k, -90.0, 90.0, 0.0, 45.0,
                                                       0.0),
                position_mm=(400.0, 0.0, 300.0), rotation_deg=(180.0, 0.0, 90.0),
                gripper=GRIPPER, session=7, sequence=k)))
    finally:
        pub.close(linger=0)
        context.term()


def test_gripper_reaches_observation_bag_and_targets(rclpy_context, ros_env, tmp_path):
    port = free_port()
    stop = threading.Event()
    sender = threading.Thread(target=send_states, args=(port, stop), daemon=True)
    sender.start()
    bridge = subprocess.Popen(
        [sys.executable, '-m', 'vla_insertion.nodes.robot_bridge', '--ros-args',
         '-p', f'port:={port}', '-p', 'calibration_batches:=5'],
        env=ros_env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    recorder = BagRecorderNode(BagRecorderConfig(
        output_dir=str(tmp_path), bag_name='robot', split_duration_s=0.0,
        topics=('robot/joint_states', 'robot/pose')), context=rclpy_context)
    listener = Node('gripper_listener', context=rclpy_context)
    got: list[JointState] = []
    listener.create_subscription(JointState, 'robot/joint_states', got.append, ROBOT_QOS)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(recorder)
    executor.add_node(listener)
    try:
        deadline = time.monotonic() + 30.0
        while len(got) < 100 and time.monotonic() < deadline and bridge.poll() is None:
            executor.spin_once(timeout_sec=0.05)
        assert len(got) >= 100, f'{len(got)} joint states (bridge exit {bridge.poll()})'
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and recorder.received['/robot/pose'] < 100:
            executor.spin_once(timeout_sec=0.05)
    finally:
        stop.set()
        bridge.terminate()
        bridge.wait(10.0)
        executor.shutdown()
        recorder.destroy_node()
        listener.destroy_node()

    # the live path: the JointState entry -> the expert's state vector (gripper is last)
    msg = got[-1]
    assert list(msg.name)[-1] == 'gripper'
    state = conv.robot_state_from_msgs(msg)
    assert state.gripper == pytest.approx(GRIPPER)
    assert robot_state_vector(state)[-1] == pytest.approx(GRIPPER)
    assert state.joint_positions_rad[0] == pytest.approx(np.radians(10.0), abs=0.1)

    # the recorded bag -> the offline robot state -> training targets
    rec = load_recording(tmp_path / 'robot', views=())
    inputs = RecordedInputs(rec)
    t = rec.start_s + 0.2
    assert inputs.robot(t).gripper == pytest.approx(GRIPPER)
    targets = tick_targets(inputs, t, horizon=4, dt_s=0.1)
    assert targets is not None and targets.shape == (4, 7)
    np.testing.assert_allclose(targets[:, 6], GRIPPER, atol=1e-6)
