"""The action_expert node on real DDS, and the offline runner on the same recorded inputs.

Chunks, reuse counting, ages, staleness rules, sync mode; then the same decisions and the same
chunks from the live node's path (DDS -> conversions -> newest inputs -> runner) and the offline
path (bag -> core.recording -> runner) on one recording.

A helper node plays the cell (features ~2.5 Hz, sensor windows 65 Hz, robot state 50 Hz) into
an in-process ActionExpertNode with a small untrained checkpoint; both spin in one
MultiThreadedExecutor in a background thread. Waits are bounded waits on conditions; nothing
here asserts a rate or a latency (benchmarks/bench_expert_loop.py measures those), so a busy
machine cannot fail it: the live tests relax the sensor and robot age limits that a starved
helper thread would otherwise trip.
"""
from __future__ import annotations

import dataclasses
import functools
import threading

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
import numpy as np
import pytest
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.serialization import serialize_message
from std_msgs.msg import Header
from support import wait_for

from vla_insertion import conversions as conv
from vla_insertion.core import bag, topics
from vla_insertion.core.bag.recording import load_recording, RecordedInputs
from vla_insertion.core.data import MODE_ASYNC, MODE_SYNC, RobotState, SensorWindowData
from vla_insertion.core.data import VLFeatureData
from vla_insertion.core.expert.inputs import FEATURES, JOINTS, POSE, WINDOW
from vla_insertion.core.expert.policy import ExpertPolicy
from vla_insertion.core.expert.presets import make_untrained_checkpoint
from vla_insertion.core.expert.runner import ExpertRunner
from vla_insertion.core.expert.staleness import StalenessLimits
from vla_insertion.core.feature_contract import FeatureContract
from vla_insertion.msg import ActionChunk, SensorWindow, VLFeatures
from vla_insertion.nodes.action_expert import ActionExpertNode
from vla_insertion.ros.qos import DIAGNOSTICS_QOS, LATEST_QOS, ROBOT_QOS, STATE_QOS, WINDOW_QOS

CONTRACT = FeatureContract(model_id='tiny-test-vlm', reduction='image_token_grid_pool',
                           num_tokens=6, feature_dim=32, image_width=64, image_height=36,
                           view_names=('zed_1', 'oak'), prompt='insert')
CHANNELS = ('fx', 'fy', 'fz', 'tx', 'ty', 'tz', 'distance')
RELAXED = {'max_sensor_age_s': 1.0, 'max_robot_age_s': 1.0}   # see the module docstring
UR = ('shoulder_pan_joint', 'shoulder_lift_joint', 'elbow_joint', 'wrist_1_joint',
      'wrist_2_joint', 'wrist_3_joint')
KNUCKLE = 'robotiq_85_left_knuckle_joint'      # 0 open .. 0.8 rad closed
ROS2_CONTROL = {'joint_state_source': 'joint_states', 'joint_names': list(UR),
                'gripper_joint': KNUCKLE, 'gripper_closed_position': 0.8}
WAIT_S = 30.0


@dataclasses.dataclass
class Scenario:
    feature_hz: float = 2.5        # 0: answer vla/feature_request instead (sync mode)
    feature_delay_s: float = 0.05  # capture-to-publication delay of the features [s]
    contract_hash: str = CONTRACT.digest
    valid_samples: int = 65
    robot: bool = True
    gripper: float = 0.8
    bad_joints: bool = False       # joint states naming more joints than they give positions
    ros2_control: bool = False     # joint_state_broadcaster's joint_states, not robot/joint_states
    pose: bool = True              # robot/pose published


def features_data(stamp_s: float, sequence: int, rng, contract_hash=CONTRACT.digest):
    return VLFeatureData(stamp_s=stamp_s, sequence=sequence,
                         features=rng.standard_normal((6, 32)).astype(np.float32),
                         contract_hash=contract_hash, model_id=CONTRACT.model_id, untrained=True)


