"""The action expert as a managed node, driven through its lifecycle services.

A real action_expert process (run_node, autostart) and a feeder node that plays the cell
(features, sensor windows, robot state) and the VLM's vla/feature_contract. The test calls
`/action_expert/change_state` and `get_state` (what `ros2 lifecycle set/get` call) and the
parameter services: deactivate stops the chunks, a checkpoint cannot change while configured,
cleanup + set + configure + activate swaps it without restarting the process, and a contract
mismatch after the swap is reported naming the differing field (the instruction in the prompt).

"Publishing stopped" is judged by the expert's own /diagnostics, which keep coming once a
second in every state: no chunk arrives across two reports that say `inactive`. No rate or
latency is asserted.

The expert spins on the fallback MultiThreadedExecutor (`VLA_EXECUTOR=multi_threaded`), the
executor every node runs on Humble, where rclpy has no EventsExecutor: this module is the
suite's run of that path (subscriptions, timers, lifecycle and parameter services, shutdown).
"""
from __future__ import annotations

from pathlib import Path
import signal
import subprocess
import sys
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
import numpy as np
import pytest
from rcl_interfaces.srv import SetParameters
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from std_msgs.msg import String

from vla_insertion import conversions as conv
from vla_insertion.core import topics
from vla_insertion.core.data import RobotState, SensorWindowData, VLFeatureData
from vla_insertion.core.expert.presets import make_untrained_checkpoint
from vla_insertion.core.feature_contract import FeatureContract
from vla_insertion.msg import ActionChunk, SensorWindow, VLFeatures
from vla_insertion.ros.qos import publisher, subscription

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 120.0
NEEDLE = FeatureContract(model_id='tiny-test-vlm', reduction='image_token_grid_pool',
                         num_tokens=6, feature_dim=32, image_width=64, image_height=36,
                         view_names=('zed_1', 'oak'),
                         prompt='<zed_1><oak> Insert the needle into the target.')
PEG = FeatureContract(**{**NEEDLE.to_dict(), 'view_names': NEEDLE.view_names,
                         'prompt': '<zed_1><oak> Insert the peg into the hole.'})
CHANNELS = ('fx', 'fy', 'fz', 'tx', 'ty', 'tz', 'distance')


class Feeder(Node):
    """Plays the VLM (features + contract), the sensor and the robot; records the expert."""

    def __init__(self, context) -> None:
        super().__init__('feeder', context=context)
        self.rng = np.random.default_rng(0)
        self.lock = threading.Lock()
        self.contract = NEEDLE
        self.chunks: list[ActionChunk] = []
        self.reports: list[dict] = []        # the expert's diagnostics: level, message, values
        self.sequence = 0
        self.features_pub = publisher(self, VLFeatures, topics.FEATURES)
        self.contract_pub = publisher(self, String, topics.FEATURE_CONTRACT)
        self.window_pub = publisher(self, SensorWindow, topics.SENSOR_WINDOW)
        self.joints_pub = publisher(self, conv.JointState, topics.JOINT_STATES)
        self.pose_pub = publisher(self, conv.PoseStamped, topics.POSE)
        subscription(self, ActionChunk, topics.ACTION_CHUNK, self._on_chunk)
        subscription(self, DiagnosticArray, topics.DIAGNOSTICS, self._on_diag)
        self.use_contract(NEEDLE)
        self.create_timer(0.2, self._features)
        self.create_timer(1 / 65, self._window)
        self.create_timer(1 / 50, self._robot)

    def now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def use_contract(self, contract: FeatureContract) -> None:
        """Play a VLM with this contract from now on (transient local: late joiners get it)."""
        with self.lock:
            self.contract = contract
        self.contract_pub.publish(String(data=contract.to_json()))

    def _features(self) -> None:
        self.sequence += 1
        with self.lock:
            digest = self.contract.digest
        self.features_pub.publish(conv.vl_features_to_msg(VLFeatureData(
            stamp_s=self.now_s() - 0.05, sequence=self.sequence,
            features=self.rng.standard_normal((6, 32)).astype(np.float32),
            contract_hash=digest, model_id=NEEDLE.model_id, untrained=True)))

    def _window(self) -> None:
        self.window_pub.publish(conv.sensor_window_to_msg(SensorWindowData(
            stamp_s=self.now_s(), samples=self.rng.standard_normal((65, 7)).astype(np.float32),
            valid_samples=65, sample_rate_hz=650.0, channel_names=CHANNELS)))

    def _robot(self) -> None:
        joints, pose = conv.robot_state_to_msgs(RobotState(
            stamp_s=self.now_s(), joint_positions_rad=np.zeros(6),
            tool_position_m=np.array([0.4, 0.0, 0.3]),
            tool_orientation_xyzw=np.array([0.0, 0.0, 0.0, 1.0]), gripper=0.5))
        self.joints_pub.publish(joints)
        self.pose_pub.publish(pose)

    def _on_chunk(self, msg: ActionChunk) -> None:
        with self.lock:
            self.chunks.append(msg)

    def _on_diag(self, msg: DiagnosticArray) -> None:
        with self.lock:
            self.reports += [{'level': s.level, 'message': s.message,
                              **{kv.key: kv.value for kv in s.values}}
                             for s in msg.status if s.name == 'action_expert']

    def count(self) -> tuple[int, int]:
        with self.lock:
            return len(self.chunks), len(self.reports)

    def wait_for(self, predicate, timeout_s: float = WAIT_S) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if predicate():
                    return True
            time.sleep(0.05)
        with self.lock:
            return predicate()


