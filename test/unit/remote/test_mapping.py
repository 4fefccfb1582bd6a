"""The observation and action mappings of a remote policy, and their configuration."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image
import pytest

from vla_insertion.core.config import ConfigError, PolicyClientConfig
from vla_insertion.core.data import CameraFrame, RobotState, SensorWindowData
from vla_insertion.core.remote.mapping import (
    ActionMapping, NewestViews, ObservationMapping, parse_state_keys)
from vla_insertion.core.remote.refusals import (
    BAD_SHAPE, BadObservation, BadReply, MISSING_KEY, NON_FINITE)

DEG = np.pi / 180.0
JOINTS = np.array([0.1, -1.2, 1.3, -1.5, -1.6, 0.2])
CHANNELS = ('fx', 'fy', 'fz', 'tx', 'ty', 'tz', 'distance')


def jpeg(width: int, height: int, colour=(200, 30, 10)) -> bytes:
    out = io.BytesIO()
    Image.new('RGB', (width, height), colour).save(out, 'JPEG', quality=95)
    return out.getvalue()


def robot() -> RobotState:
    return RobotState(1.0, JOINTS, np.array([0.4, 0.0, 0.3]), np.array([0.0, 0.0, 0.0, 1.0]),
                      gripper=0.75)


def window() -> SensorWindowData:
    samples = np.zeros((65, 7), np.float32)
    samples[-1] = [1, 2, 3, 4, 5, 6, 7]
    return SensorWindowData(1.0, samples, 65, 650.0, CHANNELS)


def test_droid_like_observation():
    cfg = PolicyClientConfig(
        image_views=('zed_1', 'oak'),
        image_keys=('observation/exterior_image_1_left', 'observation/wrist_image_left'),
        image_width=32, image_height=32,
        state_keys=('observation/joint_position=joints', 'observation/gripper_position=gripper',
                    'observation/wrench=force+torque'),
        prompt='insert', prompt_key='prompt')
    views = NewestViews(cfg.image_views)
    assert views.put(CameraFrame('zed_1', 5.0, jpeg(64, 32))) is None   # oak still missing
    viewset = views.put(CameraFrame('oak', 4.0, jpeg(32, 32)))
    assert viewset.stamp_s == 4.0 and [f.view for f in viewset.frames] == ['zed_1', 'oak']
    obs = ObservationMapping(cfg).build(viewset, robot(), window())
    wide = obs.images['observation/exterior_image_1_left']
    assert wide.shape == (32, 32, 3) and wide.dtype == np.uint8
    assert wide[0].max() < 10 and wide[-1].max() < 10 and wide[16, 16, 0] > 150  # padded bars
    np.testing.assert_allclose(obs.state['observation/joint_position'], JOINTS, rtol=1e-6)
    assert obs.state['observation/gripper_position'].tolist() == [0.75]
    assert obs.state['observation/wrench'].tolist() == [1, 2, 3, 4, 5, 6]
    assert obs.state['observation/wrench'].dtype == np.float32
    assert (obs.prompt_key, obs.prompt) == ('prompt', 'insert')


def test_aloha_like_channels_first_and_stretch():
    cfg = PolicyClientConfig(image_views=('zed_1',), image_keys=('images.cam_high',),
                             image_width=16, image_height=8, image_resize='stretch',
                             image_layout='chw', state_keys=('state=joints+gripper',))
    viewset = NewestViews(cfg.image_views).put(CameraFrame('zed_1', 1.0, jpeg(64, 64)))
    obs = ObservationMapping(cfg).build(viewset, robot(), None)
    image = obs.images['images.cam_high']
    assert image.shape == (3, 8, 16) and image[0].min() > 150     # no bars: stretched
    assert obs.state['state'].shape == (7,)


def test_unusable_inputs_refuse_the_observation():
    cfg = PolicyClientConfig(state_keys=('wrench=force',))
    views = NewestViews(cfg.image_views)
    good = views.put(CameraFrame('oak', 1.0, jpeg(8, 8)))
    with pytest.raises(BadObservation, match="no \\['force'\\]"):
        ObservationMapping(cfg).build(good, robot(), None)       # no sensor window channels
    bad = views.put(CameraFrame('oak', 1.0, b'not a jpeg'))
    with pytest.raises(BadObservation, match='oak'):
        ObservationMapping(cfg).build(bad, robot(), window())


def test_actions_map_dims_units_and_deltas():
    cfg = PolicyClientConfig(action_keys=('arm', 'hand'), action_indices=(0, 1, 2, 3, 4, 5, 7),
                             action_scale=(DEG,) * 6 + (1 / 255.0,), action_horizon=4)
    arm = np.arange(60, dtype=np.float32).reshape(1, 10, 6)                  # degrees, batch 1
    hand = np.stack([np.zeros(10), np.full(10, 255.0)], axis=1)[None]         # (1, 10, 2)
    ours = ActionMapping(cfg).to_ours({'arm': arm, 'hand': hand}, JOINTS)
    assert ours.shape == (4, 7) and ours.dtype == np.float32
    np.testing.assert_allclose(ours[:, :6], arm[0, :4] * DEG, rtol=1e-6)
    np.testing.assert_allclose(ours[:, 6], 1.0)
    delta = ActionMapping(PolicyClientConfig(action_keys=('a',), action_mode='delta'))
    out = delta.to_ours({'a': np.ones((3, 7))}, JOINTS)
    np.testing.assert_allclose(out[:, :6], np.tile(JOINTS + 1.0, (3, 1)), atol=1e-6)
    np.testing.assert_allclose(out[:, 6], 1.0)


def test_prefix_goes_back_in_the_servers_keys_and_units():
    cfg = PolicyClientConfig(protocol='gr00t', action_keys=('arm', 'hand'),
                             action_indices=(0, 1, 2, 3, 4, 5, 7),
                             action_scale=(DEG,) * 6 + (1 / 255.0,), action_mode='delta')
    mapping = ActionMapping(cfg)
    assert mapping.to_server(np.zeros((3, 7)), JOINTS) is None        # widths not known yet
    arm, hand = np.full((1, 8, 6), 2.0), np.full((1, 8, 2), 51.0)
    ours = mapping.to_ours({'arm': arm, 'hand': hand}, JOINTS)
    back = mapping.to_server(ours[:3], JOINTS)
    assert set(back) == {'arm', 'hand'} and back['arm'].shape == (3, 6)
    np.testing.assert_allclose(back['arm'], 2.0, rtol=1e-5)
    np.testing.assert_allclose(back['hand'][:, 1], 51.0, rtol=1e-5)
    assert np.all(back['hand'][:, 0] == 0.0)                          # an unmapped dim


@pytest.mark.parametrize('reply, cause', [
    ({'other': np.zeros((8, 7))}, MISSING_KEY),
    ({'actions': np.zeros((8, 5))}, BAD_SHAPE),                       # fewer dims than mapped
    ({'actions': np.zeros((2, 8, 7))}, BAD_SHAPE),                    # a batch of 2
    ({'actions': np.zeros(7)}, BAD_SHAPE),
    ({'actions': np.full((8, 7), np.nan)}, NON_FINITE),
    ({'actions': np.full((8, 7), 1e308)}, NON_FINITE),                # overflows when scaled
])
def test_replies_that_are_no_chunk_are_refused(reply, cause):
    cfg = PolicyClientConfig(action_keys=('actions',), action_scale=(10.0,) * 7)
    with pytest.raises(BadReply) as err:
        ActionMapping(cfg).to_ours(reply, JOINTS)
    assert err.value.cause == cause


@pytest.mark.parametrize('fields, match', [
    ({'protocol': 'lerobot'}, 'protocol'),
    ({'image_keys': ('a', 'b')}, 'one key per view'),
    ({'state_keys': ('joints',)}, 'key=part'),
    ({'state_keys': ('s=joints+elbow',)}, 'elbow'),
    ({'state_keys': ('wrist=joints',)}, 'must differ'),
    ({'action_indices': (0, 1, 2)}, '7 entries'),
    ({'action_scale': (0.0,) * 7}, 'non-zero'),
    ({'send_prefix': True}, 'gr00t'),
    ({'protocol': 'gr00t', 'image_layout': 'chw'}, 'hwc'),
    ({'reconnect_min_s': 10.0}, 'reconnect_max_s'),
    ({'server_port': 0}, 'server_port'),
])
def test_config_refuses_bad_mappings(fields, match):
    with pytest.raises(ConfigError, match=match):
        PolicyClientConfig(**fields)


def test_state_parts_parse():
    assert parse_state_keys(['s = joints + gripper']) == (('s', ('joints', 'gripper')),)
