"""The action_expert node on real DDS: rate, reuse counting, ages, staleness rules, sync mode.

A helper node plays the cell at realistic rates (features ~2.5 Hz, sensor windows 65 Hz, robot
state 50 Hz) into an in-process ActionExpertNode with a small untrained checkpoint; both spin in
one MultiThreadedExecutor in a background thread. Waits are bounded.
"""
from __future__ import annotations

import dataclasses
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
import numpy as np
import pytest
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from std_msgs.msg import Header

from vla_insertion import conversions as conv
from vla_insertion.core.data import MODE_ASYNC, MODE_SYNC, RobotState, SensorWindowData
from vla_insertion.core.data import VLFeatureData
from vla_insertion.core.feature_contract import FeatureContract
from vla_insertion.msg import ActionChunk, SensorWindow, VLFeatures
from vla_insertion.nodes.action_expert import ActionExpertNode
from vla_insertion.nodes.common import (
    DIAGNOSTICS_QOS, LATEST_QOS, STATE_QOS, WINDOW_QOS)
from vla_insertion.tools.make_untrained_checkpoint import make_untrained_checkpoint

CONTRACT = FeatureContract(model_id='tiny-test-vlm', reduction='image_token_grid_pool',
                           num_tokens=6, feature_dim=32, image_width=64, image_height=36,
                           view_names=('zed_1', 'oak'), prompt='insert')
CHANNELS = ('fx', 'fy', 'fz', 'tx', 'ty', 'tz', 'distance')


@dataclasses.dataclass
class Scenario:
    feature_hz: float = 2.5        # 0: answer vla/feature_request instead (sync mode)
    feature_delay_s: float = 0.05  # capture-to-publication delay of the features [s]
    contract_hash: str = CONTRACT.digest
    valid_samples: int = 65
    robot: bool = True


