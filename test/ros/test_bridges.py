"""sim_cell and the three bridges on loopback: topics, units, stamps, windows, and faults.

The bridges and the simulated cell run as subprocesses on free ports (never the defaults, so a
running demo cannot interfere) in this module's ROS domain; a listener node in the test
process checks what comes out.
"""
from collections import defaultdict
import io
import json
import os
from pathlib import Path
import signal
import socket
import subprocess
import sys
import time

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
import numpy as np
from PIL import Image
import pytest
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, JointState

from vla_insertion.conversions import sensor_window_from_msg, time_from_msg
from vla_insertion.core.sim.kinematics import forward_kinematics
from vla_insertion.msg import SensorWindow
from vla_insertion.ros.qos import DIAGNOSTICS_QOS, SENSOR_QOS, STATE_QOS, WINDOW_QOS

ROOT = Path(__file__).resolve().parents[2]
VIEWS = ['zed_1', 'zed_2', 'oak']
WIDTH, HEIGHT = 320, 180
# cheap on a shared machine; the full-rate numbers are in the benchmarks
SIM_ARGS = ['--view-names', *VIEWS, '--width', str(WIDTH), '--height', str(HEIGHT),
            '--camera-fps', '10', '--jpeg-quality', '60']


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def env(ros_env):
    env = dict(ros_env)
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(ROOT), env.get('PYTHONPATH')]))
    return env


@pytest.fixture(scope='module')
def ports():
    return {'camera': free_port(socket.SOCK_STREAM), 'robot': free_port(socket.SOCK_STREAM),
            'sensor': free_port(socket.SOCK_DGRAM), 'command': free_port(socket.SOCK_STREAM),
            'episode': free_port(socket.SOCK_STREAM)}


def _stop(proc: subprocess.Popen, timeout_s: float = 10.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5.0)
    return proc.returncode


@pytest.fixture(scope='module')
def bridges(env, ports, tmp_path_factory):
    logs = tmp_path_factory.mktemp('bridges')
    views = '[' + ', '.join(repr(v) for v in VIEWS) + ']'
    specs = {
        'camera_bridge': ['-p', f'port:={ports["camera"]}', '-p', f'view_names:={views}'],
        'robot_bridge': ['-p', f'port:={ports["robot"]}'],
        'sensor_bridge': ['-p', f'port:={ports["sensor"]}'],
    }
    procs = {}
    try:
        for name, params in specs.items():
            procs[name] = subprocess.Popen(
                [sys.executable, '-m', f'vla_insertion.nodes.{name}', '--ros-args', *params],
                env=env, cwd=ROOT, stdout=open(logs / f'{name}.log', 'w'),
                stderr=subprocess.STDOUT)
        yield procs
    finally:
        codes = {name: _stop(p) for name, p in procs.items()}
        for name in procs:
            print(f'--- {name} (exit {codes[name]})\n{(logs / f"{name}.log").read_text()[-3000:]}')
    assert codes == dict.fromkeys(procs, 0), 'a bridge did not shut down cleanly on SIGINT'


def start_sim(env, ports, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, '-m', 'vla_insertion.tools.sim_cell', '--camera-port',
         str(ports['camera']), '--robot-port', str(ports['robot']), '--sensor-port',
         str(ports['sensor']), '--command-port', str(ports['command']), '--episode-port',
         str(ports['episode']), *SIM_ARGS, *args],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


class Listener:
    """Subscribes to every bridge output and keeps (receive time, message) per topic."""

    def __init__(self, context):
        self.node = Node('bridges_test_listener', context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.got = defaultdict(list)
        self.diagnostics = {}
        for view in VIEWS:
            topic = f'cameras/{view}/image/compressed'
            self._subscribe(CompressedImage, topic, SENSOR_QOS)
        self._subscribe(JointState, 'robot/joint_states', STATE_QOS)
        self._subscribe(PoseStamped, 'robot/pose', STATE_QOS)
        self._subscribe(SensorWindow, 'sensor/window', WINDOW_QOS)
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag,
                                      DIAGNOSTICS_QOS)

    def _subscribe(self, msg_type, topic, qos):
        self.node.create_subscription(
            msg_type, topic, lambda m, t=topic: self.got[t].append((time.time(), m)), qos)

    def _on_diag(self, msg):
        for status in msg.status:
            self.diagnostics[status.hardware_id.lstrip('/')] = (
                status.level, status.message, {kv.key: kv.value for kv in status.values})

    def counter(self, node, key) -> int:
        return int(self.diagnostics.get(node, (0, '', {}))[2].get(key, 0))

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()


@pytest.fixture(scope='module')
def listener(rclpy_context, bridges):
    listener = Listener(rclpy_context)
    yield listener
    listener.close()


