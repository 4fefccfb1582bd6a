"""Behaviour cloning: the loss falls, training is deterministic, stats come from the data.

The one training loop (`core.train.trainer.Trainer`) on a `PairedDataset` of synthetic samples
with a known map from state to target chunk, and the targets from a recorded trajectory.
"""
from dataclasses import replace

import numpy as np
import pytest
import torch

from vla_insertion.core.data import RobotState, SensorWindowData, VLFeatureData
from vla_insertion.core.evaluation import metrics
from vla_insertion.core.expert.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from vla_insertion.core.expert.model import ActionExpert, ExpertModelConfig
from vla_insertion.core.expert.policy import ExpertPolicy
from vla_insertion.core.expert.presets import PRESETS
from vla_insertion.core.feature_contract import FeatureContract
from vla_insertion.core.interfaces import ExpertObservation
from vla_insertion.core.train.dataset import chunk_targets, PairedDataset
from vla_insertion.core.train.trainer import draw, TrainConfig, Trainer

CONTRACT = FeatureContract(model_id='tiny-test-vlm', reduction='image_token_grid_pool',
                           num_tokens=6, feature_dim=32, image_width=64, image_height=36,
                           view_names=('zed_1', 'oak'), prompt='insert')
CHANNELS = ('fx', 'fy', 'fz', 'tx', 'ty', 'tz', 'distance')
N, H = 256, 8


def target_of(states: np.ndarray) -> np.ndarray:
    """Known map state -> (N, H, 7) chunk: joints drift by k * 0.05 * sin(joint), gripper."""
    k = np.arange(H)[None, :, None]
    joints = states[:, None, :6] + 0.05 * k * np.sin(states[:, None, :6])
    gripper = np.repeat(states[:, None, 13:14], H, axis=1)
    return np.concatenate([joints, gripper], axis=-1).astype(np.float32)


