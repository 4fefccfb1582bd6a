"""bag_recorder and bag_player on real DDS (loopback): every message and stamp intact."""
import os
from pathlib import Path
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, JointState
import yaml

from vla_insertion import conversions as conv
from vla_insertion.core import bag, topics
from vla_insertion.core.config import BagPlayerConfig, BagRecorderConfig
from vla_insertion.core.data import ActionChunkData, SensorWindowData
from vla_insertion.core.ticker import DeadlineTicker
from vla_insertion.msg import ActionChunk, SensorWindow
from vla_insertion.ros.qos import publisher, SENSOR_QOS, STATE_QOS, WINDOW_QOS
from vla_insertion.tools.bag_player import BagPlayerNode, CLOCK_QOS
from vla_insertion.tools.bag_recorder import BagRecorderNode

ROOT = Path(__file__).resolve().parents[2]
DEEP_QOS = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                      depth=500)
N = 30
T0 = 1_700_000_000.0
TOPICS = {
    'cameras/zed_1/image/compressed': (CompressedImage, SENSOR_QOS),
    'robot/joint_states': (JointState, STATE_QOS),
    'sensor/window': (SensorWindow, WINDOW_QOS),
    'vla/action_chunk': (ActionChunk, STATE_QOS),
}


def make(topic: str, i: int):
    """Message i of a topic, stamped T0 + i * 10 ms + a per-topic offset, content from i."""
    t = T0 + i * 0.01 + list(TOPICS).index(topic) * 1e-4
    rng = np.random.default_rng(i)
    if topic.startswith('cameras'):
        msg = CompressedImage()
        msg.header.stamp = conv.time_to_msg(t)
        msg.format = 'jpeg'
        msg.data = rng.integers(0, 255, 5000, dtype=np.uint8).tobytes()
        return msg
    if topic == 'robot/joint_states':
        msg = JointState()
        msg.header.stamp = conv.time_to_msg(t)
        msg.position = rng.standard_normal(6).tolist()
        return msg
    if topic == 'sensor/window':
        return conv.sensor_window_to_msg(SensorWindowData(
            stamp_s=t, samples=rng.standard_normal((65, 7)).astype(np.float32),
            valid_samples=65, sample_rate_hz=650.0))
    return conv.action_chunk_to_msg(ActionChunkData(
        stamp_s=t, actions=rng.standard_normal((8, 7)).astype(np.float32), dt_s=0.1,
        sequence=i))


def payload(msg):
    for name in ('data', 'position', 'actions'):
        if hasattr(msg, name):
            return np.asarray(getattr(msg, name)).ravel()


class Spinner:
    """Spin an executor in a background thread until stopped."""

    def __init__(self, context, *nodes):
        self.executor = SingleThreadedExecutor(context=context)
        for n in nodes:
            self.executor.add_node(n)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def stop(self):
        self.executor.shutdown(timeout_sec=5.0)
        self.thread.join(5.0)