def test_streams_topics_units_stamps_and_windows(listener, env, ports, spin_until):
    # the bridges listen before the cell sends: what a sender sends before that is lost, and
    # counted (its sequence numbers start at 0), so the no-loss checks below need it
    assert spin_until(listener.executor, lambda: len(listener.diagnostics) == 3, 30.0)
    sim = start_sim(env, ports)
    try:
        def enough():
            return (all(len(listener.got[f'cameras/{v}/image/compressed']) >= 15 for v in VIEWS)
                    and len(listener.got['robot/joint_states']) >= 150
                    and len(listener.got['sensor/window']) >= 100
                    and sensor_window_from_msg(listener.got['sensor/window'][-1][1]).complete
                    and len(listener.diagnostics) == 3)
        assert spin_until(listener.executor, enough, timeout_s=40.0), \
            {k: len(v) for k, v in listener.got.items()}
    finally:
        assert _stop(sim) == 0, sim.stdout.read()

    # cameras: one topic per view, real JPEGs of the configured size, capture-time stamps
    for view in VIEWS:
        frames = listener.got[f'cameras/{view}/image/compressed']
        _, msg = frames[-1]
        assert msg.format == 'jpeg' and msg.header.frame_id == view
        assert Image.open(io.BytesIO(bytes(msg.data))).size == (WIDTH, HEIGHT)
        _check_stamps(frames, max_age_s=1.0)

    # robot: radians and metres, the pose is the forward kinematics of the joints
    joints = listener.got['robot/joint_states']
    poses = {time_from_msg(m.header.stamp): m for _, m in listener.got['robot/pose']}
    _check_stamps(joints, max_age_s=0.5)
    _, last = joints[-1]
    assert list(last.name) == [f'joint_{i}' for i in range(1, 7)] + ['gripper']
    assert 0.0 <= last.position[6] <= 1.0                              # gripper, 0 open
    q = np.array(last.position[:6])
    assert np.abs(q).max() < 2 * np.pi and np.abs(q).max() > 1.0      # rad, not degrees
    matched = [(np.array(j.position[:6]), poses[time_from_msg(j.header.stamp)])
               for _, j in joints if time_from_msg(j.header.stamp) in poses]
    assert len(matched) > 50
    for q, pose in matched[-20:]:
        p, o = pose.pose.position, pose.pose.orientation
        tip = forward_kinematics(q)[7, :3, 3]
        np.testing.assert_allclose([p.x, p.y, p.z], tip, atol=2e-3)   # m; 2 mm: 0.002 deg noise
        assert np.linalg.norm([o.x, o.y, o.z, o.w]) == pytest.approx(1.0, abs=1e-9)
        assert pose.header.frame_id == 'base_link'

    # sensor: 65 x 7 windows, one per 10-sample batch, newest sample ~ now
    windows = listener.got['sensor/window']
    _check_stamps(windows, max_age_s=0.5)
    window = sensor_window_from_msg(windows[-1][1])
    assert window.samples.shape == (65, 7) and window.valid_samples == 65
    assert window.channel_names == ('fx', 'fy', 'fz', 'tx', 'ty', 'tz', 'distance')
    assert window.sample_rate_hz == 650.0 and window.clock_calibrated
    assert np.isfinite(window.samples).all()
    assert 0.0 <= window.samples[:, 6].min() and window.samples[:, 6].max() < 0.5   # [m]
    steps = np.diff([time_from_msg(m.header.stamp) for _, m in windows[-60:]])
    assert np.median(steps) == pytest.approx(10 / 650.0, rel=0.2)     # 10 samples per window
    assert window.gap_samples == 0 and window.late_samples == 0

    for node in ('camera_bridge', 'robot_bridge', 'sensor_bridge'):
        assert listener.counter(node, 'dropped') == 0, listener.diagnostics[node]


def _check_stamps(received, max_age_s):
    stamps = np.array([time_from_msg(m.header.stamp) for _, m in received])
    ages = np.array([t for t, _ in received]) - stamps
    assert (np.diff(stamps) >= 0).all(), 'stamps went backwards'
    assert np.median(ages) < max_age_s and ages.min() > -0.05, (np.median(ages), ages.min())


def test_every_injected_fault_is_counted_and_the_bridges_keep_publishing(
        listener, env, ports, spin_until, tmp_path):
    report_path = tmp_path / 'faults.json'
    nodes = {'cameras': 'camera_bridge', 'robot': 'robot_bridge', 'sensor': 'sensor_bridge'}
    assert spin_until(listener.executor, lambda: len(listener.diagnostics) == 3, 10.0)
    keys = ('drops.bad_magic', 'drops.truncated', 'drops.oversized', 'drops.non_finite',
            'drops.late', 'sender_restarts')
    baseline = {n: {k: listener.counter(n, k) for k in keys} for n in nodes.values()}
    sim = start_sim(env, ports, '--faults', '--fault-period-s', '0.25', '--duration-s', '7',
                    '--fault-report', str(report_path))
    try:
        assert spin_until(listener.executor, lambda: sim.poll() is not None, 40.0)
        end = time.time()
    finally:
        assert _stop(sim) == 0, sim.stdout.read()
    report = json.loads(report_path.read_text())
    expected = {
        nodes[stream]: {report['expected_cause'][kind]: n for kind, n in kinds.items()}
        for stream, kinds in report['injected'].items()}
    for node, counts in expected.items():
        assert all(n >= 1 for n in counts.values()), f'{node}: not every fault injected: {counts}'
        counts['sender_restarts'] += 1      # this sim process replaced the previous test's

    def counted():
        return {n: {k: listener.counter(n, k) - baseline[n][k] for k in keys} for n in expected}
    spin_until(listener.executor, lambda: counted() == expected, timeout_s=6.0)
    assert counted() == expected

    # still publishing through the faults: every topic has messages from the last second
    for topic, received in listener.got.items():
        assert received[-1][0] > end - 1.5, f'{topic} stopped during the faults'


@pytest.mark.parametrize('name,param', [('camera_bridge', 'wire_format:=sensor_v1'),
                                        ('sensor_bridge', 'window_size:=0')])
def test_invalid_parameter_is_a_fatal_configuration_error(env, name, param):
    result = subprocess.run(
        [sys.executable, '-m', f'vla_insertion.nodes.{name}', '--ros-args', '-p', param],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert 'invalid configuration' in result.stdout + result.stderr