class FakeCell(Node):
    """Publishes features, sensor windows and robot state; records chunks and diagnostics."""

    def __init__(self, context, scenario: Scenario) -> None:
        super().__init__('fake_cell', context=context)
        self.scenario = scenario
        self.rng = np.random.default_rng(0)
        self.lock = threading.Lock()
        self.chunks: list[tuple[float, ActionChunk]] = []
        self.diagnostics: list[DiagnosticStatus] = []
        self.window_stamps: set[float] = set()
        self.feature_sequence = 0
        self.requests = 0
        self.features_pub = self.create_publisher(VLFeatures, 'vla/features', LATEST_QOS)
        self.window_pub = self.create_publisher(SensorWindow, 'sensor/window', WINDOW_QOS)
        self.joints_pub = self.create_publisher(conv.JointState, 'robot/joint_states', STATE_QOS)
        self.pose_pub = self.create_publisher(conv.PoseStamped, 'robot/pose', STATE_QOS)
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
        self.features_pub.publish(conv.vl_features_to_msg(VLFeatureData(
            stamp_s=self.now_s() - self.scenario.feature_delay_s, sequence=self.feature_sequence,
            features=self.rng.standard_normal((6, 32)).astype(np.float32),
            contract_hash=self.scenario.contract_hash, model_id=CONTRACT.model_id,
            untrained=True)))

    def _on_request(self, msg: Header) -> None:
        self.requests += 1
        self.publish_features()

    def _publish_window(self) -> None:
        samples = self.rng.standard_normal((65, 7)).astype(np.float32)
        samples[:65 - self.scenario.valid_samples] = np.nan
        stamp = round(self.now_s(), 6)
        with self.lock:
            self.window_stamps.add(stamp)
        self.window_pub.publish(conv.sensor_window_to_msg(SensorWindowData(
            stamp_s=stamp, samples=samples, valid_samples=self.scenario.valid_samples,
            sample_rate_hz=650.0, channel_names=CHANNELS)))

    def _publish_robot(self) -> None:
        state = RobotState(stamp_s=self.now_s(), joint_positions_rad=np.zeros(6),
                           tool_position_m=np.array([0.4, 0.0, 0.3]),
                           tool_orientation_xyzw=np.array([0.0, 0.0, 0.0, 1.0]))
        joints, pose = conv.robot_state_to_msgs(state)
        self.joints_pub.publish(joints)
        self.pose_pub.publish(pose)

    def _on_chunk(self, msg: ActionChunk) -> None:
        with self.lock:
            self.chunks.append((time.monotonic(), msg))

    def _on_diag(self, msg: DiagnosticArray) -> None:
        with self.lock:
            self.diagnostics.extend(s for s in msg.status if s.name == 'action_expert')

    def wait_for(self, predicate, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if predicate():
                    return True
            time.sleep(0.05)
        with self.lock:
            return predicate()


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    return make_untrained_checkpoint(tmp_path_factory.mktemp('expert') / 'small', CONTRACT,
                                     preset='small', seed=0)


@pytest.fixture
def run_cell(rclpy_context, checkpoint):
    """Start FakeCell and ActionExpertNode with parameter overrides; stop both afterwards."""
    started = []

    def start(scenario: Scenario, **params) -> FakeCell:
        overrides = [Parameter('checkpoint', value=str(checkpoint)),
                     Parameter('torch_threads', value=1)]
        overrides += [Parameter(k, value=v) for k, v in params.items()]
        expert = ActionExpertNode(context=rclpy_context, parameter_overrides=overrides)
        cell = FakeCell(rclpy_context, scenario)
        executor = MultiThreadedExecutor(num_threads=4, context=rclpy_context)
        executor.add_node(expert)
        executor.add_node(cell)
        thread = threading.Thread(target=executor.spin, daemon=True)
        thread.start()
        started.append((executor, thread, expert, cell))
        return cell

    yield start
    for executor, thread, expert, cell in started:
        executor.shutdown(timeout_sec=2.0)
        thread.join(timeout=5.0)
        expert.destroy_node()
        cell.destroy_node()


def test_chunks_at_rate_with_reuse_counting_and_ages(run_cell):
    cell = run_cell(Scenario())
    assert cell.wait_for(lambda: len(cell.chunks) >= 1, timeout_s=10.0), 'no chunk at all'
    assert cell.wait_for(lambda: len(cell.chunks) >= 31, timeout_s=10.0), len(cell.chunks)
    with cell.lock:
        chunks = [m for _, m in cell.chunks]
        window_stamps = set(cell.window_stamps)
    stamps = np.array([conv.time_from_msg(m.header.stamp) for m in chunks])
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    assert 8.0 <= rate <= 11.0, rate  # loose: the machine is shared; benchmarks time it
    assert [m.sequence for m in chunks] == list(range(chunks[0].sequence,
                                                      chunks[0].sequence + len(chunks)))
    assert all(m.horizon == 8 and m.action_dim == 7 and len(m.actions) == 56 for m in chunks)
    assert all(m.mode == MODE_ASYNC and m.dt_s == pytest.approx(0.1) for m in chunks)
    # reuse index counts 1, 2, 3, ... per feature set; ~4 chunks per set at 10 Hz / 2.5 Hz
    by_sequence: dict[int, list[int]] = {}
    for m in chunks:
        by_sequence.setdefault(m.feature_sequence, []).append(m.reuse_index)
    for seq, indices in by_sequence.items():
        if seq != chunks[0].feature_sequence:  # the first set may have started before
            assert indices == list(range(1, len(indices) + 1)), (seq, indices)
    complete = [len(v) for k, v in by_sequence.items()
                if k not in (chunks[0].feature_sequence, chunks[-1].feature_sequence)]
    assert complete and 2.5 <= np.mean(complete) <= 5.5, by_sequence
    # feature age: capture delay (0.05 s) + about one feature period (0.4 s), never negative
    ages = np.array([m.feature_age_s for m in chunks])
    assert ages.min() >= 0.04 and ages.max() <= 1.0, ages
    assert 0.1 <= np.median(ages) <= 0.5, ages
    # the sensor window used is one that was published, and fresh
    for m in chunks:
        assert round(conv.time_from_msg(m.sensor_window_stamp), 6) in window_stamps
        assert 0.0 <= m.sensor_age_s <= 0.1
        assert 0.0 < m.inference_ms < 1000.0
    assert cell.wait_for(lambda: any(s.level == DiagnosticStatus.OK for s in cell.diagnostics),
                         timeout_s=5.0)


@pytest.mark.parametrize('scenario,reason,level', [
    (Scenario(feature_delay_s=3.0), 'features_too_old', DiagnosticStatus.WARN),
    (Scenario(valid_samples=40), 'window_incomplete', DiagnosticStatus.WARN),
    (Scenario(robot=False), 'no_robot_state', DiagnosticStatus.WARN),
    (Scenario(contract_hash='0000000000000000'), 'contract_mismatch', DiagnosticStatus.ERROR),
], ids=['features_too_old', 'window_incomplete', 'no_robot_state', 'contract_mismatch'])
def test_staleness_rule_stops_chunks_and_reports_why(run_cell, scenario, reason, level):
    cell = run_cell(scenario, rate_hz=10.0)

    def reported():
        return any(s.level == level and reason in s.message
                   and any(kv.key == f'drops.{reason}' and int(kv.value) > 0 for kv in s.values)
                   for s in cell.diagnostics)

    assert cell.wait_for(reported, timeout_s=8.0), [
        (s.level, s.message) for s in cell.diagnostics]
    assert cell.chunks == []


def test_sync_mode_requests_fresh_features_per_step(run_cell):
    cell = run_cell(Scenario(feature_hz=0.0), mode='sync', sync_timeout_s=0.5)
    assert cell.wait_for(lambda: len(cell.chunks) >= 5, timeout_s=10.0), len(cell.chunks)
    with cell.lock:
        chunks = [m for _, m in cell.chunks]
    assert all(m.mode == MODE_SYNC and m.reuse_index == 1 for m in chunks)
    sequences = [m.feature_sequence for m in chunks]
    assert len(set(sequences)) == len(sequences)
    assert cell.requests >= len(chunks)
