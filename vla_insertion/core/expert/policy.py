"""ExpertPolicy: the action expert behind the shared `infer(obs) -> output` / `reset()` interface.

`infer(ExpertObservation) -> ActionChunkData` builds the model's tensors from the newest VL
features, sensor window and robot state, runs the network under `torch.inference_mode()` and
returns the chunk in physical units.

Time stamps: the chunk's `stamp_s` is the tick time `obs.now_s`, the moment the observations were
sampled, and action k applies at `stamp_s + k * dt_s`. No latency compensation is added: the
inference time is a few ms and is reported in `inference_ms`, so a consumer that wants to skip
actions whose time has passed can do it from the stamp.

Prefix (real-time chunking): `obs.prefix` (d, A) holds the actions the chunk executor has
committed to, applying at now_s + k dt. A flow head generates its chunk to continue them (its
first d actions equal the prefix; model.rtc_prefix, FlowHead.sample). A regression head has no
input for it and ignores it; a regression checkpoint whose config.json `extra` says
`trained_with_prefix: true` is refused at load, as this model version cannot feed it one.

Precision: `precision='int8'` or `'fp16'` converts the large Linear layers at load time
(quantize.py; CPU only, the checkpoint is unchanged): int8 halves one thread's time for the
default size (~11 -> ~5 ms per call on the development VM) at up to ~6 % of an action std;
fp16 is nearly as fast and ~1e-3 close.

Determinism: with `seed` set (default 0), the flow head starts every prediction from the same
noise drawn from a generator seeded with `seed`, so equal inputs give equal chunks in any call
order (open-loop evaluation, tests). `seed=None` draws fresh noise each call. The regression head
is deterministic either way.
"""
from __future__ import annotations

from pathlib import Path
import time

import numpy as np
import torch

from vla_insertion.core.data import ActionChunkData, RobotState
from vla_insertion.core.expert.checkpoint import (
    check_features, CheckpointError, CheckpointMeta, ExpertCheckpoint, load_checkpoint)
from vla_insertion.core.expert.model import FlowHead, rtc_prefix
from vla_insertion.core.expert.quantize import quantize_expert
from vla_insertion.core.interfaces import ExpertObservation


class ObservationError(ValueError):
    """An observation does not fit the checkpoint (shape, channel names, non-finite values)."""


def robot_state_vector(robot: RobotState, joints: int = 6) -> np.ndarray:
    """Return the (joints + 8,) float32 state: joints [rad], tool xyz [m], quaternion, gripper.

    The quaternion is flipped to w >= 0 (q and -q are the same rotation), so the network sees
    one representation of each orientation.
    """
    q = np.asarray(robot.tool_orientation_xyzw, dtype=np.float64).reshape(-1)
    positions = np.asarray(robot.joint_positions_rad, dtype=np.float64).reshape(-1)
    position = np.asarray(robot.tool_position_m, dtype=np.float64).reshape(-1)
    if positions.size != joints or position.size != 3 or q.size != 4:
        raise ObservationError(f'robot state: expected {joints} joints, 3 position and 4 '
                               f'quaternion values, got {positions.size}, {position.size}, '
                               f'{q.size}')
    if q[3] < 0:
        q = -q
    state = np.concatenate([positions, position, q, [float(robot.gripper)]]).astype(np.float32)
    if not np.isfinite(state).all():
        raise ObservationError(f'robot state has non-finite values: {state}')
    return state