def window_data(stamp_s: float, rng, valid: int = 65) -> SensorWindowData:
    samples = rng.standard_normal((65, 7)).astype(np.float32)
    samples[:65 - valid] = np.nan
    return SensorWindowData(stamp_s=stamp_s, samples=samples, valid_samples=valid,
                            sample_rate_hz=650.0, channel_names=CHANNELS)


def robot_data(stamp_s: float, gripper: float = 0.8) -> RobotState:
    return RobotState(stamp_s=stamp_s, joint_positions_rad=np.linspace(-1.0, 1.0, 6),
                      tool_position_m=np.array([0.4, 0.0, 0.3]),
                      tool_orientation_xyzw=np.array([0.0, 0.0, 0.0, 1.0]), gripper=gripper)


class FakeCell(Node):
    """Publishes features, sensor windows and robot state; records chunks and diagnostics."""

    def __init__(self, context, scenario: Scenario) -> None:
        super().__init__('fake_cell', context=context)
        self.scenario = scenario
        self.rng = np.random.default_rng(0)
        self.lock = threading.Lock()
        self.chunks: list[ActionChunk] = []
        self.diagnostics: list[DiagnosticStatus] = []
        self.window_stamps: set[float] = set()
        self.feature_sequence = 0
        self.requests = 0
        self.features_pub = self.create_publisher(VLFeatures, 'vla/features', LATEST_QOS)
        self.window_pub = self.create_publisher(SensorWindow, 'sensor/window', WINDOW_QOS)
        self.joints_pub = self.create_publisher(conv.JointState, 'robot/joint_states', ROBOT_QOS)
        self.pose_pub = self.create_publisher(conv.PoseStamped, 'robot/pose', ROBOT_QOS)
        self.broadcaster_pub = self.create_publisher(conv.JointState, 'joint_states', ROBOT_QOS)
        self.create_subscription(ActionChunk, 'vla/action_chunk', self._on_chunk, STATE_QOS)
        self.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, DIAGNOSTICS_QOS)
        if scenario.feature_hz > 0:
            self.create_timer(1.0 / scenario.feature_hz, self.publish_features)
        else:
            self.create_subscription(Header, 'vla/feature_request', self._on_request, LATEST_QOS)
        self.create_timer(1.0 / 65.0, self._publish_window)
        if scenario.robot:
            self.create_timer(1.0 / 50.0, self._publish_robot)

    def now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def publish_features(self) -> None:
        self.feature_sequence += 1
        self.features_pub.publish(conv.vl_features_to_msg(features_data(
            self.now_s() - self.scenario.feature_delay_s, self.feature_sequence, self.rng,
            self.scenario.contract_hash)))

    def _on_request(self, msg: Header) -> None:
        self.requests += 1
        self.publish_features()

    def _publish_window(self) -> None:
        stamp = round(self.now_s(), 6)
        with self.lock:
            self.window_stamps.add(stamp)
        self.window_pub.publish(conv.sensor_window_to_msg(
            window_data(stamp, self.rng, self.scenario.valid_samples)))

    def _publish_robot(self) -> None:
        joints, pose = conv.robot_state_to_msgs(robot_data(self.now_s(), self.scenario.gripper))
        if self.scenario.bad_joints:
            joints.position = list(joints.position)[:3]
        if self.scenario.ros2_control:      # its names, its order, its units, extra joints
            names = ['linear_rail'] + list(reversed(UR)) + [KNUCKLE]
            joints.position = [0.5] + list(joints.position)[5::-1] + [0.8 * self.scenario.gripper]
            joints.name = names
            self.broadcaster_pub.publish(joints)
        else:
            self.joints_pub.publish(joints)
        if self.scenario.pose:
            self.pose_pub.publish(pose)

    def _on_chunk(self, msg: ActionChunk) -> None:
        with self.lock:
            self.chunks.append(msg)

    def _on_diag(self, msg: DiagnosticArray) -> None:
        with self.lock:
            self.diagnostics.extend(s for s in msg.status if s.name == 'action_expert')

    def wait_for(self, predicate, timeout_s: float = WAIT_S) -> bool:
        def locked():
            with self.lock:
                return predicate()
        return wait_for(locked, timeout_s, 0.05)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    return make_untrained_checkpoint(tmp_path_factory.mktemp('expert') / 'small', CONTRACT,
                                     preset='small', seed=0)