def wait_for(predicate, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_recorded_messages_and_stamps_are_intact(rclpy_context, tmp_path, monkeypatch):
    """Every message and stamp intact, and the splits exactly where split_duration_s puts them.

    The rule (core.bag.BagWriter): a split ends before the first message logged
    split_duration_s or more after the split's first message, in the order the writer gets
    them. The expected splits come from the log times the recorder wrote, so they hold however
    fast this machine delivered the messages.
    """
    written = []                         # (topic, log time [ns]) in the order written
    write = bag.BagWriter.write

    def spy(self, topic, stamp_ns, data):
        written.append((topic, stamp_ns))
        write(self, topic, stamp_ns, data)
    monkeypatch.setattr(bag.BagWriter, 'write', spy)
    split_ns = 100_000_000
    config = BagRecorderConfig(output_dir=str(tmp_path), bag_name='rec',
                               topics=tuple(TOPICS), split_duration_s=split_ns * 1e-9)
    recorder = BagRecorderNode(config, context=rclpy_context)
    source = Node('rec_source', context=rclpy_context)
    # the cells' QoS kinds, with deeper publisher histories so a busy machine loses nothing
    pubs = {t: source.create_publisher(cls, t, qos if qos is SENSOR_QOS else DEEP_QOS)
            for t, (cls, qos) in TOPICS.items()}
    spinner = Spinner(rclpy_context, recorder, source)
    sent = {t: [] for t in TOPICS}
    try:
        assert wait_for(lambda: all(p.get_subscription_count() for p in pubs.values()), 10)
        # a live source at 100 Hz: N rounds, and on until the log times span 3 splits
        ticker, deadline, i = DeadlineTicker(100.0), time.monotonic() + 30.0, 0
        while (i < N or not written or written[-1][1] - written[0][1] < 3 * split_ns) and \
                time.monotonic() < deadline and ticker.wait():
            for topic, pub in pubs.items():
                msg = make(topic, i)
                pub.publish(msg)
                sent[topic].append(msg)
            i += 1
        assert wait_for(lambda: all(recorder.received[f'/{t}'] >= i for t in TOPICS), 10), \
            (i, dict(recorder.received))
    finally:
        spinner.stop()
        recorder.destroy_node()
        source.destroy_node()
    assert recorder.drops == {}
    read = {t: [] for t in TOPICS}
    logged = {t: [] for t in TOPICS}
    for topic, log_ns, msg in bag.read_messages(tmp_path / 'rec'):
        if topic.lstrip('/') in read:
            read[topic.lstrip('/')].append(msg)
            logged[topic.lstrip('/')].append(log_ns)
    for topic in TOPICS:
        assert len(read[topic]) == i, topic
        for want, got in zip(sent[topic], read[topic]):
            assert bag.header_stamp_ns(got) == want.header.stamp.sec * 10**9 + \
                want.header.stamp.nanosec
            np.testing.assert_array_equal(payload(got), payload(want))
        assert logged[topic] == [t for name, t in written if name == f'/{topic}'], topic
    splits: list[list[int]] = []
    for _topic, log_ns in written:
        if not splits or log_ns - splits[-1][0] >= split_ns:
            splits.append([])
        splits[-1].append(log_ns)
    info = yaml.safe_load((tmp_path / 'rec' / 'metadata.yaml').read_text())[
        'rosbag2_bagfile_information']
    files = [(f['path'], f['message_count'], f['starting_time']['nanoseconds_since_epoch'],
              f['duration']['nanoseconds']) for f in info['files']]
    assert files == [(f'rec_{k}.mcap', len(s), min(s), max(s) - min(s))
                     for k, s in enumerate(splits)]
    assert sorted(p.name for p in (tmp_path / 'rec').iterdir()) == sorted(
        ['metadata.yaml'] + [f'rec_{k}.mcap' for k in range(len(splits))])


def write_timed_bag(path: Path) -> list[int]:
    """10 Hz action chunks and 50 Hz joint states over 2 s; return the log times [ns]."""
    times = []
    with bag.BagWriter(path) as writer:
        writer.add_topic('/vla/action_chunk', 'vla_insertion/msg/ActionChunk')
        writer.add_topic('/robot/joint_states', 'sensor_msgs/msg/JointState')
        for k in range(100):
            t_ns = int(T0 * 1e9) + k * 20_000_000
            h = bag.header(t_ns)
            writer.write_msg('/robot/joint_states', t_ns, bag.make_message(
                'sensor_msgs/msg/JointState', header=h, position=np.full(6, float(k))))
            times.append(t_ns)
            if k % 5 == 0:
                writer.write_msg('/vla/action_chunk', t_ns, bag.make_message(
                    'vla_insertion/msg/ActionChunk', header=h, horizon=1, action_dim=1,
                    actions=np.array([k], dtype=np.float32)))
    return times


def test_player_keeps_timing_scaled_by_rate_and_publishes_clock(rclpy_context, tmp_path):
    times = write_timed_bag(tmp_path / 'play')
    sink = Node('play_sink', context=rclpy_context)
    arrivals, chunks, clocks = [], [], []
    # deep queues: the sink must not lose messages when this shared machine is busy
    sink.create_subscription(JointState, '/robot/joint_states',
                             lambda m: arrivals.append((time.monotonic(), m)), DEEP_QOS)
    sink.create_subscription(ActionChunk, '/vla/action_chunk', chunks.append, DEEP_QOS)
    sink.create_subscription(Clock, '/clock', lambda m: clocks.append(
        m.clock.sec * 10**9 + m.clock.nanosec), CLOCK_QOS)
    player = BagPlayerNode(BagPlayerConfig(bag=str(tmp_path / 'play'), rate=2.0,
                                           start_delay_s=20.0), context=rclpy_context)
    spinner = Spinner(rclpy_context, sink, player)
    try:
        assert player.done.wait(20.0)
        assert wait_for(lambda: len(arrivals) >= len(times) and len(chunks) >= 20, 5), \
            (len(arrivals), len(chunks), player.published)
    finally:
        spinner.stop()
        player.destroy_node()
        sink.destroy_node()
    # every message, in order, with its recorded stamp
    assert [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for _t, m in arrivals] == times
    assert [float(m.actions[0]) for m in chunks] == [float(k) for k in range(0, 100, 5)]
    # arrival offsets follow the recorded offsets / rate (2 s of bag in ~1 s)
    got = np.array([t for t, _m in arrivals]) - arrivals[0][0]
    want = (np.array(times) - times[0]) * 1e-9 / 2.0
    # the arrivals' slope against the recorded offsets / rate: 1 when the rate is kept, 2 for
    # a player at rate 1, 0 for one publishing at once. A slope is blind to the constant part
    # of the delivery delay; how late messages come is the machine's load, not a property of
    # the player (benchmarks/bench_recorder.py measures it).
    slope = np.polyfit(want, got, 1)[0]
    assert 0.75 < slope < 1.5, slope
    # /clock carried the bag time, increasing, inside the bag's span
    assert len(clocks) > 20
    assert all(b >= a for a, b in zip(clocks, clocks[1:]))
    assert times[0] <= clocks[0] and clocks[-1] <= times[-1] + 100_000_000


def test_sigkilled_recorder_leaves_a_readable_bag(rclpy_context, ros_env, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, '-m', 'vla_insertion.tools.bag_recorder', '-o', str(tmp_path),
         '-n', 'killed', '-t', 'robot/joint_states', '--ros-args',
         '-p', 'split_duration_s:=0.5', '-p', 'flush_period_s:=0.1'],
        env={**ros_env, 'PYTHONPATH': f'{ROOT}{os.pathsep}{ros_env.get("PYTHONPATH", "")}'},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    source = Node('kill_source', context=rclpy_context)
    pub = source.create_publisher(JointState, 'robot/joint_states', STATE_QOS)
    sent = []
    try:
        assert wait_for(lambda: pub.get_subscription_count() > 0, 30), 'recorder not up'
        meta = tmp_path / 'killed' / 'metadata.yaml'
        deadline = time.monotonic() + 30
        ticker = DeadlineTicker(100.0)       # the sender's pace
        i = 0
        while time.monotonic() < deadline and not (meta.exists() and i > 150) and \
                ticker.wait():
            msg = make('robot/joint_states', i)
            pub.publish(msg)
            sent.append(msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec)
            i += 1
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        source.destroy_node()
    assert meta.exists()
    before = [bag.header_stamp_ns(m) for _t, _s, m in bag.read_messages(tmp_path / 'killed')]
    # the first few may precede the reliable match; from then on nothing is missing
    first = sent.index(before[0])
    assert first < 20 and before == sent[first:first + len(before)]
    bag.recover_bag(tmp_path / 'killed')
    after = [bag.header_stamp_ns(m) for _t, _s, m in bag.read_messages(tmp_path / 'killed')]
    assert len(after) >= len(before)
    assert after == sent[first:first + len(after)]    # nothing lost or reordered
    # How much the kill loses (about flush_period_s of messages on an idle machine) is a
    # timing figure: under load it grew past 0.3 s, so it is not asserted here.


@pytest.fixture(autouse=True)
def _limit_threads(monkeypatch):
    monkeypatch.setenv('OMP_NUM_THREADS', '1')


def test_the_bag_is_as_rosbag2_writes_it(rclpy_context, tmp_path, monkeypatch):
    """Log times are DDS receive times, every publisher's profile is offered, paths absolute.

    Messages are published before the recorder's executor spins: their log times are earlier
    than any of its callbacks (the callback time would bunch them up after it), and in order.
    """
    monkeypatch.chdir(tmp_path)
    config = BagRecorderConfig(output_dir='bags', bag_name='rx', topics=('vla/action_chunk',),
                               split_duration_s=0.0)
    recorder = BagRecorderNode(config, context=rclpy_context)
    assert recorder.path == tmp_path / 'bags' / 'rx'          # relative: logged absolute
    source = Node('rx_source', context=rclpy_context)
    pubs = [publisher(source, ActionChunk, topics.ACTION_CHUNK) for _ in range(2)]
    assert wait_for(lambda: all(p.get_subscription_count() for p in pubs), 10)
    ticker = DeadlineTicker(50.0)        # a live source's pace
    for i in range(10):
        assert ticker.wait()
        pubs[i % 2].publish(make('vla/action_chunk', i))
    spin_started_ns = time.time_ns()
    spinner = Spinner(rclpy_context, recorder, source)
    try:
        assert wait_for(lambda: recorder.received['/vla/action_chunk'] >= 10, 10)
    finally:
        spinner.stop()
        recorder.destroy_node()
        source.destroy_node()
    log_times = [t for _topic, _type, t, _data in bag.read_raw(tmp_path / 'bags' / 'rx')]
    assert len(log_times) == 10 and log_times == sorted(log_times)
    assert log_times[-1] < spin_started_ns, 'log times are callback times'
    info = yaml.safe_load((tmp_path / 'bags' / 'rx' / 'metadata.yaml').read_text())[
        'rosbag2_bagfile_information']
    assert info['ros_distro'] == (os.environ.get('ROS_DISTRO') or 'kilted')
    (entry,) = info['topics_with_message_count']
    offered = entry['topic_metadata']['offered_qos_profiles']
    assert [(q['depth'], q['reliability']) for q in offered] == [(2, 'reliable')] * 2