@pytest.fixture(scope='module')
def ros_env(ros_env):
    """Return the programs' environment on the fallback executor (Humble's), not the events one."""
    return {**ros_env, 'VLA_EXECUTOR': 'multi_threaded'}


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp('experts')
    return {name: make_untrained_checkpoint(folder / name, contract, preset='small', seed=0)
            for name, contract in (('needle', NEEDLE), ('peg', PEG))}


def test_lifecycle_services_stop_start_and_swap_the_checkpoint(
        ros_env, rclpy_context, call_service, checkpoints, tmp_path):
    log = tmp_path / 'action_expert.log'
    with open(log, 'w') as out:
        proc = subprocess.Popen(
            [sys.executable, '-m', 'vla_insertion.nodes.action_expert', '--ros-args',
             '-p', f'checkpoint:={checkpoints["needle"]}', '-p', 'torch_threads:=1',
             '-p', 'max_sensor_age_s:=1.0', '-p', 'max_robot_age_s:=1.0'],
            env=ros_env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    feeder = Feeder(rclpy_context)
    executor = MultiThreadedExecutor(num_threads=3, context=rclpy_context)
    executor.add_node(feeder)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()

    def state() -> str:
        response = call_service(feeder, GetState, '/action_expert/get_state',
                                GetState.Request(), timeout_s=WAIT_S)
        assert response is not None, log.read_text()[-3000:]
        return response.current_state.label

    def transition(transition_id: int) -> bool:
        response = call_service(feeder, ChangeState, '/action_expert/change_state',
                                ChangeState.Request(transition=Transition(id=transition_id)),
                                timeout_s=WAIT_S)
        assert response is not None
        return response.success

    def set_checkpoint(name: str):
        response = call_service(feeder, SetParameters, '/action_expert/set_parameters',
                                SetParameters.Request(parameters=[Parameter(
                                    'checkpoint', value=str(checkpoints[name])
                                ).to_parameter_msg()]))
        return response.results[0]

    def quiet_across_reports(label: str) -> bool:
        """No chunk arrives across two reports that say `label` (the node's own clock)."""
        assert feeder.wait_for(lambda: feeder.reports
                               and feeder.reports[-1]['lifecycle_state'] == label)
        chunks, reports = feeder.count()
        assert feeder.wait_for(lambda: len(feeder.reports) >= reports + 2)
        return feeder.count()[0] == chunks

    try:
        assert state() == 'active'                     # autostart
        assert feeder.wait_for(lambda: len(feeder.chunks) >= 3), log.read_text()[-3000:]

        assert transition(Transition.TRANSITION_DEACTIVATE)
        assert state() == 'inactive'
        assert quiet_across_reports('inactive'), 'chunks kept coming while inactive'
        refused = set_checkpoint('peg')                # still configured: refused, with why
        assert not refused.successful and 'unconfigured' in refused.reason

        assert transition(Transition.TRANSITION_ACTIVATE)
        before = feeder.count()[0]
        assert feeder.wait_for(lambda: len(feeder.chunks) >= before + 3), 'did not resume'

        # swap the checkpoint in place: deactivate, cleanup, set, configure, activate
        assert transition(Transition.TRANSITION_DEACTIVATE)
        assert transition(Transition.TRANSITION_CLEANUP)
        assert state() == 'unconfigured'
        assert quiet_across_reports('unconfigured')
        assert set_checkpoint('peg').successful
        assert transition(Transition.TRANSITION_CONFIGURE)
        assert transition(Transition.TRANSITION_ACTIVATE)
        assert state() == 'active'
        assert feeder.wait_for(lambda: feeder.reports[-1].get('contract') == PEG.digest)

        # the VLM still runs the needle instruction: refused, and the report says why
        assert feeder.wait_for(lambda: 'prompt:' in feeder.reports[-1]['message'])
        report = feeder.reports[-1]
        assert 'contract_mismatch' in report['message'], report
        assert 'Insert the needle into the target.' in report['message']
        assert 'Insert the peg into the hole.' in report['message']
        assert int(report['drops.contract_mismatch']) > 0

        # the VLM switches to the peg instruction: the swapped checkpoint acts on it
        feeder.use_contract(PEG)
        before = feeder.count()[0]
        assert feeder.wait_for(lambda: len(feeder.chunks) >= before + 3)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=30)
        finally:
            executor.shutdown(timeout_sec=5.0)
            spinner.join(timeout=10.0)
            feeder.destroy_node()
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert 'prompt:' in text and 'every feature set will be refused' in text   # logged once
    assert 'fallback MultiThreadedExecutor (VLA_EXECUTOR=multi_threaded)' in text
    assert 'Traceback' not in text
