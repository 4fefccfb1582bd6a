"""Prefix inpainting (real-time chunking): the flow head continues committed actions."""
import dataclasses
from dataclasses import replace

import numpy as np
import pytest
import torch

from vla_insertion.core.data import RobotState, SensorWindowData, VLFeatureData
from vla_insertion.core.expert.checkpoint import CheckpointError, load_checkpoint
from vla_insertion.core.expert.model import ActionExpert, ExpertModelConfig, rtc_prefix
from vla_insertion.core.expert.policy import ExpertPolicy, ObservationError
from vla_insertion.core.expert.presets import make_untrained_checkpoint, PRESETS
from vla_insertion.core.feature_contract import FeatureContract
from vla_insertion.core.interfaces import ExpertObservation

SMALL = dict(PRESETS['small'], feature_tokens=6, feature_dim=32)
CONTRACT = FeatureContract(model_id='tiny-test-vlm', reduction='image_token_grid_pool',
                           num_tokens=6, feature_dim=32, image_width=64, image_height=36,
                           view_names=('zed_1', 'oak'), prompt='insert')
# physical action scales: joints [rad] around a pose, gripper 0..1
MEAN = [0.1, -1.2, 1.5, -1.8, -1.6, 0.0, 0.5]
STD = [0.3, 0.2, 0.25, 0.3, 0.1, 0.5, 0.4]


def _model(steps=10):
    cfg = ExpertModelConfig(**SMALL, head='flow', flow_steps=steps)
    torch.manual_seed(0)
    model = ActionExpert(cfg).eval()
    model.set_normalization({'action_mean': MEAN, 'action_std': STD})
    return model


def _inputs(cfg, batch=2):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(batch, cfg.feature_tokens, cfg.feature_dim, generator=g),
            torch.randn(batch, cfg.window_samples, cfg.sensor_channels, generator=g),
            torch.randn(batch, cfg.state_dim, generator=g))


