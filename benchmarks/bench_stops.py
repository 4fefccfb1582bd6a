"""Stops on the wire: from each trigger to the braking on robot/joint_trajectory and command_v1.

Runs the chunk_executor node as its own process (as the launch file does) with both outputs.
This script is the rest of the cell: the robot PC (a ZMQ PULL socket on the command port; its
arm goes where the ARMED commands it receives say, and the joint states it publishes at 100 Hz
echo that), the sensor (windows at 65 Hz), the policy (10 Hz chunks moving joint_1 at up to
0.3 rad/s) and joint_trajectory_controller's place on robot/joint_trajectory (every stop is
checked against its rules, core/executor/trajectory_rules.py). Each trigger is repeated --count
times while the arm follows; the event time is taken here, on the same monotonic clock as the
arrivals:

    disarm                ~/enable false: just before the service request goes out
    estop                 safety/estop true: just before it is published
    deadman               the operator lets go: just before a false safety/heartbeat is
                          published (the node runs with deadman_timeout_s; true at 20 Hz)
    force_limit           an impact of |F| = 104 N (hard limit 40 N) in the windows of 100 ms:
                          just before the first such window is published
    watchdog              the chunks stop: the newest chunk's publication + chunk_timeout_s
    robot_state_too_old   the joint states stop: the newest state's stamp + max_robot_age_s

and the delay to the first stop trajectory (stamp 0, a point every control period) and to the
first HOLD message after it. The watchdog's and the stale state's delays include the DDS hop of
the newest chunk or state (the executor counts from their arrival); a disarm's includes the
service round trip. After each stop the cell recovers (e-stop released and reset_fault,
heartbeat, chunks or states again, then re-arm: every stop disarms) and follows for --settle
seconds before the next.

    python benchmarks/bench_stops.py                      # 20 stops per trigger
    python benchmarks/bench_stops.py --count 3 --triggers disarm watchdog
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from report import print_table, write_json  # noqa: E402, I100

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402, I100
import rclpy  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from std_msgs.msg import Bool  # noqa: E402
from std_srvs.srv import SetBool, Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402
import zmq  # noqa: E402

from vla_insertion import conversions as conv  # noqa: E402
from vla_insertion.core.config import ExecutorConfig  # noqa: E402
from vla_insertion.core.data import (  # noqa: E402
    ActionChunkData, RobotState, SensorWindowData)
from vla_insertion.core.distro import localhost_discovery  # noqa: E402
from vla_insertion.core.executor import check_trajectory  # noqa: E402
from vla_insertion.core.ticker import DeadlineTicker  # noqa: E402
from vla_insertion.core.wire import CommandCodecV1  # noqa: E402
from vla_insertion.msg import ActionChunk, SensorWindow  # noqa: E402
from vla_insertion.ros.qos import (  # noqa: E402
    DIAGNOSTICS_QOS, qos_profile, ROBOT_QOS, STATE_QOS, WINDOW_QOS)

TRIGGERS = ('disarm', 'estop', 'deadman', 'force_limit', 'watchdog', 'robot_state_too_old')
DEADMAN_TIMEOUT_S = 0.5    # the node's deadman_timeout_s; the heartbeat comes at 20 Hz
HOME = np.array([0.0, -1.7, 1.7, -1.6, -1.6, 0.0])
CHANNELS = ('fx', 'fy', 'fz', 'tx', 'ty', 'tz', 'distance')
WORK = ROOT / 'artifacts' / 'benchmarks' / 'stops'


class Cell(Node):
    """Robot PC, sensor, policy and the controller's subscription, on monotonic time."""

    def __init__(self, port: int, joints: tuple[str, ...]) -> None:
        super().__init__('bench_stops_cell')
        self.joints = joints
        self.lock = threading.Lock()
        self.q = HOME.copy()
        self.impact_until, self.impact_at = -np.inf, None   # monotonic [s]
        self.states = threading.Event()
        self.chunks = threading.Event()
        self.states.set()
        self.heartbeat = threading.Event()
        self.heartbeat.set()
        self.last_state = self.last_chunk = -np.inf    # monotonic publication times
        self.trajectories = []     # (arrival, stop?, TrajectoryCheck)
        self.commands = []         # (arrival, armed, hold)
        self.stops = {}            # stops.<trigger> of the node's newest diagnostics
        self.sequence = 0
        self.joints_pub = self.create_publisher(conv.JointState, 'robot/joint_states', ROBOT_QOS)
        self.window_pub = self.create_publisher(SensorWindow, 'sensor/window', WINDOW_QOS)
        self.chunk_pub = self.create_publisher(ActionChunk, 'vla/action_chunk', STATE_QOS)
        self.estop_pub = self.create_publisher(Bool, 'safety/estop', qos_profile('static'))
        self.heartbeat_pub = self.create_publisher(Bool, 'safety/heartbeat',
                                                   qos_profile('latest'))
        self.create_subscription(JointTrajectory, 'robot/joint_trajectory', self._on_trajectory,
                                 qos_profile('state'))
        self.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics,
                                 DIAGNOSTICS_QOS)
        self.enable = self.create_client(SetBool, '/chunk_executor/enable')
        self.reset_fault = self.create_client(Trigger, '/chunk_executor/reset_fault')
        self.context_zmq = zmq.Context(1)
        self.pull = self.context_zmq.socket(zmq.PULL)
        self.pull.bind(f'tcp://127.0.0.1:{port}')
        self.stop = threading.Event()
        # each stream from its own thread on absolute deadlines (as the bridges publish)
        self.threads = [threading.Thread(target=self._every, args=(period, fn), daemon=True)
                        for period, fn in ((0.01, self._publish_state),
                                           (1 / 65.0, self._publish_window),
                                           (0.1, self._publish_chunk),
                                           (0.05, self._publish_heartbeat))]
        self.threads.append(threading.Thread(target=self._receive, daemon=True))
        for thread in self.threads:
            thread.start()

    def now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _every(self, period_s: float, publish) -> None:
        # the package's pacer; a late tick catches up at once, as a sender that loses nothing
        ticker = DeadlineTicker(1.0 / period_s, self.stop, max_lateness_s=math.inf)
        while ticker.wait():
            publish()

    def _publish_state(self) -> None:
        if not self.states.is_set():
            return
        with self.lock:
            q = self.q.copy()
        joints, _ = conv.robot_state_to_msgs(RobotState(
            stamp_s=self.now_s(), joint_positions_rad=q, tool_position_m=np.zeros(3),
            tool_orientation_xyzw=np.array([0, 0, 0, 1.0]), gripper=1.0))
        self.last_state = time.monotonic()
        self.joints_pub.publish(joints)

    def _publish_heartbeat(self) -> None:
        if self.heartbeat.is_set():
            self.heartbeat_pub.publish(Bool(data=True))

    def _publish_window(self) -> None:
        samples = np.zeros((65, 7), np.float32)
        t = time.monotonic()
        if t < self.impact_until:       # every window holds the newest 100 ms of samples
            samples[-1, :3] = 60.0      # per axis: |F| 104 N, hard limit 40 N
            if self.impact_at is None:
                self.impact_at = t
        self.window_pub.publish(conv.sensor_window_to_msg(SensorWindowData(
            stamp_s=self.now_s(), samples=samples, valid_samples=65, sample_rate_hz=650.0,
            channel_names=CHANNELS)))

    def impact(self) -> float:
        """Put an impact in the sensor's windows for 100 ms; return its first window's time."""
        self.impact_at = None
        self.impact_until = time.monotonic() + 0.1
        if not wait_for(lambda: self.impact_at is not None, 1.0):
            raise RuntimeError('no sensor window published in 1 s')
        return self.impact_at

    def _publish_chunk(self) -> None:
        if not self.chunks.is_set():
            return
        self.sequence += 1
        now = self.now_s()
        actions = np.tile(np.r_[HOME, 1.0], (8, 1)).astype(np.float32)
        actions[:, 0] = 0.3 * np.sin(now + 0.1 * np.arange(8))
        self.chunk_pub.publish(conv.action_chunk_to_msg(ActionChunkData(
            stamp_s=now, actions=actions, dt_s=0.1, sequence=self.sequence)))
        self.last_chunk = time.monotonic()

    def _receive(self) -> None:
        codec = CommandCodecV1()
        while not self.stop.is_set():
            if self.pull.poll(20):
                msg = codec.decode(self.pull.recv())
                with self.lock:
                    self.commands.append((time.monotonic(), msg.armed, msg.hold))
                    if msg.armed and not msg.hold:
                        self.q = np.array(msg.positions_rad)

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        arrival = time.monotonic()
        trajectory = conv.joint_trajectory_from_msg(msg)
        check = check_trajectory(trajectory, self.joints, self.now_s())
        with self.lock:   # a stop is stamped 0 (starts on arrival); the plan with its step
            self.trajectories.append((arrival, trajectory.stamp_s == 0.0, check))

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == 'chunk_executor':
                self.stops = {kv.key[6:]: int(float(kv.value)) for kv in status.values
                              if kv.key.startswith('stops.')}

    def first_after(self, t: float) -> tuple[float | None, float | None, object]:
        """(first stop trajectory, first HOLD) arrivals at or after t, and that stop's check."""
        with self.lock:
            stop = next(((a, c) for a, is_stop, c in self.trajectories if is_stop and a >= t),
                        (None, None))
            hold = next((a for a, _, h in self.commands if h and a >= t), None)
        return stop[0], hold, stop[1]

    def following_since(self, t: float) -> int:
        with self.lock:
            return sum(armed and not hold and a >= t for a, armed, hold in self.commands)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(2.0)
        self.pull.close(linger=0)
        self.context_zmq.term()


