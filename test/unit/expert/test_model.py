"""The action-expert network: shapes, size, flow-head context reuse, determinism, NaN rows."""
import pytest
import torch

from vla_insertion.core.config import ConfigError
from vla_insertion.core.expert.model import ActionExpert, count_parameters, ExpertModelConfig
from vla_insertion.core.expert.presets import PRESETS

SMALL = dict(PRESETS['small'], feature_tokens=6, feature_dim=32)


def _inputs(cfg: ExpertModelConfig, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, cfg.feature_tokens, cfg.feature_dim, generator=g),
            torch.randn(batch, cfg.window_samples, cfg.sensor_channels, generator=g),
            torch.randn(batch, cfg.state_dim, generator=g))


@pytest.mark.parametrize('head', ['regression', 'flow'])
@pytest.mark.parametrize('fusion', ['concat', 'sum'])
def test_output_shape_and_finite(head, fusion):
    cfg = ExpertModelConfig(**SMALL, head=head, fusion=fusion, horizon=5, action_dim=3)
    model = ActionExpert(cfg).eval()
    with torch.inference_mode():
        out = model(*_inputs(cfg, batch=3), steps=2)
    assert out.shape == (3, 5, 3)
    assert torch.isfinite(out).all()


def test_default_size_is_about_20m_and_fast_enough_to_build():
    cfg = ExpertModelConfig()
    model = ActionExpert(cfg)
    n = count_parameters(model)
    assert 19_000_000 <= n <= 22_000_000, n  # the seeds' expert: 20.8M
    with torch.inference_mode():
        out = model.eval()(*_inputs(cfg, batch=1))
    assert out.shape == (1, 8, 7)


def test_flow_head_encodes_once_per_prediction():
    cfg = ExpertModelConfig(**SMALL, head='flow')
    model = ActionExpert(cfg).eval()
    calls = {'sensor': 0, 'trunk': 0, 'condition': 0, 'velocity': 0}
    model.sensor_encoder.register_forward_hook(lambda *_: calls.__setitem__(
        'sensor', calls['sensor'] + 1))
    model.trunk.register_forward_hook(lambda *_: calls.__setitem__('trunk', calls['trunk'] + 1))
    model.head.context_proj.register_forward_hook(lambda *_: calls.__setitem__(
        'condition', calls['condition'] + 1))
    model.head.out.register_forward_hook(lambda *_: calls.__setitem__(
        'velocity', calls['velocity'] + 1))
    with torch.inference_mode():
        model(*_inputs(cfg), steps=7)
    assert calls == {'sensor': 1, 'trunk': 1, 'condition': 1, 'velocity': 7}


def test_flow_head_is_deterministic_with_a_seed_and_varies_without():
    cfg = ExpertModelConfig(**SMALL, head='flow')
    model = ActionExpert(cfg).eval()
    x = _inputs(cfg)
    with torch.inference_mode():
        a = model(*x, generator=torch.Generator().manual_seed(3))
        b = model(*x, generator=torch.Generator().manual_seed(3))
        c = model(*x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_incomplete_window_nan_rows_are_masked_not_propagated():
    cfg = ExpertModelConfig(**SMALL)
    model = ActionExpert(cfg).eval()
    features, window, state = _inputs(cfg, batch=1)
    partial = window.clone()
    partial[:, :20] = float('nan')                     # the 20 oldest rows never arrived
    empty = torch.full_like(window, float('nan'))
    with torch.inference_mode():
        full_out = model(features, window, state)
        partial_out = model(features, partial, state)
        empty_out = model(features, empty, state)
    assert torch.isfinite(partial_out).all() and torch.isfinite(empty_out).all()
    assert not torch.equal(full_out, partial_out)      # the mask channel reaches the output
    # a missing row is not the same input as a row at the channel mean
    zeros = window.clone()
    zeros[:, :20] = 0.0
    with torch.inference_mode():
        assert not torch.equal(model(features, zeros, state), partial_out)


def test_normalisation_buffers_apply_to_actions():
    cfg = ExpertModelConfig(**SMALL, action_frame='absolute')
    model = ActionExpert(cfg).eval()
    x = _inputs(cfg, batch=1)
    with torch.inference_mode():
        before = model(*x)
    model.set_normalization({'action_mean': [1.0] * 7, 'action_std': [2.0] * 7})
    with torch.inference_mode():
        after = model(*x)
    torch.testing.assert_close(after, before * 2.0 + 1.0)
    with pytest.raises(ValueError, match='action_std'):
        model.set_normalization({'action_std': [0.0] * 7})
    assert 'action_mean' in dict(model.named_buffers())


def test_delta_frame_predicts_relative_to_the_measured_joints():
    torch.manual_seed(0)
    delta = ActionExpert(ExpertModelConfig(**SMALL)).eval()
    absolute = ActionExpert(ExpertModelConfig(**SMALL, action_frame='absolute')).eval()
    absolute.load_state_dict(delta.state_dict())
    features, window, state = _inputs(delta.cfg, batch=3)
    with torch.inference_mode():
        moved, fixed = delta(features, window, state), absolute(features, window, state)
    torch.testing.assert_close(moved[..., :6], fixed[..., :6] + state[:, None, :6])
    torch.testing.assert_close(moved[..., 6:], fixed[..., 6:])      # the gripper stays absolute
    # the loss is the absolute model's on targets minus the measured joints
    targets = torch.randn(3, delta.cfg.horizon, delta.cfg.action_dim)
    relative = targets.clone()
    relative[..., :6] -= state[:, None, :6]
    torch.testing.assert_close(delta.loss(features, window, state, targets),
                               absolute.loss(features, window, state, relative))


def test_action_frame_is_validated():
    assert ExpertModelConfig().action_frame == 'delta'
    with pytest.raises(ConfigError, match='action_frame'):
        ExpertModelConfig(action_frame='polar')


@pytest.mark.parametrize('head', ['regression', 'flow'])
def test_loss_backpropagates(head):
    cfg = ExpertModelConfig(**SMALL, head=head)
    model = ActionExpert(cfg)
    features, window, state = _inputs(cfg)
    loss = model.loss(features, window, state, torch.randn(2, cfg.horizon, cfg.action_dim),
                      generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    assert model.sensor_encoder.proj.weight.grad is not None


@pytest.mark.parametrize('bad', [{'horizon': 0}, {'fusion': 'film'}, {'head': 'ddpm'},
                                 {'trunk_layers': -1}, {'sensor_conv': 33},
                                 {'feature_dim': 1.5}])
def test_config_validation(bad):
    with pytest.raises(ConfigError):
        ExpertModelConfig(**bad)