def _prefix(batch, d, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.tensor(MEAN) + torch.tensor(STD) * torch.randn(batch, d, 7, generator=g)


@pytest.mark.parametrize('d', [1, 3, 8])
@pytest.mark.parametrize('steps', [1, 4, 10])
def test_flow_head_output_starts_with_the_prefix(d, steps):
    model = _model()
    inputs = _inputs(model.cfg)
    prefix = _prefix(2, d)
    noise = torch.randn(2, 56, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        free = model(*inputs, steps=steps, noise=noise)
        out = model(*inputs, steps=steps, noise=noise, prefix=prefix)
    assert out.shape == (2, 8, 7) and torch.isfinite(out).all()
    torch.testing.assert_close(out[:, :d], prefix, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(free[:, :d], prefix, atol=1e-2)   # it is the prefix, not chance


def test_soft_weights_guide_without_pinning():
    model = _model()
    inputs = _inputs(model.cfg)
    target = _prefix(2, 8)
    noise = torch.randn(2, 56, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        free = model(*inputs, noise=noise)
        soft = model(*inputs, noise=noise, prefix=target, prefix_weights=torch.full((2, 8), 0.8))
    assert torch.isfinite(soft).all()
    assert (soft - target).abs().mean() < 0.5 * (free - target).abs().mean()
    assert not torch.allclose(soft, target, atol=1e-3)         # guided, not replaced


def test_rtc_prefix_weights_and_continuation():
    committed = torch.tensor([[[0.0] * 7, [0.1] * 7, [0.3] * 7]])   # (1, 3, 7)
    targets, weights = rtc_prefix(committed, horizon=8, soft_steps=3, decay=1.0)
    assert targets.shape == (1, 6, 7) and weights.shape == (1, 6)
    torch.testing.assert_close(targets[0, 3:, 0], torch.tensor([0.5, 0.7, 0.9]))
    torch.testing.assert_close(weights[0], torch.tensor(
        [1.0, 1.0, 1.0, np.exp(-1.0), np.exp(-2.0), np.exp(-3.0)], dtype=torch.float32))
    targets, weights = rtc_prefix(committed[:, :1], horizon=2)     # d = 1: hold, within H
    assert targets.shape == (1, 2, 7) and targets[0, 1, 0] == 0.0
    targets, _ = rtc_prefix(torch.zeros(1, 8, 7), horizon=8)       # no room left
    assert targets.shape == (1, 8, 7)


def test_bad_prefixes_and_the_regression_head_are_refused():
    model = _model()
    inputs = _inputs(model.cfg)
    with pytest.raises(ValueError, match='prefix must be'):
        model(*inputs, prefix=torch.zeros(2, 9, 7))
    with pytest.raises(ValueError, match='prefix must be'):
        model(*inputs, prefix=torch.zeros(2, 3, 6))
    regression = ActionExpert(ExpertModelConfig(**SMALL)).eval()
    with pytest.raises(ValueError, match='regression head'):
        regression(*inputs, prefix=torch.zeros(2, 3, 7))


# --- through ExpertPolicy -----------------------------------------------------------------

def _observation(prefix=None, now_s=100.0):
    rng = np.random.default_rng(0)
    obs = ExpertObservation(
        features=VLFeatureData(stamp_s=now_s - 0.3, sequence=5, contract_hash=CONTRACT.digest,
                               model_id=CONTRACT.model_id,
                               features=rng.standard_normal((6, 32)).astype(np.float32)),
        window=SensorWindowData(stamp_s=now_s - 0.01,
                                samples=rng.standard_normal((65, 7)).astype(np.float32),
                                valid_samples=65, sample_rate_hz=650.0,
                                channel_names=('fx', 'fy', 'fz', 'tx', 'ty', 'tz', 'distance')),
        robot=RobotState(stamp_s=now_s - 0.02, joint_positions_rad=rng.uniform(-1, 1, 6),
                         tool_position_m=np.array([0.4, 0.0, 0.3]),
                         tool_orientation_xyzw=np.array([0.0, 0.0, 0.0, 1.0]), gripper=0.5),
        now_s=now_s, prefix=prefix)
    return replace(obs, capture_robot=obs.robot)  # the views were taken at this state


@pytest.fixture(scope='module', params=['regression', 'flow'])
def checkpoint(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp('prefix') / request.param
    return make_untrained_checkpoint(folder, CONTRACT, preset='small', head=request.param,
                                     flow_steps=4, seed=1)


def test_policy_continues_the_prefix_with_a_flow_head_and_ignores_it_otherwise(checkpoint):
    policy = ExpertPolicy(checkpoint, seed=0)
    prefix = np.random.default_rng(4).uniform(-1, 1, (3, 7)).astype(np.float32)
    free = policy.infer(_observation()).actions
    chunk = policy.infer(_observation(prefix)).actions
    assert chunk.shape == (8, 7) and np.isfinite(chunk).all()
    if not policy.uses_prefix:
        np.testing.assert_array_equal(chunk, free)
        return
    np.testing.assert_allclose(chunk[:3], prefix, atol=1e-4)
    assert not np.allclose(free[:3], prefix, atol=1e-2)
    with pytest.raises(ObservationError, match='prefix shape'):
        policy.infer(_observation(np.zeros((3, 5), np.float32)))
    with pytest.raises(ObservationError, match='non-finite'):
        policy.infer(_observation(np.full((2, 7), np.nan, np.float32)))


def test_regression_checkpoint_trained_with_a_prefix_is_refused(checkpoint):
    loaded = load_checkpoint(checkpoint)
    if loaded.meta.model.head != 'regression':
        pytest.skip('flow heads continue prefixes')
    meta = dataclasses.replace(loaded.meta, extra={'trained_with_prefix': True})
    with pytest.raises(CheckpointError, match='prefix'):
        ExpertPolicy(dataclasses.replace(loaded, meta=meta))