class ExpertPolicy:
    """Run a loaded action-expert checkpoint on observations."""

    def __init__(self, checkpoint: ExpertCheckpoint | str | Path, *, device: str = 'cpu',
                 steps: int | None = None, seed: int | None = 0,
                 precision: str = 'fp32') -> None:
        if not isinstance(checkpoint, ExpertCheckpoint):
            checkpoint = load_checkpoint(checkpoint, device=device)
        self._model = quantize_expert(checkpoint.model.to(device).eval(), precision)
        self._precision = precision
        self._meta = checkpoint.meta
        self._device = torch.device(device)
        self._is_flow = isinstance(self._model.head, FlowHead)
        if not self._is_flow and self._meta.extra.get('trained_with_prefix'):
            raise CheckpointError('a regression head trained with a prefix needs a prefix input '
                                  'this model version does not have')
        self._steps = steps if steps else self._meta.model.flow_steps
        if self._steps < 1:
            raise ValueError(f'steps must be >= 1, got {self._steps}')
        self._seed = seed
        self._generator = torch.Generator(device=self._device)
        if seed is not None:
            self._generator.manual_seed(seed)
        self._joints = self._meta.model.state_dim - 8
        names = self._meta.action_names
        self._gripper = names.index('gripper') if 'gripper' in names else None

    @property
    def meta(self) -> CheckpointMeta:
        return self._meta

    @property
    def model(self) -> torch.nn.Module:
        return self._model

    @property
    def precision(self) -> str:
        """'fp32', 'int8' or 'fp16': the weights of the large Linear layers."""
        return self._precision

    @property
    def steps(self) -> int:
        """ODE steps per prediction (flow head); 1 for the regression head."""
        return self._steps if self._is_flow else 1

    def set_steps(self, steps: int | None) -> None:
        """Use `steps` ODE steps from the next prediction on (None or 0: the checkpoint's)."""
        steps = steps or self._meta.model.flow_steps
        if steps < 1:
            raise ValueError(f'steps must be >= 1, got {steps}')
        self._steps = steps

    def describe(self) -> str:
        """Return a one-line description for the start-up log."""
        meta = self._meta
        label = 'UNTRAINED (random weights, actions are meaningless)' if meta.untrained \
            else 'trained'
        return (f'{label}, head {meta.model.head} ({self.steps} steps), contract '
                f'{meta.contract_digest} {meta.feature_shape}')

    def warm_up(self, runs: int = 3) -> None:
        """Run the model on zeros so lazy initialisation does not land on the first tick."""
        cfg = self._meta.model
        dev = self._device
        with torch.inference_mode():
            for _ in range(runs):
                state = torch.zeros(1, cfg.state_dim, device=dev)
                self._model(torch.zeros(1, cfg.feature_tokens, cfg.feature_dim, device=dev),
                            torch.zeros(1, cfg.window_samples, cfg.sensor_channels, device=dev),
                            state, state, steps=self.steps)

    def reset(self) -> None:
        """Forget state between episodes: re-seed the noise generator."""
        if self._seed is not None:
            self._generator.manual_seed(self._seed)

    def _tensors(self, obs: ExpertObservation) -> tuple[torch.Tensor, ...]:
        meta, cfg = self._meta, self._meta.model
        check_features(meta, obs.features)                        # ContractMismatch
        features = np.asarray(obs.features.features, dtype=np.float32)
        if not np.isfinite(features).all():
            raise ObservationError('VL features contain non-finite values')
        window = obs.window
        samples = np.asarray(window.samples, dtype=np.float32)
        if samples.shape != (cfg.window_samples, cfg.sensor_channels):
            raise ObservationError(f'sensor window shape {samples.shape} != checkpoint '
                                   f'{(cfg.window_samples, cfg.sensor_channels)}')
        if window.channel_names and tuple(window.channel_names) != meta.sensor_channels:
            raise ObservationError(f'sensor channels {list(window.channel_names)} != checkpoint '
                                   f'{list(meta.sensor_channels)}')
        state = robot_state_vector(obs.robot, self._joints)
        capture = None
        if cfg.capture_motion:
            if obs.capture_robot is None:
                raise ObservationError('no robot state at the capture of the VL features (the '
                                       'expert needs the motion since)')
            capture = torch.from_numpy(robot_state_vector(obs.capture_robot, self._joints))
            capture = capture.to(self._device).unsqueeze(0)       # (1, S)
        dev = self._device
        return (torch.from_numpy(features).to(dev).unsqueeze(0),  # (1, T, F)
                torch.from_numpy(samples).to(dev).unsqueeze(0),   # (1, W, C), NaN rows allowed
                torch.from_numpy(state).to(dev).unsqueeze(0),     # (1, S)
                capture)                                          # (1, S) or None

    @property
    def uses_prefix(self) -> bool:
        """Whether `obs.prefix` shapes the chunk (the flow head); otherwise it is ignored."""
        return self._is_flow

    def _prefix(self, obs: ExpertObservation) -> tuple[torch.Tensor | None, ...]:
        """(1, P, A) inpainting targets and (1, P) weights from obs.prefix, or Nones."""
        if obs.prefix is None or not self.uses_prefix:
            return None, None
        cfg = self._meta.model
        prefix = np.asarray(obs.prefix, dtype=np.float32)
        if prefix.ndim != 2 or prefix.shape[1] != cfg.action_dim or prefix.shape[0] < 1:
            raise ObservationError(f'prefix shape {prefix.shape} != (d, {cfg.action_dim})')
        if not np.isfinite(prefix).all():
            raise ObservationError('prefix has non-finite values')
        committed = torch.from_numpy(prefix[:cfg.horizon]).to(self._device).unsqueeze(0)
        return rtc_prefix(committed, cfg.horizon)

    def predict(self, obs: ExpertObservation) -> np.ndarray:
        """Return the (horizon, action_dim) float32 actions for one observation."""
        features, window, state, capture = self._tensors(obs)
        prefix, weights = self._prefix(obs)
        noise = None
        if self._is_flow:
            if self._seed is not None:
                self._generator.manual_seed(self._seed)
            cfg = self._meta.model
            noise = torch.randn((1, cfg.horizon * cfg.action_dim), generator=self._generator,
                                device=self._device)
        with torch.inference_mode():
            actions = self._model(features, window, state, capture, steps=self._steps,
                                  noise=noise, prefix=prefix, prefix_weights=weights)
        out = actions[0].to('cpu', torch.float32).numpy()
        if self._gripper is not None:
            # the gripper command is 0 (open) .. 1 (closed) by definition; a regression head
            # says 1.003 for "closed", which the executor would clip and count as a
            # position-limit intervention at every control step
            out[:, self._gripper] = np.clip(out[:, self._gripper], 0.0, 1.0)
        return out

    def infer(self, obs: ExpertObservation) -> ActionChunkData:
        """Predict one chunk; raise ContractMismatch or ObservationError on unusable input."""
        t0 = time.perf_counter()
        actions = self.predict(obs)
        inference_ms = (time.perf_counter() - t0) * 1e3
        return ActionChunkData(
            stamp_s=obs.now_s, actions=actions, dt_s=self._meta.dt_s,
            feature_sequence=obs.features.sequence,
            feature_age_s=obs.now_s - obs.features.stamp_s,
            sensor_stamp_s=obs.window.stamp_s, sensor_age_s=obs.now_s - obs.window.stamp_s,
            inference_ms=inference_ms, untrained=self._meta.untrained,
            features_untrained=bool(obs.features.untrained))