def expert_node(context, checkpoint, start: bool = True, **params) -> ActionExpertNode:
    """Build the node; `start`: configure and activate it, as run_node's autostart does."""
    overrides = [Parameter('checkpoint', value=str(checkpoint)),
                 Parameter('torch_threads', value=1)]
    overrides += [Parameter(k, value=v) for k, v in params.items()]
    node = ActionExpertNode(context=context, parameter_overrides=overrides)
    if start:
        assert node.start() == 0, node.exit_code
    return node


@pytest.fixture
def run_cell(rclpy_context, checkpoint, spin):
    def start(scenario: Scenario, **params) -> FakeCell:
        cell = FakeCell(rclpy_context, scenario)
        spin(expert_node(rclpy_context, checkpoint, **params), cell)
        return cell
    return start


def test_chunks_with_reuse_counting_ages_and_the_gripper(run_cell):
    cell = run_cell(Scenario(), **RELAXED)
    assert cell.wait_for(lambda: len(cell.chunks) >= 12), len(cell.chunks)
    with cell.lock:
        chunks = list(cell.chunks)
        window_stamps = set(cell.window_stamps)
    # one sequence number per published chunk: increasing (a subscriber starved on a loaded
    # host may miss one of the KEEP_LAST 2 history; the gaps then say how many)
    sequences = [m.sequence for m in chunks]
    assert all(b > a for a, b in zip(sequences, sequences[1:])) and sequences[0] >= 1
    assert all(m.horizon == 8 and m.action_dim == 7 and len(m.actions) == 56 for m in chunks)
    assert all(m.mode == MODE_ASYNC and m.dt_s == pytest.approx(0.1) for m in chunks)
    # reuse index counts 1, 2, 3, ... per feature set, in publication order
    by_sequence: dict[int, list[int]] = {}
    for m in chunks:
        by_sequence.setdefault(m.feature_sequence, []).append(m.reuse_index)
    for seq, indices in by_sequence.items():
        if seq != chunks[0].feature_sequence:  # the first set may have started before
            assert indices == list(range(1, len(indices) + 1)), (seq, indices)
    assert len(by_sequence) >= 2, 'features never changed: reuse counting was not exercised'
    # feature age: at least the capture delay, never beyond the limit (1 s by default)
    ages = np.array([m.feature_age_s for m in chunks])
    assert ages.min() >= 0.05 - 1e-6 and ages.max() <= 1.0, ages
    for m in chunks:   # the sensor window used is one that was published
        assert round(conv.time_from_msg(m.sensor_window_stamp), 6) in window_stamps
        assert 0.0 <= m.sensor_age_s <= RELAXED['max_sensor_age_s']
    assert cell.wait_for(lambda: any(s.level == DiagnosticStatus.OK for s in cell.diagnostics))
    with cell.lock:
        values = {kv.key: kv.value for kv in cell.diagnostics[-1].values}
    # every refusal reason is a key from the start, so rqt can plot it before it happens
    assert {'drops.no_features', 'drops.sensor_too_old', 'drops.contract_mismatch'} <= set(values)


@pytest.mark.parametrize('scenario,reason,level', [
    (Scenario(feature_delay_s=3.0), 'features_too_old', DiagnosticStatus.WARN),
    (Scenario(valid_samples=40), 'window_incomplete', DiagnosticStatus.WARN),
    (Scenario(robot=False), 'no_robot_state', DiagnosticStatus.WARN),
    (Scenario(contract_hash='0000000000000000'), 'contract_mismatch', DiagnosticStatus.ERROR),
    (Scenario(bad_joints=True), 'bad_robot', DiagnosticStatus.WARN),   # the loop goes on
], ids=['features_too_old', 'window_incomplete', 'no_robot_state', 'contract_mismatch',
        'bad_robot'])
