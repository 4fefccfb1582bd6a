"""policy_client's core against test servers of each protocol (test/protocol_servers.py).

The runner of the policy_client node (core/remote/policy.py remote_runner: the expert's rules,
stamps and refusals around RemotePolicy) on loopback: chunks equal the server's reply mapped,
requests are laid out as the protocols document, and every failure is a counted refusal.
Waits are bounded waits on conditions; nothing here asserts a time.
"""
from __future__ import annotations

import io
import pickle

import numpy as np
from PIL import Image
from protocol_servers import ERROR, Gr00tTestServer, OpenpiTestServer, RAW, SILENT
import pytest
from support import free_port, wait_for

from vla_insertion.core.config import PolicyClientConfig
from vla_insertion.core.data import CameraFrame, RobotState, SensorWindowData
from vla_insertion.core.remote.mapping import NewestViews
from vla_insertion.core.remote.policy import remote_runner

DEG = np.pi / 180.0
JOINTS = np.array([0.1, -1.2, 1.3, -1.5, -1.6, 0.2])
CHANNELS = ('fx', 'fy', 'fz', 'tx', 'ty', 'tz', 'distance')
FAST = {'reply_timeout_s': 0.5, 'connect_timeout_s': 1.0, 'reconnect_min_s': 0.05,
        'reconnect_max_s': 0.2}
# the server's "embodiment": 6 arm joints in degrees, a 2-dim hand whose second dim is the
# gripper in 0..255, 10 actions per reply; we keep 8
MAPPING = {'action_keys': ('arm', 'hand'), 'action_indices': (0, 1, 2, 3, 4, 5, 7),
           'action_scale': (DEG,) * 6 + (1 / 255.0,), 'action_horizon': 8}
LAYOUT = {
    'openpi': {'image_views': ('zed_1', 'oak'),
               'image_keys': ('observation/exterior_image_1_left',
                              'observation/wrist_image_left'),
               'state_keys': ('observation/joint_position=joints',
                              'observation/gripper_position=gripper'),
               'prompt_key': 'prompt'},
    'gr00t': {'image_views': ('zed_1', 'oak'), 'image_keys': ('ego_view', 'wrist_view'),
              'state_keys': ('arm=joints', 'hand=gripper'),
              'prompt_key': 'annotation.human.task_description'},
}


def jpeg() -> bytes:
    out = io.BytesIO()
    Image.new('RGB', (64, 48), (10, 200, 30)).save(out, 'JPEG')
    return out.getvalue()


class Replies:
    """The server's answers: a fresh chunk per request (its index in the values), or a script."""

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self.script: list = []
        self.sent: list[dict] = []

    def __call__(self, request):
        if self.script:
            return self.script.pop(0)
        k = len(self.sent)
        arm = 10.0 * k + np.arange(60, dtype=np.float32).reshape(10, 6)           # degrees
        hand = np.stack([np.zeros(10), np.linspace(0, 255, 10)], 1).astype(np.float32)
        reply = {'arm': arm, 'hand': hand} if self.protocol == 'openpi' else \
            {'arm': arm[None], 'hand': hand[None]}
        self.sent.append(reply)
        return reply


@pytest.fixture(params=['openpi', 'gr00t'])
def served(request):
    protocol = request.param
    replies = Replies(protocol)
    server = (OpenpiTestServer if protocol == 'openpi' else Gr00tTestServer)(replies)
    cfg = PolicyClientConfig(protocol=protocol, server_port=server.port, image_width=32,
                             image_height=24, prompt='insert it', **LAYOUT[protocol],
                             **MAPPING, **FAST)
    runner = remote_runner(cfg)
    client = runner.policy.client.start()
    yield protocol, server, replies, runner, client
    client.stop()
    server.stop()


def inputs(now_s: float, view_age_s: float = 0.05):
    views = NewestViews(('zed_1', 'oak'))
    views.put(CameraFrame('zed_1', now_s - view_age_s, jpeg()))
    viewset = views.put(CameraFrame('oak', now_s - view_age_s - 0.01, jpeg()))
    window = SensorWindowData(now_s - 0.01, np.zeros((65, 7), np.float32), 65, 650.0, CHANNELS)
    robot = RobotState(now_s - 0.01, JOINTS, np.array([0.4, 0.0, 0.3]),
                       np.array([0.0, 0.0, 0.0, 1.0]), gripper=0.5)
    return viewset, window, robot


def tick(runner, now_s: float = 100.0, **kw):
    return runner.tick(*inputs(now_s, **kw), now_s)


def mapped(reply: dict) -> np.ndarray:
    arm, hand = (np.asarray(reply[k]).reshape(-1, reply[k].shape[-1]) for k in ('arm', 'hand'))
    return np.concatenate([arm[:8] * DEG, hand[:8, 1:] / 255.0], axis=1)


def drops(runner) -> dict:
    return {k[6:]: v for k, v in runner.stats.values().items() if k.startswith('drops.')}


