"""Real bridges against senders whose clocks misbehave, and the VLM's frame buffer after them.

Issue 14: clock steps, a future-dated time, a second camera sender 1123 s off.

camera_bridge and robot_bridge run as subprocesses on free ports in this module's ROS domain.
The senders are threads of this test speaking the documented wire formats; a listener node puts
every camera frame into the VLM's frame buffer (core.vlm.selection.LatestFrames) and selects,
as vlm_node does.
"""
from __future__ import annotations

from collections import Counter
import io
import math
import os
from pathlib import Path
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
from PIL import Image
import pytest
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, JointState
import zmq

from vla_insertion.conversions import camera_frame_from_msg, time_from_msg
from vla_insertion.core.bridge.receive import BRIDGE_CAUSES, LINK_EVENTS
from vla_insertion.core.ticker import DeadlineTicker
from vla_insertion.core.vlm.selection import KEPT, LatestFrames, READY
from vla_insertion.core.wire import CameraMessage, make_codec, RobotMessage
from vla_insertion.ros.qos import DIAGNOSTICS_QOS, SENSOR_QOS

ROOT = Path(__file__).resolve().parents[2]
VIEWS = ('zed_1', 'zed_2', 'oak')
FPS = 5.0                  # rounds 200 ms apart: a set mixing two rounds is never in sync
SYNC_TOLERANCE_S = 0.1
MAX_VIEW_AGE_S = 2.0       # generous: the listener shares two cores with the bridges
# every message is received by the reliable listener even when it lags for a moment
ROBOT_LISTEN_QOS = QoSProfile(reliability=ReliabilityPolicy.RELIABLE,
                              history=HistoryPolicy.KEEP_LAST, depth=1000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new('RGB', (8, 8), (90, 120, 30)).save(buffer, 'JPEG')
    return buffer.getvalue()


JPEG = jpeg()


def tagged(sender: str, index: int) -> bytes:
    # bytes after the JPEG's end marker: the bridge passes them on, the test reads them back
    return JPEG + sender.encode() + struct.pack('<I', index)


def tag_of(data: bytes) -> tuple[str, int]:
    return data[-5:-4].decode(), struct.unpack('<I', data[-4:])[0]


@pytest.fixture(scope='module')
def ports():
    return {'camera': free_port(), 'robot': free_port()}


@pytest.fixture(scope='module')
def bridges(ros_env, ports, tmp_path_factory):
    logs = tmp_path_factory.mktemp('clock_bridges')
    env = dict(ros_env)
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(ROOT), env.get('PYTHONPATH')]))
    views = '[' + ', '.join(repr(v) for v in VIEWS) + ']'
    specs = {
        'camera_bridge': ['-p', f'port:={ports["camera"]}', '-p', f'view_names:={views}',
                          '-p', 'calibration_batches:=5'],
        'robot_bridge': ['-p', f'port:={ports["robot"]}', '-p', 'calibration_batches:=20'],
    }
    procs, paths = {}, {}
    try:
        for name, params in specs.items():
            paths[name] = logs / f'{name}.log'
            procs[name] = subprocess.Popen(
                [sys.executable, '-m', f'vla_insertion.nodes.{name}', '--ros-args', *params],
                env=env, cwd=ROOT, stdout=open(paths[name], 'w'), stderr=subprocess.STDOUT)
        yield paths
    finally:
        for name, proc in procs.items():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(10.0)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5.0)
            print(f'--- {name} (exit {proc.returncode})\n{paths[name].read_text()[-3000:]}')


class Listener:
    """Robot states and diagnostics as received; camera frames through the VLM's buffer."""

    def __init__(self, context):
        self.node = Node('clock_test_listener', context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.lock = threading.Lock()
        self.joints: list[tuple[float, JointState]] = []
        self.frames: list[tuple[float, str, float, tuple[str, int], str]] = []
        self.selections: list[tuple[str, dict[str, tuple[str, int]]]] = []
        self.diagnostics: dict[str, dict[str, str]] = {}
        self.buffer = LatestFrames(VIEWS, MAX_VIEW_AGE_S)
        self.first_state = threading.Event()
        self.first_frames = threading.Event()
        self.node.create_subscription(JointState, 'robot/joint_states', self._on_joints,
                                      ROBOT_LISTEN_QOS)
        for view in VIEWS:
            self.node.create_subscription(
                CompressedImage, f'cameras/{view}/image/compressed',
                lambda msg, v=view: self._on_frame(v, msg), SENSOR_QOS)
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag,
                                      DIAGNOSTICS_QOS)

    def _on_joints(self, msg):
        with self.lock:
            self.joints.append((time.time(), msg))
        self.first_state.set()

    def _on_frame(self, view, msg):
        now = time.time()
        frame = camera_frame_from_msg(msg, view)
        kept = self.buffer.put(frame, now)
        selection = self.buffer.select(now, SYNC_TOLERANCE_S, MAX_VIEW_AGE_S)
        with self.lock:
            self.frames.append((now, view, frame.stamp_s, tag_of(frame.data), kept))
            if selection.ready:
                self.selections.append(
                    (READY, {v: tag_of(f.data) for v, f in selection.frames.items()}))
        self.first_frames.set()

    def _on_diag(self, msg):
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            with self.lock:
                self.diagnostics[status.hardware_id.lstrip('/')] = values

    def diag(self, node) -> dict[str, str]:
        with self.lock:
            return dict(self.diagnostics.get(node, {}))

    def spin_until(self, predicate, timeout_s):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not predicate():
            self.executor.spin_once(timeout_sec=0.02)
        return predicate()