def synthetic(make, seed: int = 0) -> PairedDataset:
    rng = np.random.default_rng(seed)
    states = np.concatenate([
        rng.uniform(-1.5, 1.5, (N, 6)), rng.normal([0.4, 0.0, 0.3], 0.05, (N, 3)),
        np.tile([0.0, 0.0, 0.0, 1.0], (N, 1)), rng.uniform(0, 1, (N, 1))], axis=1)
    windows = rng.normal([0, 0, -5, 0, 0, 0, 0.02], [2, 2, 3, 0.1, 0.1, 0.1, 0.005],
                         (N, 65, 7))
    windows[:5, :10] = np.nan                                     # a few incomplete windows
    features = rng.standard_normal((N // 4, 6, 32))               # each set shared by 4 ticks
    return make(features, windows, states, target_of(states), feature_index=np.arange(N) // 4)


def small_model(seed: int = 0) -> ActionExpert:
    torch.manual_seed(seed)
    return ActionExpert(ExpertModelConfig(**PRESETS['small'], feature_tokens=6, feature_dim=32))


def fit_normalization(model: ActionExpert, data: PairedDataset) -> dict:
    """Set the model's normalisation from the data, as `core.train.fit` does; return it."""
    stats = data.normalization(action_frame=model.cfg.action_frame)
    model.set_normalization(stats)
    return stats


def trainer(model: ActionExpert, data: PairedDataset, steps: int, lr: float, batch_size: int,
            seed: int) -> Trainer:
    cfg = TrainConfig(steps=steps, lr=lr, batch_size=batch_size, seed=seed, warmup_steps=0,
                      val_every=0, save_every=0)
    return Trainer(model, data, cfg, progress_bar=False)


@pytest.fixture(scope='module')
def trained(paired_dataset):
    torch.manual_seed(0)
    data = synthetic(paired_dataset)
    model = small_model()
    fit_normalization(model, data)
    run = trainer(model, data, steps=300, lr=2e-3, batch_size=64, seed=0)
    before = run.evaluate(data)
    losses = run.run().losses
    return data, model, before, losses


def test_normalization_comes_from_the_data(paired_dataset):
    data = synthetic(paired_dataset)
    model = small_model()
    stats = fit_normalization(model, data)
    states = data.states.double().numpy()
    np.testing.assert_allclose(model.state_mean.numpy(), states.mean(0), atol=1e-5)
    np.testing.assert_allclose(stats['state_std'][:6], states[:, :6].std(0), rtol=1e-5)
    assert stats['state_std'][9] == pytest.approx(1e-3)          # constant quaternion x: floor
    valid = data.windows.reshape(-1, 7).double().numpy()
    valid = valid[np.isfinite(valid).all(1)]                      # NaN rows are ignored
    np.testing.assert_allclose(model.sensor_mean.numpy(), valid.mean(0), rtol=1e-4, atol=1e-5)
    # action statistics are of the targets relative to the measured joints (the delta frame)
    relative = data.actions.double().numpy().copy()
    relative[..., :6] -= states[:, None, :6]
    np.testing.assert_allclose(model.action_std.numpy(), relative.reshape(-1, 7).std(0),
                               rtol=1e-4)


def test_loss_decreases_by_a_large_factor(trained):
    _data, _model, before, losses = trained
    assert before > 0.5                                           # normalised: ~1 when untrained
    assert np.mean(losses[-20:]) < before / 20


def test_training_is_deterministic_for_a_seed(paired_dataset):
    data = synthetic(paired_dataset)
    runs = []
    for seed in (0, 0, 1):
        model = small_model()
        fit_normalization(model, data)
        runs.append(trainer(model, data, steps=20, lr=2e-3, batch_size=32, seed=seed)
                    .run().losses)
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_saved_checkpoint_loads_and_predicts_the_targets(trained, tmp_path):
    data, model, _before, _losses = trained
    meta = CheckpointMeta(model=model.cfg, contract=CONTRACT, untrained=False,
                          extra={'steps': 300})
    ckpt = load_checkpoint(save_checkpoint(tmp_path / 'ckpt', model, meta))
    assert not ckpt.meta.untrained and ckpt.meta.extra['steps'] == 300
    np.testing.assert_allclose(ckpt.model.action_mean.numpy(), model.action_mean.numpy())
    policy = ExpertPolicy(ckpt)
    errors = []
    for i in range(0, N, 16):
        s = data.states[i].numpy()
        obs = ExpertObservation(
            features=VLFeatureData(stamp_s=9.9, sequence=i, contract_hash=CONTRACT.digest,
                                   model_id=CONTRACT.model_id,
                                   features=data.features_of(np.array([i]))[0].numpy()),
            window=SensorWindowData(stamp_s=10.0, samples=data.windows[i].numpy(),
                                    valid_samples=65, sample_rate_hz=650.0,
                                    channel_names=CHANNELS),
            robot=RobotState(stamp_s=10.0, joint_positions_rad=s[:6], tool_position_m=s[6:9],
                             tool_orientation_xyzw=s[9:13], gripper=float(s[13])),
            now_s=10.0)
        obs = replace(obs, capture_robot=obs.robot)  # as the fixed pairing: taken at the tick
        errors.append(np.abs(policy.infer(obs).actions - data.actions[i].numpy()))
    mae = float(np.mean(errors))
    spread = float(data.actions.std())
    assert mae < 0.1 * spread, f'MAE {mae:.4f} vs target spread {spread:.4f}'


def test_chunk_targets_interpolate_the_trajectory():
    traj = metrics.Trajectory(np.array([0.0, 1.0, 2.0]),
                              np.array([[0.0] * 6, [1.0] * 6, [3.0] * 6]))
    chunk = chunk_targets(traj, 0.5, horizon=4, dt_s=0.25, gripper=np.full(4, 0.7))
    np.testing.assert_allclose(chunk[:, 0], [0.5, 0.75, 1.0, 1.5])
    np.testing.assert_allclose(chunk[:, 6], 0.7)
    assert chunk_targets(traj, 1.5, horizon=4, dt_s=0.25) is None  # runs past the end
    np.testing.assert_array_equal(chunk_targets(traj, 0.0, 2, 0.5)[:, 6], 0.0)


def test_wrench_jitter_offsets_half_the_training_windows_and_never_the_validation(
        paired_dataset):
    data = synthetic(paired_dataset)
    model = small_model()
    fit_normalization(model, data)
    seen = []
    original = model.loss

    def spy(features, windows, *args, **kwargs):
        seen.append((model.training, windows.detach().clone()))
        return original(features, windows, *args, **kwargs)
    model.loss = spy
    cfg = TrainConfig(steps=3, batch_size=64, seed=0, wrench_jitter_n=20.0, val_every=3,
                      save_every=0, warmup_steps=0)
    trainer = Trainer(model, data, cfg, val_data=data, progress_bar=False)
    trainer.run()
    train_windows = [w for training, w in seen if training]
    assert len(train_windows) == 3
    first = draw(torch.Generator().manual_seed(0), len(data), 64, model, 0,
                 wrench_jitter_n=20.0)                   # the first step's draws, again
    offset = train_windows[0] - data.windows[first.index]
    complete = torch.isfinite(offset).all(dim=-1).all(dim=-1)
    offset = offset[complete]
    assert torch.equal(offset[:, :, 6], torch.zeros_like(offset[:, :, 6]))  # distance: kept
    moved = offset[:, :, :6].abs().amax(dim=(1, 2)) > 0
    assert 0.25 < moved.float().mean() < 0.75                  # about half the samples
    assert offset[:, :, :3].abs().max() <= 20.0 + 1e-4         # forces [N]
    assert offset[:, :, 3:6].abs().max() <= 2.0 + 1e-4         # torques [N m], 0.1 m lever
    assert torch.allclose(offset, offset[:, :1].expand_as(offset))   # one offset per window
    # validation sees the recorded windows, in sample order
    validation = torch.cat([w for training, w in seen if not training])
    assert torch.equal(validation[:N].nan_to_num(), data.windows.nan_to_num())
    assert trainer.fixed_draws(data, 1).wrench is None
