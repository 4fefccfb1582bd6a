"""Behaviour cloning for the action expert: a dataset of recorded ticks and a training loop.

One sample is what the expert sees at one tick and what the robot then did:

    features (T, F)   VL features valid at the tick (shared between ticks: `feature_index`)
    window   (W, C)   the newest sensor window at the tick (NaN rows = missing samples)
    state    (S,)     the robot state at the tick (`policy.robot_state_vector`)
    actions  (H, A)   the recorded joint positions [rad] at tick + k * dt, k = 0..H-1, and the
                      recorded gripper [0..1] (0 where none was recorded)

`chunk_targets` builds the actions from a `metrics.Trajectory` (the same interpolation the
metrics use) and `tick_targets` from a recording; `ExpertDataset` holds samples with a fixed
pairing of features in memory (the recorded ticks with drawn feature ages are
`core.expert.dataset.PairedDataset`); `normalization_stats` computes the model's mean/std
buffers from the data and `train` fits the model through `core.expert.trainer.Trainer` (the
one training loop), deterministically for a seed. The whole stage-1 pipeline from bags is
`core.expert.fit.fit`. ROS-free, plain PyTorch; the caller sets `torch.set_num_threads`.
"""
from __future__ import annotations

from dataclasses import dataclass
import logging
from typing import Callable

import numpy as np
import torch

from vla_insertion.core.bag.recording import RecordedInputs
from vla_insertion.core.evaluation import metrics
from vla_insertion.core.expert.model import ActionExpert, to_action_frame

log = logging.getLogger(__name__)

MIN_STD = 1e-3  # floor of every normalisation std (constant inputs, e.g. an unused gripper)


def chunk_targets(trajectory: metrics.Trajectory, tick_s: float, horizon: int, dt_s: float,
                  gripper: np.ndarray | None = None) -> np.ndarray | None:
    """Return the (horizon, joints + 1) recorded actions after a tick, None past the recording.

    Joints are interpolated at tick + k * dt; the last column is `gripper` (horizon,) or 0.
    """
    times = tick_s + np.arange(horizon) * dt_s
    joints = trajectory.at(times)                                 # (H, J), NaN outside
    if not np.isfinite(joints).all():
        return None
    grip = np.zeros(horizon) if gripper is None else np.asarray(gripper, dtype=np.float64)
    return np.concatenate([joints, grip.reshape(horizon, 1)], axis=1).astype(np.float32)


def tick_targets(inputs: RecordedInputs, tick_s: float, horizon: int, dt_s: float
                 ) -> np.ndarray | None:
    """Return what the robot did after a tick: (horizon, joints + 1) targets, or None.

    The recorded joints at tick + k * dt and the recorded gripper of the newest robot state at
    those times (the `gripper` joint state); None where the chunk runs past the recording.
    """
    robots = [inputs.robot(s) for s in tick_s + np.arange(horizon) * dt_s]
    if any(r is None for r in robots):
        return None
    return chunk_targets(inputs.rec.trajectory, tick_s, horizon, dt_s,
                         [r.gripper for r in robots])


def normalization_stats(windows: torch.Tensor, states: torch.Tensor, actions: torch.Tensor,
                        min_std: float = MIN_STD, action_frame: str = 'delta'
                        ) -> dict[str, np.ndarray]:
    """Return per-dimension mean/std of sensor channels, state and actions (stds floored).

    windows (N, W, C) with NaN rows for missing samples (ignored), states (N, S), actions
    (N, H, A) physical; the action statistics are of the actions in the model's
    `action_frame` (delta: joint targets minus the measured joints).
    """
    actions = to_action_frame(actions, states, action_frame)
    sensor = windows.reshape(-1, windows.shape[-1]).double()
    sensor = sensor[torch.isfinite(sensor).all(dim=1)]            # valid rows only
    if sensor.shape[0] == 0:
        raise ValueError('no valid sensor samples to compute normalisation from')
    stats = {}
    for name, values in (('sensor', sensor), ('state', states.double()),
                         ('action', actions.reshape(-1, actions.shape[-1]).double())):
        stats[f'{name}_mean'] = values.mean(dim=0).numpy()
        stats[f'{name}_std'] = np.maximum(values.std(dim=0, unbiased=False).numpy(), min_std)
    return stats