@pytest.fixture(scope='module')
def listener(rclpy_context, bridges):
    listener = Listener(rclpy_context)
    yield listener
    listener.executor.shutdown()
    listener.node.destroy_node()


def test_every_cause_and_counter_is_reported_before_the_first_message(listener):
    assert listener.spin_until(lambda: listener.diag('robot_bridge')
                               and listener.diag('camera_bridge'), 20.0)
    for node in ('robot_bridge', 'camera_bridge'):
        values = listener.diag(node)
        for cause in BRIDGE_CAUSES:
            assert values[f'drops.{cause}'] == '0', (node, cause)
        for key in (*LINK_EVENTS, 'gap_messages', 'clock_steps', 'sender_restarts',
                    'session_switches'):
            assert values[key] == '0', (node, key)
        assert values['clock_offset_ms'] == 'nan'
    assert listener.diag('camera_bridge')['drops.unknown_view'] == '0'


class RobotSender(threading.Thread):
    """A robot PC: PUB at 100 Hz; its clock misbehaves at the planned message indices."""

    def __init__(self, port, connected: threading.Event):
        super().__init__(daemon=True)
        self.port, self.connected = port, connected
        self.codec = make_codec('robot_v1')
        self.session = secrets.randbits(32)
        self.sent = 0
        self.sent_at: dict[int, float] = {}      # index -> local send time
        self.plan_from = -1                      # index the plan counts from
        self.rounded = -1                        # index of the future-dated state
        self.error: BaseException | None = None

    def run(self):
        context = zmq.Context(1)
        pub = context.socket(zmq.PUB)
        pub.bind(f'tcp://127.0.0.1:{self.port}')
        ticker = DeadlineTicker(100.0)
        try:
            offset, i, start = 0.25, 0, None
            while i < 2000 and (start is None or i < start + 450) and ticker.wait():
                if start is None and self.connected.is_set():
                    start = i                    # the bridge publishes: plan from here
                error = 0.0
                if start is not None:
                    if i == start + 100 and self.rounded < 0:
                        sender = time.time() + offset
                        rounded_up = math.ceil(sender) - sender
                        if 0.1 < rounded_up < 0.95:      # a time rounded up by under 1 s
                            error, self.rounded = rounded_up, i
                        else:
                            start += 1                   # try the next state
                    if i == start + 200:
                        offset += 5.0
                    if i == start + 320:
                        offset -= 5.0
                now = time.time()
                self.sent_at[i] = now
                pub.send(self.codec.encode(RobotMessage(
                    now + offset + error, (float(i), 0.0, 0.0, 0.0, 0.0, 0.0), (0.0,) * 3,
                    (0.0,) * 3, session=self.session, sequence=i)))
                i += 1
                self.sent = i
            self.plan_from = -1 if start is None else start
        except BaseException as exc:
            self.error = exc
        finally:
            pub.close(linger=0)
            context.term()


def test_robot_clock_steps_and_a_future_dated_state_cost_only_their_own_messages(
        listener, ports, bridges):
    sender = RobotSender(ports['robot'], listener.first_state)
    sender.start()
    assert listener.spin_until(lambda: not sender.is_alive(), 60.0), 'sender did not finish'
    # the plan ran to its end, with the future-dated state where it was planned
    assert sender.error is None and sender.plan_from != -1, 'the plan never started'
    assert sender.sent == sender.plan_from + 450
    assert sender.rounded == sender.plan_from + 100

    def settled():
        values = listener.diag('robot_bridge')
        return (values and int(values['received']) + int(values['gap_messages']) == sender.sent)
    assert listener.spin_until(settled, 10.0), (sender.sent, listener.diag('robot_bridge'))
    values = listener.diag('robot_bridge')
    # exact figures: the future-dated state; 2 states per step; nothing late, nothing lost
    # but the states sent before the SUB was connected (counted as a gap)
    assert values['drops.future_stamp'] == '3' and values['drops.past_stamp'] == '2', values
    assert values['clock_steps'] == '2' and values['drops.late'] == '0'
    assert int(values['published']) == int(values['received']) - 5
    assert values['dropped'] == '5' and values['sender_restarts'] == '0'

    with listener.lock:
        joints = list(listener.joints)
    stamps = [time_from_msg(m.header.stamp) for _, m in joints]
    assert all(b >= a for a, b in zip(stamps, stamps[1:])), 'stamps went back'
    assert all(s <= t for (t, _), s in zip(joints, stamps)), 'a stamp after its receipt'
    indices = [int(round(math.degrees(m.position[0]))) for _, m in joints]
    assert sender.rounded not in indices
    # every published stamp is its state's send time, through both steps
    errors = [s - sender.sent_at[i] for i, s in zip(indices, stamps)]
    assert max(abs(e) for e in errors[-400:]) < 0.05, max(errors[-400:], key=abs)
    log = Path(bridges['robot_bridge']).read_text()
    assert '[robot_bridge]: sender clock stepped by +5.0' in log, 'step not in the ROS log'
    assert '[robot_bridge]: sender clock stepped by -5.0' in log


