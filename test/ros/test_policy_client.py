"""The policy_client node on real DDS against test servers of each protocol.

A helper node plays the cell (two camera views as JPEG, sensor windows, joint states and the
tool pose) into an in-process PolicyClientNode; the servers are test/protocol_servers.py's,
written from the protocols' documentation, answering in their own units (degrees, a 0..255
gripper, 10 actions). The chunks on vla/action_chunk equal the replies mapped; a server error,
a pickled reply and a dead server are refused and counted in /diagnostics. Waits are bounded
waits on conditions; nothing asserts a time.
"""
from __future__ import annotations

import io
import pickle
import threading

from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
from PIL import Image
from protocol_servers import ERROR, Gr00tTestServer, OpenpiTestServer, RAW
import pytest
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage
from support import spinning, wait_for

from vla_insertion import conversions as conv
from vla_insertion.core.data import CameraFrame, RobotState, SensorWindowData
from vla_insertion.msg import ActionChunk, SensorWindow
from vla_insertion.nodes.policy_client import PolicyClientNode
from vla_insertion.ros.qos import DIAGNOSTICS_QOS, qos_profile, ROBOT_QOS, STATE_QOS, WINDOW_QOS

DEG = np.pi / 180.0
JOINTS = np.array([0.1, -1.2, 1.3, -1.5, -1.6, 0.2])
CHANNELS = ('fx', 'fy', 'fz', 'tx', 'ty', 'tz', 'distance')
WAIT_S = 30.0
PARAMS = {'image_views': ['zed_1', 'oak'], 'image_keys': ['front', 'wrist'],
          'image_width': 32, 'image_height': 24, 'state_keys': ['arm=joints', 'hand=gripper'],
          'action_keys': ['arm', 'hand'], 'action_indices': [0, 1, 2, 3, 4, 5, 7],
          'action_scale': [DEG] * 6 + [1 / 255.0], 'action_horizon': 8,
          'max_sensor_age_s': 1.0, 'max_robot_age_s': 1.0, 'reply_timeout_s': 2.0,
          'reconnect_min_s': 0.05, 'reconnect_max_s': 0.2}


class Cell(Node):
    def __init__(self, context) -> None:
        super().__init__('policy_client_test_cell', context=context)
        self.lock = threading.Lock()
        self.chunks: list[ActionChunk] = []
        self.diagnostics: list[dict] = []
        out = io.BytesIO()
        Image.new('RGB', (64, 48), (10, 200, 30)).save(out, 'JPEG')
        self.jpeg = out.getvalue()
        self.cameras = {v: self.create_publisher(CompressedImage, f'cameras/{v}/image/compressed',
                                                 qos_profile('sensor')) for v in ('zed_1', 'oak')}
        self.window_pub = self.create_publisher(SensorWindow, 'sensor/window', WINDOW_QOS)
        self.joints_pub = self.create_publisher(conv.JointState, 'robot/joint_states', ROBOT_QOS)
        self.pose_pub = self.create_publisher(conv.PoseStamped, 'robot/pose', ROBOT_QOS)
        self.create_subscription(ActionChunk, 'vla/action_chunk', self._on_chunk, STATE_QOS)
        self.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, DIAGNOSTICS_QOS)
        self.create_timer(0.05, self._publish)

    def _publish(self) -> None:
        now = self.get_clock().now().nanoseconds * 1e-9
        for view, pub in self.cameras.items():
            pub.publish(conv.camera_frame_to_msg(CameraFrame(view, now, self.jpeg)))
        self.window_pub.publish(conv.sensor_window_to_msg(SensorWindowData(
            now, np.zeros((65, 7), np.float32), 65, 650.0, CHANNELS)))
        joints, pose = conv.robot_state_to_msgs(RobotState(
            now, JOINTS, np.array([0.4, 0.0, 0.3]), np.array([0.0, 0.0, 0.0, 1.0]), gripper=0.5))
        self.joints_pub.publish(joints)
        self.pose_pub.publish(pose)

    def _on_chunk(self, msg: ActionChunk) -> None:
        with self.lock:
            self.chunks.append(msg)

    def _on_diag(self, msg: DiagnosticArray) -> None:
        with self.lock:
            self.diagnostics += [{kv.key: kv.value for kv in s.values} for s in msg.status
                                 if s.name == 'policy_client']

    def newest_diagnostics(self) -> dict:
        with self.lock:
            return self.diagnostics[-1] if self.diagnostics else {}


class Replies:
    """A fresh reply per request (its index k in the arm's degrees), or a scripted one."""

    def __init__(self, protocol: str) -> None:
        self.protocol, self.script, self.sent = protocol, [], []

    def __call__(self, request):
        if self.script:
            return self.script.pop(0)
        k = len(self.sent)
        arm = (10.0 * k + np.arange(60).reshape(10, 6)).astype(np.float32)
        hand = np.stack([np.zeros(10), np.linspace(0, 255, 10)], 1).astype(np.float32)
        self.sent.append((arm, hand))
        return {'arm': arm, 'hand': hand} if self.protocol == 'openpi' else \
            {'arm': arm[None], 'hand': hand[None]}


def expected(arm: np.ndarray, hand: np.ndarray) -> np.ndarray:
    return np.concatenate([arm[:8] * DEG, hand[:8, 1:] / 255.0], axis=1)


@pytest.fixture(params=['openpi', 'gr00t'])
def setup(request, rclpy_context):
    replies = Replies(request.param)
    server = (OpenpiTestServer if request.param == 'openpi' else Gr00tTestServer)(replies)
    params = {**PARAMS, 'protocol': request.param, 'server_port': server.port,
              'prompt_key': 'prompt' if request.param == 'openpi' else 'task'}
    node = PolicyClientNode(context=rclpy_context, parameter_overrides=[
        Parameter(k, value=v) for k, v in params.items()])
    cell = Cell(rclpy_context)
    with spinning(rclpy_context, node, cell):
        yield replies, server, cell
    server.stop()


def test_chunks_are_the_replies_mapped_and_failures_are_counted(setup):
    replies, server, cell = setup
    assert wait_for(lambda: len(cell.chunks) >= 3, WAIT_S)
    with cell.lock:
        chunks = list(cell.chunks)
    for chunk in chunks:
        actions = np.array(chunk.actions, np.float32).reshape(chunk.horizon, chunk.action_dim)
        k = int(round(actions[0, 0] / DEG / 10.0))        # the reply's index, from its values
        np.testing.assert_allclose(actions, expected(*replies.sent[k]), rtol=1e-5, atol=1e-6)
        assert chunk.untrained is False and chunk.dt_s == pytest.approx(0.1)
    assert [c.sequence for c in chunks] == list(range(1, len(chunks) + 1))
    replies.script += [ERROR('ValueError: no such camera'),
                       RAW(pickle.dumps({'arm': np.zeros((10, 6))}))]
    assert wait_for(lambda: cell.newest_diagnostics().get('bad_reply.pickled') == '1', WAIT_S)
    diagnostics = cell.newest_diagnostics()
    assert diagnostics['drops.server_error'] == '1' and diagnostics['drops.bad_reply'] == '1'
    assert diagnostics['untrained'] == 'False' and diagnostics['connection'] in (
        'connected', 'waiting', 'connecting')
    n = len(cell.chunks)
    assert wait_for(lambda: len(cell.chunks) > n + 2, WAIT_S)       # it goes on after both
    server.stop()
    assert wait_for(lambda: int(cell.newest_diagnostics().get(
        'drops.server_unreachable', '0')) > 0, WAIT_S)
    assert cell.newest_diagnostics()['connection'] != 'connected'