def feature_std_floor(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Floor the per-(token, dimension) stds of VL features before dividing by them.

    A dimension that barely changes between images would otherwise be magnified to unit
    variance, rounding noise included: the cache stores fp16 (a relative step of ~1e-3), so a
    spread under a few steps of the value is treated as no information. Also floored at 1e-3
    of the median std, and never 0.
    """
    floor = np.maximum(4e-3 * np.abs(mean), 1e-3 * float(np.median(std)))
    return np.maximum(std, np.maximum(floor, 1e-8))


def feature_stats(batches) -> dict[str, np.ndarray]:
    """Return feature_mean, feature_std (T, F) over (b, T, F) batches of VL features.

    Accumulated in float64 batch by batch (a cache need not fit in memory); the stds floored
    by `feature_std_floor`.
    """
    count, total, total_sq = 0, 0.0, 0.0
    for batch in batches:
        x = torch.as_tensor(batch).double()                       # (b, T, F)
        count += x.shape[0]
        total, total_sq = total + x.sum(0), total_sq + (x * x).sum(0)
    if count == 0:
        raise ValueError('no VL features to compute normalisation from')
    mean = total / count
    std = (total_sq / count - mean * mean).clamp(min=0).sqrt()
    return {'feature_mean': mean.numpy().astype(np.float32),
            'feature_std': feature_std_floor(mean.numpy(), std.numpy()).astype(np.float32)}


@dataclass
class ExpertDataset:
    """Training samples as tensors; `features[feature_index[i]]` are sample i's VL features."""

    features: torch.Tensor          # (U, T, F) distinct feature sets
    feature_index: torch.Tensor     # (N,) int64 index into features
    windows: torch.Tensor           # (N, W, C) raw sensor values, NaN rows missing
    states: torch.Tensor            # (N, S) raw robot state
    actions: torch.Tensor           # (N, H, A) target actions in physical units

    def __post_init__(self) -> None:
        n = self.feature_index.shape[0]
        for name in ('windows', 'states', 'actions'):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f'{name} has {getattr(self, name).shape[0]} samples, '
                                 f'feature_index {n}')
        if n == 0:
            raise ValueError('the dataset is empty')
        if self.feature_index.min() < 0 or self.feature_index.max() >= self.features.shape[0]:
            raise ValueError('feature_index points outside features')

    @classmethod
    def from_arrays(cls, features, windows, states, actions, feature_index=None
                    ) -> ExpertDataset:
        """Build from numpy arrays; without `feature_index` each sample has its own features."""
        features = torch.as_tensor(np.asarray(features, dtype=np.float32))
        if feature_index is None:
            feature_index = np.arange(features.shape[0])
        return cls(features, torch.as_tensor(np.asarray(feature_index, dtype=np.int64)),
                   torch.as_tensor(np.asarray(windows, dtype=np.float32)),
                   torch.as_tensor(np.asarray(states, dtype=np.float32)),
                   torch.as_tensor(np.asarray(actions, dtype=np.float32)))

    def __len__(self) -> int:
        return int(self.feature_index.shape[0])

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return (features, windows, states, actions) of the samples in `index`."""
        return (self.features[self.feature_index[index]], self.windows[index],
                self.states[index], self.actions[index])

    # the interface of core.expert.trainer.Trainer: a fixed pairing, features in memory
    def pair(self, index: np.ndarray, uniforms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (feature rows, ages [s]: NaN, unknown) of the samples in `index`."""
        return self.feature_index[torch.as_tensor(index)].numpy(), np.full(len(index), np.nan)

    def inputs(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.windows[index], self.states[index], self.actions[index]

    def captures_of(self, index: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        """Return the capture states: the tick's (fixed pairing: no motion since the capture)."""
        return self.states[index]

    def features_of(self, rows: np.ndarray) -> torch.Tensor:
        return self.features[torch.as_tensor(rows)]

    def normalization(self, min_std: float = MIN_STD, action_frame: str = 'delta'
                      ) -> dict[str, np.ndarray]:
        """Return per-dimension mean/std of sensor, state, actions, VL features (stds floored).

        No motion statistics: the fixed pairing has none (see `captures_of`).
        """
        return {**normalization_stats(self.windows, self.states, self.actions, min_std,
                                      action_frame),
                **feature_stats([self.features])}


def fit_normalization(model: ActionExpert, dataset: ExpertDataset,
                      min_std: float = MIN_STD) -> dict[str, np.ndarray]:
    """Set the model's normalisation buffers from the dataset; return the statistics."""
    stats = dataset.normalization(min_std, model.cfg.action_frame)
    model.set_normalization(stats)
    return stats


def dataset_loss(model: ActionExpert, dataset: ExpertDataset, batch_size: int = 256,
                 seed: int = 0) -> float:
    """Return the mean training loss over the whole dataset (no gradient, eval mode)."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)               # flow head noise
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            index = torch.arange(start, min(start + batch_size, len(dataset)))
            # no capture given: the features are taken as captured at the tick (captures_of)
            loss = model.loss(*dataset.batch(index), generator=generator)
            total += float(loss) * index.numel()
    model.train(was_training)
    return total / len(dataset)


def train(model: ActionExpert, dataset: ExpertDataset, steps: int, lr: float = 1e-3,
          batch_size: int = 64, seed: int = 0, weight_decay: float = 1e-4,
          grad_clip: float = 1.0, callback: Callable[[int, float], None] | None = None
          ) -> list[float]:
    """Fit `model` with AdamW for `steps` minibatch steps; return the loss of every step.

    The learning rate decays from `lr` to lr / 20 on a cosine over the steps (no warm-up).
    Batches are drawn with replacement from a generator seeded with `seed` (the flow head's
    noise too), so equal model, data and seed give equal losses and weights. The normalisation
    buffers are not touched: call `fit_normalization` first. The model is left in eval mode.
    """
    from vla_insertion.core.train.trainer import TrainConfig, Trainer
    cfg = TrainConfig(steps=steps, lr=lr, sensor_lr=lr, batch_size=min(batch_size, len(dataset)),
                      seed=seed, weight_decay=weight_decay, grad_clip=grad_clip, warmup_steps=0,
                      val_every=0, save_every=0)
    on_step = None if callback is None else (lambda info: callback(info['step'] - 1, info['loss']))
    return Trainer(model, dataset, cfg, on_step=on_step, progress_bar=False).run().losses
