"""The scripted demonstrator served over each protocol (core/remote/reference.py with our servers).

What tools/serve_policy.py serves: through the default policy_client mapping, the chunk the
client gets is the demonstrator's own chunk for the same measured state.
"""
from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image
import pytest
from support import wait_for

from vla_insertion.core.config import PolicyClientConfig
from vla_insertion.core.data import CameraFrame, SensorWindowData
from vla_insertion.core.remote.gr00t import Gr00tServer
from vla_insertion.core.remote.mapping import NewestViews
from vla_insertion.core.remote.openpi import OpenpiServer
from vla_insertion.core.remote.policy import remote_runner
from vla_insertion.core.remote.reference import METADATA, ServedReference
from vla_insertion.core.sim.cell import SimCell
from vla_insertion.core.sim.reference import EpisodeReference
from vla_insertion.core.wire import EpisodeMessage

FAST = {'reply_timeout_s': 2.0, 'connect_timeout_s': 2.0, 'reconnect_min_s': 0.05,
        'reconnect_max_s': 0.2}
SERVERS = {'openpi': (OpenpiServer, 'openpi'), 'gr00t': (Gr00tServer, 'gr00t')}


def report(state: str = 'running', episode: int = 3) -> EpisodeMessage:
    return EpisodeMessage(sender_time_s=0.0, event='status', episode=episode, seed=7,
                          hole_m=(0.0, 0.0, 0.0), control='commands', state=state,
                          elapsed_s=1.0)


def inputs(now_s: float):
    out = io.BytesIO()
    Image.new('RGB', (64, 48)).save(out, 'JPEG')
    views = NewestViews(('oak',)).put(CameraFrame('oak', now_s - 0.05, out.getvalue()))
    window = SensorWindowData(now_s, np.zeros((65, 7), np.float32), 65, 650.0,
                              ('fx', 'fy', 'fz', 'tx', 'ty', 'tz', 'distance'))
    robot = dataclasses.replace(SimCell().state().robot_state(), stamp_s=now_s)
    return views, window, robot


@pytest.fixture(params=['openpi', 'gr00t'])
def served(request):
    episodes = {'now': report()}
    reference = ServedReference(lambda: episodes['now'])
    cls, method = SERVERS[request.param]
    server = cls(getattr(reference, method), metadata=METADATA).start()
    runner = remote_runner(PolicyClientConfig(protocol=request.param, server_port=server.port,
                                              **FAST))
    client = runner.policy.client.start()
    yield request.param, episodes, runner, client
    client.stop()
    server.stop()


def test_the_client_gets_the_demonstrators_chunk(served):
    protocol, episodes, runner, client = served
    assert client.wait_connected(10.0), client.why
    views, window, robot = inputs(50.0)
    result = runner.tick(views, window, robot, 50.0)
    assert result.published, result.decision
    expected = EpisodeReference().act(report(), robot)
    np.testing.assert_allclose(result.chunk.actions, expected.actions, atol=1e-6)
    assert client.metadata.get('policy', 'gr00t pings') in (METADATA['policy'], 'gr00t pings')


def test_between_episodes_the_server_fails_the_request(served):
    protocol, episodes, runner, client = served
    assert client.wait_connected(10.0), client.why
    episodes['now'] = report('settling')
    result = runner.tick(*inputs(50.0), 50.0)
    assert result.decision.reason == 'server_error'
    assert 'episode 3 settling' in result.decision.detail
    episodes['now'] = report('running', episode=4)
    assert wait_for(lambda: runner.tick(*inputs(51.0), 51.0).published, 10.0)


def test_gr00t_rtc_inputs_freeze_the_committed_steps():
    reference = ServedReference(lambda: report())
    _views, _window, robot = inputs(0.0)
    state = {'joints': robot.joint_positions_rad.astype(np.float32),
             'gripper': np.array([robot.gripper], np.float32),
             'tool': np.r_[robot.tool_position_m, robot.tool_orientation_xyzw].astype(np.float32)}
    obs = {'video': {'wrist': np.zeros((1, 1, 8, 8, 3), np.uint8)},
           'state': {k: v[None, None] for k, v in state.items()},
           'language': {'task': [['insert']]}}
    plain = reference.gr00t(obs, None)
    previous = {'joints': np.full((1, 3, 6), 0.25, np.float32),
                'gripper': np.full((1, 3, 1), 1.0, np.float32)}
    options = {'action_horizon': 3, 'rtc_overlap_steps': 2, 'rtc_frozen_steps': 2,
               'rtc_ramp_rate': 6.0}
    frozen = reference.gr00t({**obs, 'action': previous}, options)
    np.testing.assert_allclose(frozen['joints'][0, :2], 0.25)
    np.testing.assert_allclose(frozen['joints'][0, 2:], plain['joints'][0, 2:], atol=1e-6)


def test_openpi_server_checks_the_api_key():
    server = OpenpiServer(lambda obs: {}, api_token='k').start()
    try:
        for token, ok in (('wrong', False), ('k', True)):
            runner = remote_runner(PolicyClientConfig(server_port=server.port, api_token=token,
                                                      **FAST))
            client = runner.policy.client.start()
            try:
                assert client.wait_connected(3.0) is ok
                assert ok or '401' in client.why
            finally:
                client.stop()
    finally:
        server.stop()