def test_staleness_rule_stops_chunks_and_reports_why(run_cell, scenario, reason, level):
    cell = run_cell(scenario, **RELAXED)

    def reported():
        return any(s.level == level and reason in s.message
                   and any(kv.key == f'drops.{reason}' and int(kv.value) > 0 for kv in s.values)
                   for s in cell.diagnostics)

    assert cell.wait_for(reported), [(s.level, s.message) for s in cell.diagnostics]
    assert cell.chunks == []


def test_ros2_control_joint_states_through_the_joint_map(rclpy_context, checkpoint, spin):
    cell = FakeCell(rclpy_context, Scenario(ros2_control=True, pose=False))
    node = expert_node(rclpy_context, checkpoint, **ROS2_CONTROL, **RELAXED)
    spin(node, cell)

    def refused_for_no_pose():
        return any('no_tool_pose' in s.message and any(
            kv.key == 'drops.no_tool_pose' and int(kv.value) > 0 for kv in s.values)
            for s in cell.diagnostics)

    assert cell.wait_for(refused_for_no_pose), [s.message for s in cell.diagnostics]
    assert cell.chunks == []
    held = node._inputs.held(JOINTS)        # the arm in action order, the gripper in 0..1
    np.testing.assert_allclose(held.joint_positions_rad, np.linspace(-1.0, 1.0, 6), atol=1e-6)
    assert held.gripper == pytest.approx(0.8) and held.joint_names == UR
    cell.scenario.pose = True               # robot/pose from the robot wire: chunks
    assert cell.wait_for(lambda: len(cell.chunks) >= 3), len(cell.chunks)


def test_sync_mode_requests_fresh_features_per_step(run_cell):
    cell = run_cell(Scenario(feature_hz=0.0), mode='sync', sync_timeout_s=2.0, **RELAXED)
    assert cell.wait_for(lambda: len(cell.chunks) >= 5), len(cell.chunks)
    with cell.lock:
        chunks = list(cell.chunks)
    assert all(m.mode == MODE_SYNC and m.reuse_index == 1 for m in chunks)
    sequences = [m.feature_sequence for m in chunks]
    assert len(set(sequences)) == len(sequences)
    assert cell.requests >= len(chunks)


# --- the live node's path and the offline path give the same decisions and chunks -----------

def recorded_inputs(duration_s: float = 3.0, t0: float = 1000.0):
    """Synthetic recorded inputs with gaps that make some ticks refuse, in stamp order."""
    rng = np.random.default_rng(1)
    events = []
    for k, t in enumerate(np.arange(t0 + 0.35, t0 + duration_s, 0.4)):   # ~2.5 Hz features
        events.append((t + 0.05, topics.FEATURES, features_data(t, k + 1, rng)))
    for t in np.arange(t0, t0 + duration_s, 1 / 65.0):
        if not t0 + 1.2 < t < t0 + 1.55:          # a 0.35 s sensor gap: sensor_too_old
            events.append((t, topics.SENSOR_WINDOW, window_data(t, rng)))
    for t in np.arange(t0, t0 + duration_s, 0.02):
        if not t0 + 2.2 < t < t0 + 2.5:           # a 0.3 s robot gap: robot_state_too_old
            events.append((t, topics.JOINT_STATES, robot_data(t, gripper=0.25 + 0.1 * t % 0.5)))
    events.sort(key=lambda e: e[0])
    return events


def messages_of(topic, data):
    if topic is topics.FEATURES:
        return [(topic, conv.vl_features_to_msg(data))]
    if topic is topics.SENSOR_WINDOW:
        return [(topic, conv.sensor_window_to_msg(data))]
    joints, pose = conv.robot_state_to_msgs(data)
    return [(topics.JOINT_STATES, joints), (topics.POSE, pose)]