def wait_for(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def call(client, request, timeout_s: float = 10.0):
    future = client.call_async(request)
    if not wait_for(future.done, timeout_s):
        raise RuntimeError(f'{client.srv_name} did not answer within {timeout_s} s')
    return future.result()


def follow(cell: Cell, settle_s: float, timeout_s: float = 20.0) -> None:
    """Chunks and states on, armed and following for settle_s."""
    cell.states.set()
    cell.chunks.set()
    deadline = time.monotonic() + timeout_s
    while not call(cell.enable, SetBool.Request(data=True)).success:   # a fresh state needed
        if time.monotonic() > deadline:
            raise RuntimeError('the executor refused to arm')
        time.sleep(0.1)
    t = time.monotonic()
    if not wait_for(lambda: cell.following_since(t) >= int(settle_s * 100 * 0.8), timeout_s):
        raise RuntimeError('the arm does not follow the chunks')


def trigger(cell: Cell, name: str, config: ExecutorConfig) -> float:
    """Cause one stop; return the event time (monotonic)."""
    if name == 'disarm':
        t = time.monotonic()
        call(cell.enable, SetBool.Request(data=False))
        return t
    if name == 'estop':
        t = time.monotonic()
        cell.estop_pub.publish(Bool(data=True))
        return t
    if name == 'deadman':           # the operator lets go: the console says false
        cell.heartbeat.clear()
        time.sleep(0.06)                             # the heartbeat thread saw it
        t = time.monotonic()
        cell.heartbeat_pub.publish(Bool(data=False))
        return t
    if name == 'force_limit':
        return cell.impact()
    if name == 'watchdog':
        cell.chunks.clear()
        time.sleep(0.15)                             # the chunk thread saw it
        return cell.last_chunk + config.chunk_timeout_s
    cell.states.clear()
    time.sleep(0.05)
    return cell.last_state + config.max_robot_age_s


def recover(cell: Cell, name: str) -> None:
    if name == 'force_limit':       # once a window without the impact is the newest
        time.sleep(max(0.0, cell.impact_until + 0.05 - time.monotonic()))
        call(cell.reset_fault, Trigger.Request())
    if name == 'estop':             # released, then reset: the executor may be armed again
        cell.estop_pub.publish(Bool(data=False))
        if not wait_for(lambda: call(cell.reset_fault, Trigger.Request()).success, 5.0):
            raise RuntimeError('reset_fault refused after the e-stop was released')
    cell.heartbeat.set()
    cell.states.set()
    cell.chunks.set()


def _percentiles(values_s: list[float]) -> dict:
    ms = np.array(values_s) * 1e3
    if not ms.size:
        return {'n': 0, 'p50_ms': float('nan'), 'p99_ms': float('nan'), 'max_ms': float('nan')}
    return {'n': int(ms.size), 'p50_ms': float(np.percentile(ms, 50)),
            'p99_ms': float(np.percentile(ms, 99)), 'max_ms': float(ms.max())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--count', type=int, default=20, help='stops per trigger')
    parser.add_argument('--triggers', nargs='+', choices=TRIGGERS, default=list(TRIGGERS))
    parser.add_argument('--settle', type=float, default=1.0,
                        help='seconds of following before each trigger [s]')
    parser.add_argument('--domain', type=int, default=int(os.environ.get('ROS_DOMAIN_ID', 98)),
                        help='ROS domain of the node and this script')
    args = parser.parse_args()
    os.environ['ROS_DOMAIN_ID'] = str(args.domain)
    localhost_discovery(os.environ)
    config = ExecutorConfig()
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    WORK.mkdir(parents=True, exist_ok=True)
    log = WORK / 'chunk_executor.log'
    node = subprocess.Popen(
        [sys.executable, '-c', 'import sys; from vla_insertion.nodes.chunk_executor import main; '
         'sys.exit(main())', '--ros-args', '-p', f'command_port:={port}',
         '-p', 'outputs:=[command_v1,joint_trajectory]',
         '-p', f'deadman_timeout_s:={DEADMAN_TIMEOUT_S}'],
        cwd=ROOT, stdout=open(log, 'w'), stderr=subprocess.STDOUT, start_new_session=True)
    rclpy.init()
    cell = Cell(port, tuple(config.joint_names))
    executor = SingleThreadedExecutor()
    executor.add_node(cell)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    delays = {name: {'joint_trajectory': [], 'command_v1': []} for name in args.triggers}
    refused = []
    try:
        if not cell.enable.wait_for_service(timeout_sec=60.0):
            raise RuntimeError(f'no chunk_executor within 60 s; see {log}')
        for _ in range(args.count):
            for name in args.triggers:
                follow(cell, args.settle)
                event = trigger(cell, name, config)
                if not wait_for(lambda: None not in cell.first_after(event)[:2], 5.0):
                    raise RuntimeError(f'no stop within 5 s of {name}; see {log}')
                time.sleep(0.1)
                trajectory_at, hold_at, check = cell.first_after(event)
                delays[name]['joint_trajectory'].append(trajectory_at - event)
                delays[name]['command_v1'].append(hold_at - event)
                if not check.accepted:
                    refused.append((name, check.reason))
                recover(cell, name)
        time.sleep(1.5)                                  # the next diagnostics report
    finally:
        cell.close()
        if node.poll() is None:
            os.killpg(node.pid, signal.SIGINT)
        try:
            node.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
        executor.shutdown()
        cell.destroy_node()
        rclpy.try_shutdown()
    rows = [{'trigger': name, 'output': output, **_percentiles(values)}
            for name in args.triggers for output, values in delays[name].items()]
    print_table(f'event -> stop on the wire [ms] ({args.count} per trigger, control period '
                f'{config.period_s * 1e3:.0f} ms, load average {os.getloadavg()[0]:.1f})', rows)
    print(f'stop trajectories refused by the controller rules: {refused or "none"}; '
          f'the node counted stops {cell.stops}')
    write_json('stops', {'rows': rows, 'refused': refused, 'node_stops': cell.stops,
                         'load_avg_1min': os.getloadavg()[0], 'args': vars(args),
                         'delays_s': delays})
    return 0 if not refused else 1


if __name__ == '__main__':
    sys.exit(main())