class CameraSender(threading.Thread):
    """A camera sender pushing the three views each round; `offset_s` is its clock error."""

    def __init__(self, port, name, session, offset_s, rounds, first_sequence=0):
        super().__init__(daemon=True)
        self.port, self.name, self.session, self.offset_s = port, name, session, offset_s
        self.rounds, self.round = rounds, 0
        self.codec = make_codec('camera_v1')
        self.sequences = dict.fromkeys(VIEWS, first_sequence)
        self.captured: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self):
        context = zmq.Context(1)
        push = context.socket(zmq.PUSH)
        push.connect(f'tcp://127.0.0.1:{self.port}')
        try:
            end = self.round + self.rounds
            while self.round < end and not self.stop.is_set():
                now = time.time()
                self.captured[self.round] = now
                for view in VIEWS:
                    push.send(self.codec.encode(CameraMessage(
                        view=view, capture_time_s=now + self.offset_s, width=8, height=8,
                        data=tagged(self.name, self.round), session=self.session,
                        sequence=self.sequences[view])))
                    self.sequences[view] += 1
                self.round += 1
                self.stop.wait(max(0.0, now + 1.0 / FPS - time.time()))
        finally:
            push.close(linger=1000)
            context.term()


def test_a_skewed_second_camera_sender_never_blocks_the_vlm(listener, ports):
    """Issue 14 item 3: a second sender ~1123 s off pushed frames; the VLM stalled 113 s."""
    good = CameraSender(ports['camera'], 'A', secrets.randbits(32), 0.4, rounds=60)
    good.start()
    assert listener.spin_until(lambda: good.round >= 10, 30.0)
    # a second sender reusing the first one's session id, its own sequences ahead, for 3 s
    same = CameraSender(ports['camera'], 'B', good.session, 1123.4, rounds=15,
                        first_sequence=1000)
    same.start()
    assert listener.spin_until(lambda: not same.is_alive(), 30.0)
    same_end = good.round
    assert listener.spin_until(lambda: good.round >= same_end + 5, 30.0)
    # then one with its own session (and its own clock, 1123 s off) for 2 s
    other = CameraSender(ports['camera'], 'C', secrets.randbits(32), 1123.4, rounds=10)
    other_start = good.round
    other.start()
    assert listener.spin_until(lambda: not other.is_alive(), 30.0)
    other_end = good.round
    assert listener.spin_until(lambda: not good.is_alive(), 60.0)
    sent = 3 * (good.round + same.round + other.round)
    assert listener.spin_until(
        lambda: int(listener.diag('camera_bridge')['received']) >= sent, 10.0)
    # the last frames it published (best effort: a lost one only ends this wait at its bound)
    listener.spin_until(lambda: len(listener.frames)
                        >= int(listener.diag('camera_bridge')['published']), 10.0)

    with listener.lock:
        frames, selections = list(listener.frames), list(listener.selections)
    by_sender = Counter(tag[0] for _, _, _, tag, _ in frames)
    assert by_sender['B'] == 0, 'a frame of the same-session skewed sender was published'
    assert by_sender['C'] > 0, 'the sender with its own session and clock was not served'
    for received_s, view, stamp_s, (name, index), _ in frames:
        assert stamp_s <= received_s + 0.01, 'a camera stamp in the future'
        captured = {'A': good, 'C': other}[name].captured[index]
        assert abs(stamp_s - captured) < 0.05, (view, name, index, stamp_s - captured)
    # the VLM's buffer never refused a frame of the good sender while only it and the
    # same-session impostor sent: no view was held by a bad stamp, every complete round of it
    # was selected. (While C sends, both feed the same views and interleave.)
    alone = [f for f in frames if f[3][0] == 'A' and 5 <= f[3][1]
             and not other_start - 1 <= f[3][1] <= other_end + 1]
    assert alone and all(kept == KEPT for *_, kept in alone), Counter(f[4] for f in alone)
    complete = [r for r, n in Counter(tag[1] for _, _, _, tag, _ in alone).items() if n == 3]
    ready_rounds = {tags['zed_1'][1] for _, tags in selections
                    if all(tag == ('A', tags['zed_1'][1]) for tag in tags.values())}
    missing = sorted(set(complete) - ready_rounds)
    assert len(missing) <= 1, f'rounds of the good sender never selected: {missing}'
    values = listener.diag('camera_bridge')
    assert values['drops.future_stamp'] == str(3 * same.round), values
    assert values['sender_restarts'] == '1' and values['drops.late'] == '0'
    assert values['gap_messages'] == '0' and values['clock_steps'] == '0'