def cdr(msg, msgtype: str, store) -> bytes:
    """Serialize an rclpy message for a bag: CDR without the serializer's trailing bytes.

    rclpy's serialize_message returns its buffer with a few bytes past the message, which
    rosbags refuses as a size mismatch; DDS hands a recorder the exact message.
    """
    data = serialize_message(msg)
    msgdef = store.get_msgdef(msgtype)
    _, end = msgdef.deserialize_cdr_le(data[4:], 0, msgdef.cls, store)
    return data[:4 + end]


def write_bag(path, events):
    store = bag.get_typestore()
    with bag.BagWriter(path) as writer:
        for entry in (topics.FEATURES, topics.SENSOR_WINDOW, topics.JOINT_STATES, topics.POSE):
            writer.add_topic(entry.name, entry.msgtype)
        for t, topic, data in events:
            for entry, msg in messages_of(topic, data):
                writer.write(entry.name, int(t * 1e9), cdr(msg, entry.msgtype, store))


def test_live_node_and_offline_runner_agree_on_recorded_inputs(rclpy_context, checkpoint,
                                                               spin, tmp_path):
    events = recorded_inputs()
    write_bag(tmp_path / 'inputs', events)
    # the node's own clock never ticks (use_sim_time without /clock): the test ticks it
    node = expert_node(rclpy_context, checkpoint, scheduler='timer', use_sim_time=True)
    feeder = Node('feeder', context=rclpy_context)
    pubs = {topics.FEATURES: feeder.create_publisher(VLFeatures, 'vla/features', LATEST_QOS),
            topics.SENSOR_WINDOW: feeder.create_publisher(SensorWindow, 'sensor/window',
                                                          WINDOW_QOS),
            topics.JOINT_STATES: feeder.create_publisher(conv.JointState, 'robot/joint_states',
                                                         ROBOT_QOS),
            topics.POSE: feeder.create_publisher(conv.PoseStamped, 'robot/pose', ROBOT_QOS)}
    spin(node, feeder)
    held = {entry: functools.partial(node._inputs.held, stream) for entry, stream in (
        (topics.FEATURES, FEATURES), (topics.SENSOR_WINDOW, WINDOW),
        (topics.JOINT_STATES, JOINTS), (topics.POSE, POSE))}

    def holds(entry, stamp_s: float) -> bool:   # what the node holds, converted at the edge
        item = held[entry]()
        return item is not None and abs(item.stamp_s - stamp_s) < 1e-6

    rec = load_recording(tmp_path / 'inputs', views=())
    inputs = RecordedInputs(rec)
    ticks = np.arange(1000.1, 1002.95, 0.1)
    offline = ExpertRunner(ExpertPolicy(checkpoint), StalenessLimits())
    live, expected, pending = [], [], list(events)
    for t in ticks:
        newest = {}
        while pending and pending[0][0] <= t + 1e-9:
            _, topic, data = pending.pop(0)
            for entry, msg in messages_of(topic, data):
                pubs[entry].publish(msg)
                newest[entry] = data.stamp_s
        for entry, when in newest.items():    # the node holds the newest of each stream
            assert wait_for(lambda: holds(entry, when), WAIT_S, 0.005), \
                (entry.name, held[entry](), when)
        live.append(node.tick(now_s=float(t)))
        features = inputs.features(t)        # and the robot when their views were taken
        expected.append(offline.tick(features, inputs.window(t), inputs.robot(t), float(t),
                                     capture_robot=inputs.capture(features)))
    reasons = [r.decision.reason or 'published' for r in live]
    assert reasons == [r.decision.reason or 'published' for r in expected]
    assert {'no_features', 'sensor_too_old', 'robot_state_too_old', 'published'} <= set(reasons)
    for a, b in zip(live, expected):
        if a.published:
            np.testing.assert_allclose(a.chunk.actions, b.chunk.actions, atol=1e-6)
            assert (a.chunk.stamp_s, a.chunk.reuse_index, a.chunk.feature_sequence) == \
                (b.chunk.stamp_s, b.chunk.reuse_index, b.chunk.feature_sequence)
    # the gripper sent reached the observation both ways
    assert inputs.robot(ticks[-1]).gripper == pytest.approx(node._inputs.held(JOINTS).gripper)