def test_chunks_equal_the_reply_mapped_and_requests_follow_the_protocol(served):
    protocol, server, replies, runner, client = served
    assert client.wait_connected(10.0), client.why
    for i in range(3):
        result = tick(runner, 100.0 + i)
        assert result.published, result.decision
        chunk = result.chunk
        np.testing.assert_allclose(chunk.actions, mapped(replies.sent[i]), rtol=1e-6, atol=1e-7)
        assert chunk.actions.shape == (8, 7) and chunk.dt_s == 0.1
        assert chunk.stamp_s == 100.0 + i - 0.01 and chunk.sequence == i + 1   # the state's
        assert chunk.untrained is False and chunk.inference_ms > 0
        assert chunk.feature_age_s == pytest.approx(0.06)          # the oldest view's age
    request = server.requests[0]
    if protocol == 'openpi':
        obs = request
        image = obs['observation/wrist_image_left']
        state = obs['observation/joint_position']
        assert obs['prompt'] == 'insert it'
    else:
        assert request['endpoint'] == 'get_action'
        obs = request['data']['observation']
        image = obs['video']['wrist_view'][0, 0]
        assert obs['video']['wrist_view'].shape[:2] == (1, 1)
        state = obs['state']['arm'][0, 0]
        assert obs['language'] == {'annotation.human.task_description': [['insert it']]}
        assert request['data']['options'] is None
    assert image.dtype == np.uint8 and image.shape == (24, 32, 3)
    assert state.dtype == np.float32
    np.testing.assert_allclose(state, JOINTS, rtol=1e-6)
    assert client.values()['rtt_ms_mean'] > 0 and client.connects == 1


def test_a_server_error_is_a_counted_refusal(served):
    protocol, server, replies, runner, client = served
    assert client.wait_connected(10.0), client.why
    replies.script.append(ERROR('Traceback ...\nValueError: no such camera'))
    result = tick(runner)
    assert not result.published and result.decision.reason == 'server_error'
    assert 'no such camera' in result.decision.detail
    if protocol == 'openpi':      # the server closed: the client reconnects
        assert wait_for(lambda: client.connects == 2, 10.0), client.why
    assert wait_for(lambda: tick(runner).published, 10.0)
    assert drops(runner)['server_error'] == 1


def test_malformed_and_pickled_replies_are_refused_and_counted(served):
    protocol, server, replies, runner, client = served
    assert client.wait_connected(10.0), client.why
    replies.script += [RAW(pickle.dumps({'arm': np.zeros((10, 6))})), RAW(b'\xc1 garbage'),
                       {'arm': np.zeros((10, 6), np.float32)}]           # no 'hand'
    reasons = [tick(runner).decision for _ in range(3)]
    assert [d.reason for d in reasons] == ['bad_reply'] * 3, reasons
    counts = client.bad_replies.as_dict()
    assert (counts['pickled'], counts['not_msgpack'], counts['missing_key']) == (1, 1, 1)
    assert drops(runner)['bad_reply'] == 3
    assert tick(runner).published and client.connects == 1      # the connection stays


def test_a_hung_server_times_out_and_the_connection_is_remade(served):
    protocol, server, replies, runner, client = served
    assert client.wait_connected(10.0), client.why
    replies.script.append(SILENT)
    result = tick(runner)
    assert result.decision.reason == 'reply_timeout'
    assert not client.connected            # a late reply would answer the next request
    if protocol == 'openpi':               # the server still answers on a new connection
        assert wait_for(lambda: client.connects == 2, 10.0), client.why
        assert wait_for(lambda: tick(runner).published, 10.0)
    else:                                  # a REP socket stuck in its request: pings go unanswered
        assert wait_for(lambda: client.failed_connects >= 1, 10.0)
        assert tick(runner).decision.reason == 'server_unreachable'
    assert drops(runner)['reply_timeout'] == 1


def test_a_server_that_dies_is_unreachable(served):
    protocol, server, replies, runner, client = served
    assert client.wait_connected(10.0), client.why
    assert tick(runner).published
    server.stop()
    assert wait_for(lambda: tick(runner).decision.reason == 'server_unreachable', 10.0)
    assert drops(runner)['server_unreachable'] >= 1
    assert not client.connected


@pytest.mark.parametrize('protocol', ['openpi', 'gr00t'])
def test_no_server_refuses_at_once_and_keeps_trying(protocol):
    cfg = PolicyClientConfig(protocol=protocol, server_port=free_port(), **FAST)
    runner = remote_runner(cfg)
    client = runner.policy.client.start()
    try:
        result = tick(runner)
        assert result.decision.reason == 'server_unreachable'
        assert wait_for(lambda: client.failed_connects >= 2, 10.0)
        assert 'next try' in client.why
    finally:
        client.stop()


def test_stale_inputs_never_reach_the_server(served):
    protocol, server, replies, runner, client = served
    assert client.wait_connected(10.0), client.why
    result = tick(runner, view_age_s=5.0)
    assert result.decision.reason == 'features_too_old'
    assert runner.tick(None, *inputs(100.0)[1:], 100.0).decision.reason == 'no_features'
    assert server.requests == []


def test_gr00t_token_and_the_committed_prefix():
    replies = Replies('gr00t')
    server = Gr00tTestServer(replies, api_token='s3cret')
    cfg = PolicyClientConfig(protocol='gr00t', server_port=server.port, api_token='s3cret',
                             send_prefix=True, **LAYOUT['gr00t'], **MAPPING, **FAST)
    runner = remote_runner(cfg)
    client = runner.policy.client.start()
    try:
        assert client.wait_connected(10.0), client.why
        viewset, window, robot = inputs(100.0)
        assert runner.tick(viewset, window, robot, 100.0).published
        assert server.requests[0]['data']['options'] is None       # no reply seen yet
        committed = mapped(replies.sent[0])[:3]
        viewset, window, robot = inputs(100.1)
        assert runner.tick(viewset, window, robot, 100.1, prefix=committed).published
        request = server.requests[1]['data']
        assert request['options'] == {'action_horizon': 3, 'rtc_overlap_steps': 3,
                                      'rtc_frozen_steps': 3, 'rtc_ramp_rate': 6.0}
        previous = request['observation']['action']
        np.testing.assert_allclose(previous['arm'][0], replies.sent[0]['arm'][0, :3], rtol=1e-5)
        np.testing.assert_allclose(previous['hand'][0, :, 1], replies.sent[0]['hand'][0, :3, 1],
                                   rtol=1e-5)
    finally:
        client.stop()
        server.stop()
