"""Training-time real-time chunking: a flow head that learns to continue a committed prefix.

Chunks are lines a0 + s k with a random start and slope per sample that the inputs do not
reveal: nothing can predict them, but three given actions determine the rest. A prefix-
conditioned head trained with random prefixes continues them far better than it guesses them.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vla_insertion.core.config import ConfigError
from vla_insertion.core.expert.model import ActionExpert, ExpertModelConfig
from vla_insertion.core.expert.presets import PRESETS
from vla_insertion.core.train.dataset import PairedDataset
from vla_insertion.core.train.trainer import TrainConfig, Trainer

N, H, A = 512, 8, 7


def model(prefix: bool = True, seed: int = 0) -> ActionExpert:
    torch.manual_seed(seed)
    return ActionExpert(ExpertModelConfig(**PRESETS['small'], feature_tokens=6, feature_dim=32,
                                          head='flow', flow_steps=8,
                                          prefix_conditioning=prefix,
                                          # the lines are the targets themselves, not offsets
                                          # from the (random) measured joints
                                          action_frame='absolute'))


@pytest.fixture(scope='module')
def lines(paired_dataset) -> PairedDataset:
    rng = np.random.default_rng(0)
    a0, slope = rng.normal(0, 1, (N, 1, A)), rng.normal(0, 0.5, (N, 1, A))
    actions = (a0 + slope * np.arange(H)[None, :, None]).astype(np.float32)
    return paired_dataset(rng.normal(size=(N, 6, 32)), rng.normal(size=(N, 65, 7)),
                          rng.normal(size=(N, 14)), actions)


def fit_normalization(m: ActionExpert, data: PairedDataset) -> None:
    m.set_normalization(data.normalization(action_frame=m.cfg.action_frame))


def batch(data: PairedDataset, n: int) -> tuple[torch.Tensor, ...]:
    """Return (features, windows, states, actions) of the first n samples."""
    index = torch.arange(n)
    rows, _ages = data.pair(index.numpy(), np.zeros(n))
    return (data.features_of(rows), *data.inputs(index))


def test_config_and_inference_guard(lines):
    with pytest.raises(ConfigError, match='flow head'):
        ExpertModelConfig(head='regression', prefix_conditioning=True)
    plain = model(prefix=False)
    assert plain.head.prefix_in is None and 'head.prefix_in.weight' not in plain.state_dict()
    with pytest.raises(ValueError, match='prefix_conditioning'):
        plain.head.continue_prefix(torch.zeros(1, 128), 2, torch.zeros(1, H * A),
                                   torch.zeros(1, H * A), torch.tensor([2]))
    with pytest.raises(ConfigError, match='prefix_conditioning'):
        Trainer(plain, lines, TrainConfig(steps=1, max_prefix=2))


def test_the_loss_ignores_the_given_actions(lines):
    m = model()
    data = lines
    fit_normalization(m, data)
    f, w, s, a = batch(data, 16)
    g = torch.Generator().manual_seed(0)
    noise, t = torch.randn(16, H * A, generator=g), torch.rand(16, generator=g)
    prefix = torch.full((16,), 3)

    def loss_with(columns: slice) -> float:
        def shift(_module, _inputs, out):
            out = out.clone()
            out[:, columns] += 100.0
            return out
        handle = m.head.out.register_forward_hook(shift)
        try:
            with torch.no_grad():
                return float(m.loss(f, w, s, a, noise=noise, t=t, prefix_len=prefix))
        finally:
            handle.remove()
    with torch.no_grad():
        base = float(m.loss(f, w, s, a, noise=noise, t=t, prefix_len=prefix))
    assert loss_with(slice(0, 3 * A)) == pytest.approx(base, rel=1e-6)    # given: ignored
    assert loss_with(slice(3 * A, 4 * A)) > base + 100                     # free: counted


def test_a_prefix_conditioned_head_continues_the_prefix(lines):
    data = lines
    m = model()
    fit_normalization(m, data)
    Trainer(m, data, TrainConfig(steps=400, batch_size=64, lr=3e-3, warmup_steps=20,
                                 max_prefix=4, val_every=0, save_every=0),
            progress_bar=False).run()
    f, w, s, a = batch(data, 256)
    noise = torch.randn(256, H * A, generator=torch.Generator().manual_seed(1))
    target = ((a - m.action_mean) / m.action_std).flatten(1)
    error = {}
    with torch.no_grad():
        context = m.encode(f, w, s)
        for d in (0, 3):
            out = m.head.continue_prefix(context, 8, noise, target, torch.full((256,), d))
            out = out.view(-1, H, A) * m.action_std + m.action_mean           # (B, H, A)
            error[d] = float((out[:, 3:] - a[:, 3:]).abs().mean())
            if d:
                np.testing.assert_allclose(out[:, :d], a[:, :d], atol=1e-5)  # kept exactly
    assert error[3] < 0.6 * error[0], error


def test_the_policy_continues_the_executors_prefix_with_a_conditioned_head(
        tmp_path, expert_observation, lines):
    from vla_insertion.core.expert.checkpoint import CheckpointMeta, save_checkpoint
    from vla_insertion.core.expert.policy import ExpertPolicy
    from vla_insertion.core.feature_contract import FeatureContract
    contract = FeatureContract(model_id='test', reduction='r', num_tokens=6, feature_dim=32,
                               image_width=64, image_height=36, view_names=('a',), prompt='p')
    m = model()
    fit_normalization(m, lines)
    folder = save_checkpoint(tmp_path / 'ckpt', m.eval(),
                             CheckpointMeta(model=m.cfg, contract=contract, untrained=False))
    rng = np.random.default_rng(2)
    committed = rng.normal(size=(3, A)).astype(np.float32)
    committed[:, -1] = rng.uniform(0.0, 1.0, 3)        # a gripper command is 0..1
    obs = expert_observation(contract, 10.0, rng, feature_age_s=0.2, prefix=committed)
    chunk = ExpertPolicy(folder).infer(obs)
    np.testing.assert_allclose(chunk.actions[:3], committed, atol=1e-5)   # continued exactly
    # the same call through forward: continue_prefix with the committed actions given
    with torch.no_grad():
        out = m(torch.from_numpy(obs.features.features)[None],
                torch.from_numpy(obs.window.samples)[None], torch.zeros(1, 14), steps=4,
                noise=torch.zeros(1, H * A), prefix=torch.from_numpy(committed)[None])
    np.testing.assert_allclose(out[0, :3].numpy(), committed, atol=1e-5)
