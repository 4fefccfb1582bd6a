"""The action expert network, readable top to bottom.

Inputs at one tick (raw, physical units; the model normalises them itself):

    features (B, T, F)   VL features from the VLM (T tokens of the VLM hidden size F)
    window   (B, W, C)   the newest W sensor samples (65 x 7 by default), oldest first; rows of an
                         incomplete window are NaN
    state    (B, S)      robot state: 6 joints [rad], tool xyz [m], quaternion xyzw, gripper [0..1]
    capture  (B, S)      the robot state when the features' views were taken (`capture_motion`)

Output: actions (B, H, A) in physical units (8 x 7 by default: 6 absolute joint targets [rad] and
the gripper command [0..1]).

Inside, the network predicts the joint targets relative to the measured joints in `state`
(`action_frame: delta`, the default) and adds them back: the same motion from anywhere is the
same output, so the network spends its precision on where to go next rather than on where the
arm already is, and it cannot reproduce a target by recalling the pose it came from. A peg needs
~1 mm (~0.002 rad) where absolute targets spread over ~0.3 rad. `absolute` predicts the targets
themselves (checkpoints from before the field load as absolute).

    window -> SensorEncoder --(B, sensor_dim)----------.
    features -> VLTokens (or VLPooling) --(B, vl_dim)---+-> Fusion -> Trunk --(B, D) --> head
    state, state - capture -> StateEncoder --(B, S_h)--'

Features are old when used (a VLM update every ~0.4 s, reused by ~4 ticks): what the wrist
view says is where the hole was relative to the tip at the capture. With the motion since the
capture as an input, the network can carry that forward to now; without it, it could only
guess how far the arm moved.

Two heads share everything up to the context:
- regression: one linear map of the context (the default; one pass, cheapest);
- flow: flow matching. The context is projected ONCE per prediction; each of the `steps` Euler
  steps of the ODE then runs only the small velocity network on the noisy chunk. It can also
  continue a committed prefix of actions (real-time chunking, see FlowHead.sample).

Where the parameters sit matters for latency at batch 1 on a CPU: a matrix that multiplies a
single vector is read once per prediction (memory-bound, ~4 bytes per parameter), a matrix applied
to every token or time step costs compute for each of them. So the large matrices (VL projection,
sensor flatten, trunk) each multiply one vector, and per-token or per-sample work is kept to a
few small matrices: VL attention scores (F x Q) and the sensor convolutions.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
import math

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F  # noqa: N812

from vla_insertion.core.config import require, require_one_of, require_positive

FUSIONS = ('concat', 'sum')
HEADS = ('regression', 'flow')
VL_POOLINGS = ('tokens', 'attention')
ACTION_FRAMES = ('delta', 'absolute')
JOINTS = 6                      # state[:, :6] are the measured joints, actions[..., :6] targets


def to_action_frame(actions: torch.Tensor, states: torch.Tensor, frame: str) -> torch.Tensor:
    """Return physical (B, H, A) actions in the network frame: joints minus measured joints."""
    if frame == 'absolute':
        return actions
    n = min(JOINTS, actions.shape[-1], states.shape[-1])   # fewer in small test models
    out = actions.clone()
    out[..., :n] -= states[:, None, :n]
    return out


def from_action_frame(actions: torch.Tensor, states: torch.Tensor, frame: str) -> torch.Tensor:
    """Return physical (B, H, A) actions from the network frame (inverse of to_action_frame)."""
    if frame == 'absolute':
        return actions
    n = min(JOINTS, actions.shape[-1], states.shape[-1])
    out = actions.clone()
    out[..., :n] += states[:, None, :n]
    return out


@dataclass(frozen=True)
class ExpertModelConfig:
    """Architecture of the action expert; stored in every checkpoint."""

    # inputs: fixed by the feature contract, the sensor and the robot
    feature_tokens: int = 41       # rows of the VL feature matrix (FeatureContract.num_tokens)
    feature_dim: int = 2048        # columns of the VL feature matrix: the VLM hidden size
    window_samples: int = 65       # sensor window length [samples] (100 ms at 650 Hz)
    sensor_channels: int = 7       # sensor channels (fx fy fz [N], tx ty tz [N m], distance [m])
    state_dim: int = 14            # joints [rad] (6), tool xyz [m] (3), quaternion (4), gripper
    # output
    horizon: int = 8               # actions per chunk
    action_dim: int = 7            # values per action: 6 joint targets [rad] + gripper [0..1]
    # widths
    sensor_conv: int = 256         # channels of the sensor encoder's convolutions
    sensor_dim: int = 512          # sensor embedding width
    vl_pooling: str = 'tokens'     # 'tokens' (keeps where each token is) or 'attention'
    vl_token_dim: int = 128        # 'tokens': width each token is projected to before flattening
    vl_queries: int = 4            # 'attention': learned pooling queries over the VL tokens
    vl_dim: int = 512              # VL embedding width
    feature_norm: bool = True      # VL features standardised per token and dimension (buffers)
    capture_motion: bool = True    # the state encoder also sees the motion since the capture
    state_hidden: int = 256        # robot-state embedding width
    fusion: str = 'concat'         # 'concat' (as in the seeds) or 'sum' of equal-width projections
    trunk_dim: int = 1920          # width of the fused residual MLP = context width
    trunk_layers: int = 3          # residual blocks in the trunk
    head: str = 'regression'       # 'regression' (one pass) or 'flow' (flow matching, ODE steps)
    flow_steps: int = 10           # Euler steps of the flow head's ODE when the caller gives none
    flow_hidden: int = 1024        # width of the flow head's velocity network
    flow_layers: int = 2           # residual blocks in the velocity network
    prefix_conditioning: bool = False  # flow head trained to continue a committed prefix (RTC)
    action_frame: str = 'delta'    # joint targets predicted relative to the measured joints

    def __post_init__(self) -> None:
        for name in ('feature_tokens', 'feature_dim', 'window_samples', 'sensor_channels',
                     'state_dim', 'horizon', 'action_dim', 'sensor_conv', 'sensor_dim',
                     'vl_token_dim', 'vl_queries', 'vl_dim', 'state_hidden', 'trunk_dim',
                     'flow_steps', 'flow_hidden'):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool),
                    f'{name} must be an integer, got {value!r}')
            require_positive(name, value)
        for name in ('trunk_layers', 'flow_layers'):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 0,
                    f'{name} must be an integer >= 0, got {value!r}')
        require(self.sensor_conv % 2 == 0, f'sensor_conv must be even, got {self.sensor_conv}')
        require_one_of('fusion', self.fusion, FUSIONS)
        require_one_of('head', self.head, HEADS)
        require_one_of('vl_pooling', self.vl_pooling, VL_POOLINGS)
        for name in ('feature_norm', 'capture_motion'):
            require(isinstance(getattr(self, name), bool),
                    f'{name} must be true or false, got {getattr(self, name)!r}')
        require_one_of('action_frame', self.action_frame, ACTION_FRAMES)
        require(isinstance(self.prefix_conditioning, bool) and
                (self.head == 'flow' or not self.prefix_conditioning),
                f'prefix_conditioning needs the flow head, got {self.prefix_conditioning!r} '
                f'with head {self.head!r}')

    def to_dict(self) -> dict:
        return asdict(self)


def _conv_length(length: int, stride: int) -> int:
    # kernel 5, padding 2
    return (length - 1) // stride + 1


class ResidualMLP(nn.Module):
    """`layers` pre-norm residual blocks x + GELU(Linear(LayerNorm(x))), then a LayerNorm."""

    def __init__(self, width: int, layers: int) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(layers))
        self.linears = nn.ModuleList(nn.Linear(width, width) for _ in range(layers))
        self.out_norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, D)
        for norm, linear in zip(self.norms, self.linears):
            x = x + F.gelu(linear(norm(x)))
        return self.out_norm(x)


class SensorEncoder(nn.Module):
    """(B, W, C) normalised samples and a (B, W) validity mask -> (B, sensor_dim).

    The mask is an extra input channel (1 = received sample, 0 = missing row, whose values were
    set to 0 = the channel mean), so the encoder knows a zero is "no data", not "average force".
    The last feature map is flattened rather than pooled: when in the window a force changed
    matters for insertion.
    """

    def __init__(self, cfg: ExpertModelConfig) -> None:
        super().__init__()
        c_in, hidden = cfg.sensor_channels + 1, cfg.sensor_conv
        self.convs = nn.Sequential(
            nn.Conv1d(c_in, hidden // 2, kernel_size=5, padding=2), nn.GELU(),
            nn.Conv1d(hidden // 2, hidden, kernel_size=5, stride=2, padding=2), nn.GELU(),
            nn.Conv1d(hidden, hidden, kernel_size=5, stride=2, padding=2), nn.GELU())
        steps = _conv_length(_conv_length(cfg.window_samples, 2), 2)  # 65 -> 33 -> 17
        self.proj = nn.Linear(hidden * steps, cfg.sensor_dim)
        self.norm = nn.LayerNorm(cfg.sensor_dim)

    def forward(self, samples: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.cat([samples, mask.unsqueeze(-1)], dim=-1)      # (B, W, C + 1)
        x = self.convs(x.transpose(1, 2))                         # (B, hidden, W / 4)
        return self.norm(self.proj(x.flatten(1)))                 # (B, sensor_dim)


class VLPooling(nn.Module):
    """(B, T, F) VL features -> (B, vl_dim) by attention pooling with Q learned queries.

    Each query's score of a token is one dot product with the normalised token, so per-token
    work is T x F x Q multiply-adds; the Q pooled rows are then projected once (Q x F x vl_dim
    weights read once per prediction, not once per token). A weighted sum forgets which token
    said what: in a grid of image tokens, where the hole is.
    """

    def __init__(self, cfg: ExpertModelConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(cfg.feature_dim)
        self.score = nn.Linear(cfg.feature_dim, cfg.vl_queries)
        self.proj = nn.Linear(cfg.vl_queries * cfg.feature_dim, cfg.vl_dim)
        self.out_norm = nn.LayerNorm(cfg.vl_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.norm(features)                                   # (B, T, F)
        weights = torch.softmax(self.score(x), dim=1)             # (B, T, Q), sums to 1 over T
        pooled = torch.einsum('btq,btf->bqf', weights, x)         # (B, Q, F)
        return self.out_norm(self.proj(pooled.flatten(1)))        # (B, vl_dim)


class VLTokens(nn.Module):
    """(B, T, F) VL features -> (B, vl_dim), keeping which token said what.

    The image tokens are a grid over each view (FeatureContract.reduction), so where the hole is
    in the wrist view is in which token's values change, not in their average. Each token is
    projected to k values by one shared F x k matrix, and the T x k values are flattened into
    one projection: T x k x vl_dim weights read once per prediction (41 x 128 x 512 = 2.7M for
    the default), where flattening the raw 3B-model tokens would take T x F x vl_dim (43M).
    """

    def __init__(self, cfg: ExpertModelConfig) -> None:
        super().__init__()
        self.token_proj = nn.Linear(cfg.feature_dim, cfg.vl_token_dim)
        self.flat_proj = nn.Linear(cfg.feature_tokens * cfg.vl_token_dim, cfg.vl_dim)
        self.out_norm = nn.LayerNorm(cfg.vl_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.token_proj(features)                             # (B, T, k)
        return self.out_norm(self.flat_proj(x.flatten(1)))        # (B, vl_dim)


class StateEncoder(nn.Module):
    """(B, S) normalised robot state [and (B, S) normalised motion] -> (B, state_hidden).

    With `capture_motion` the input is the state and, beside it, how far the robot moved since
    the VL features' views were taken (state now - state at the capture): what the views show
    (the hole relative to the tip) is from the capture, and the features are a few hundred
    milliseconds old when used. The hole does not move; the tip does, by exactly this much.
    """

    def __init__(self, cfg: ExpertModelConfig) -> None:
        super().__init__()
        width = cfg.state_dim * (2 if cfg.capture_motion else 1)
        self.net = nn.Sequential(nn.Linear(width, cfg.state_hidden), nn.GELU(),
                                 nn.Linear(cfg.state_hidden, cfg.state_hidden),
                                 nn.LayerNorm(cfg.state_hidden))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.net(state)


class Fusion(nn.Module):
    """Sensor, VL and state embeddings -> (B, trunk_dim).

    'concat' concatenates the three and maps them with one linear layer; 'sum' projects each to
    trunk_dim and adds them.
    """

    def __init__(self, cfg: ExpertModelConfig) -> None:
        super().__init__()
        self.mode = cfg.fusion
        widths = (cfg.sensor_dim, cfg.vl_dim, cfg.state_hidden)
        if self.mode == 'concat':
            self.proj = nn.Linear(sum(widths), cfg.trunk_dim)
        else:
            self.projs = nn.ModuleList(nn.Linear(w, cfg.trunk_dim) for w in widths)

    def forward(self, sensor: torch.Tensor, vl: torch.Tensor, state: torch.Tensor
                ) -> torch.Tensor:
        if self.mode == 'concat':
            return self.proj(torch.cat([sensor, vl, state], dim=-1))
        return sum(p(x) for p, x in zip(self.projs, (sensor, vl, state)))


class RegressionHead(nn.Module):
    """(B, D) context -> (B, H * A) normalised actions in one linear map."""

    def __init__(self, cfg: ExpertModelConfig) -> None:
        super().__init__()
        self.out = nn.Linear(cfg.trunk_dim, cfg.horizon * cfg.action_dim)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.out(context)


def time_embedding(t: torch.Tensor, dim: int = 64) -> torch.Tensor:
    """Sinusoidal embedding of flow times t in [0, 1]: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=t.dtype, device=t.device)
                      * (-math.log(1000.0) / max(half - 1, 1)))
    angles = 1000.0 * t.unsqueeze(-1) * freqs                     # (B, half)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class FlowHead(nn.Module):
    """Flow matching: integrate a velocity field from noise (t=0) to normalised actions (t=1).

    The context enters the velocity network through one projection computed once per prediction
    (`condition`); every Euler step then costs only the velocity network on the (B, H * A)
    noisy chunk.

    With `prefix_conditioning` (training-time real-time chunking, arXiv 2512.05964) the first d
    actions of a training chunk are given clean, flagged by a (B, H) mask input, and only the
    others are learned; `continue_prefix` samples a chunk that continues committed actions.
    """

    TIME_DIM = 64

    def __init__(self, cfg: ExpertModelConfig) -> None:
        super().__init__()
        out = cfg.horizon * cfg.action_dim
        self.context_proj = nn.Linear(cfg.trunk_dim, cfg.flow_hidden)
        self.action_in = nn.Linear(out, cfg.flow_hidden)
        self.time_in = nn.Linear(self.TIME_DIM, cfg.flow_hidden)
        self.blocks = ResidualMLP(cfg.flow_hidden, cfg.flow_layers)
        self.out = nn.Linear(cfg.flow_hidden, out)
        self.prefix_in = nn.Linear(cfg.horizon, cfg.flow_hidden) if cfg.prefix_conditioning \
            else None
        self.horizon = cfg.horizon

    def condition(self, context: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, hidden)
        return self.context_proj(context)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                 prefix_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = cond + self.action_in(x) + self.time_in(time_embedding(t, self.TIME_DIM))
        if self.prefix_in is not None:  # (B, H): 1 where the action is a given prefix
            if prefix_mask is None:
                prefix_mask = x.new_zeros((x.shape[0], self.horizon))
            h = h + self.prefix_in(prefix_mask)
        return self.out(self.blocks(F.gelu(h)))                   # (B, H * A)

    def sample(self, context: torch.Tensor, steps: int, noise: torch.Tensor,
               prefix: torch.Tensor | None = None, weights: torch.Tensor | None = None
               ) -> torch.Tensor:
        """Integrate from `noise` (B, H * A) at t = 0 to normalised actions at t = 1.

        Prefix inpainting (real-time chunking, Black et al. 2025): `prefix` (B, H * A) holds
        normalised target actions and `weights` (B, H * A) how strongly to hold each to its
        target (1 committed, 0 free). After every Euler step x is pulled towards the point that
        the straight path from this noise to the target reaches at the new time, the
        interpolation the loss trains on: x <- x + w ((1 - t) noise + t prefix - x). Weight 1
        also applies at the last step (t = 1), so committed actions come out equal to the
        prefix; weights below 1 guide the intermediate steps only and leave the last to the
        model. RTC guides through a vector-Jacobian product of the network instead (PiGDM);
        this replacement needs no backward pass and runs under inference_mode.
        """
        cond = self.condition(context)                            # once per prediction
        x, dt = noise, 1.0 / steps                                # (B, H * A) at t = 0
        if prefix is not None:
            hard = (weights >= 1.0).to(x.dtype)                   # (B, H * A)
        for i in range(steps):
            t = torch.full((x.shape[0],), i * dt, dtype=x.dtype, device=x.device)
            x = x + dt * self.velocity(x, t, cond)
            if prefix is not None:
                t_next = (i + 1) * dt
                w = weights if i < steps - 1 else hard
                x = x + w * ((1.0 - t_next) * noise + t_next * prefix - x)
        return x

    def loss(self, context: torch.Tensor, target: torch.Tensor,
             generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
             t: torch.Tensor | None = None, prefix_len: torch.Tensor | None = None
             ) -> torch.Tensor:
        """Rectified-flow loss: the velocity at x_t = (1 - t) x0 + t x1 should be x1 - x0.

        `noise` (B, H * A) and `t` (B,) are drawn with `generator` unless given. `prefix_len`
        (B,) (prefix-conditioned head): the first d actions of x_t are the clean target, the
        mask says so, and the loss is the mean over the other actions of each sample.
        """
        if noise is None:
            noise = torch.randn(target.shape, generator=generator, dtype=target.dtype,
                                device=target.device)
        if t is None:
            t = torch.rand(target.shape[0], generator=generator, dtype=target.dtype,
                           device=target.device)
        x_t = (1 - t[:, None]) * noise + t[:, None] * target
        if prefix_len is None or self.prefix_in is None:
            return F.mse_loss(self.velocity(x_t, t, self.condition(context)), target - noise)
        steps = torch.arange(self.horizon, device=target.device)
        mask = (steps[None, :] < prefix_len[:, None]).to(target.dtype)             # (B, H)
        given = mask.repeat_interleave(target.shape[1] // self.horizon, dim=1)     # (B, H * A)
        x_t = given * target + (1 - given) * x_t
        error = (self.velocity(x_t, t, self.condition(context), mask) - (target - noise)) ** 2
        free = 1 - given
        return ((error * free).sum(1) / free.sum(1).clamp(min=1)).mean()

    def continue_prefix(self, context: torch.Tensor, steps: int, noise: torch.Tensor,
                        prefix: torch.Tensor, prefix_len: torch.Tensor) -> torch.Tensor:
        """Sample (B, H * A) normalised actions whose first `prefix_len` are `prefix`'s.

        Prefix-conditioned head only: the given actions are held clean at every Euler step and
        flagged by the mask, as in training.
        """
        if self.prefix_in is None:
            raise ValueError('this flow head was not trained with prefix_conditioning')
        steps_h = torch.arange(self.horizon, device=noise.device)
        mask = (steps_h[None, :] < prefix_len[:, None]).to(noise.dtype)            # (B, H)
        given = mask.repeat_interleave(noise.shape[1] // self.horizon, dim=1)      # (B, H * A)
        cond = self.condition(context)
        x, dt = noise, 1.0 / steps
        for i in range(steps):
            x = given * prefix + (1 - given) * x
            t = torch.full((x.shape[0],), i * dt, dtype=x.dtype, device=x.device)
            x = x + dt * self.velocity(x, t, cond, mask)
        return given * prefix + (1 - given) * x


class ActionExpert(nn.Module):
    """The whole expert: raw inputs in, de-normalised action chunk out.

    Normalisation statistics are buffers, saved and loaded with the weights: sensor channels,
    robot state and actions each have a mean and a std per dimension; with `feature_norm` the
    VL features have one per token and dimension (T, F), and with `capture_motion` the motion
    since the capture one per state dimension.
    """

    def __init__(self, cfg: ExpertModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.sensor_encoder = SensorEncoder(cfg)
        self.vl_pooling = VLTokens(cfg) if cfg.vl_pooling == 'tokens' else VLPooling(cfg)
        self.state_encoder = StateEncoder(cfg)
        self.fusion = Fusion(cfg)
        self.trunk = ResidualMLP(cfg.trunk_dim, cfg.trunk_layers)
        self.head = RegressionHead(cfg) if cfg.head == 'regression' else FlowHead(cfg)
        shapes = {'sensor': (cfg.sensor_channels,), 'state': (cfg.state_dim,),
                  'action': (cfg.action_dim,)}
        if cfg.feature_norm:
            shapes['feature'] = (cfg.feature_tokens, cfg.feature_dim)
        if cfg.capture_motion:
            shapes['motion'] = (cfg.state_dim,)
        for name, shape in shapes.items():
            self.register_buffer(f'{name}_mean', torch.zeros(shape))
            self.register_buffer(f'{name}_std', torch.ones(shape))
        self.norm_buffers = tuple(f'{name}_{stat}' for name in shapes
                                  for stat in ('mean', 'std'))

    # --- normalisation --------------------------------------------------------------------

    def set_normalization(self, stats: dict) -> None:
        """Set the mean/std buffers from {name: array}; stds must be finite and > 0."""
        for name in self.norm_buffers:
            if name not in stats:
                continue
            buf = getattr(self, name)
            value = torch.as_tensor(np.asarray(stats[name]), dtype=buf.dtype)
            if value.numel() != buf.numel():
                raise ValueError(f'{name}: expected shape {tuple(buf.shape)}, '
                                 f'got {tuple(value.shape)}')
            value = value.reshape(buf.shape)
            if not torch.isfinite(value).all() or (name.endswith('_std') and (value <= 0).any()):
                raise ValueError(f'{name}: values must be finite (and stds > 0), got {value}')
            buf.copy_(value)

    def normalization(self) -> dict[str, list]:
        return {name: getattr(self, name).tolist() for name in self.norm_buffers}

    # --- forward --------------------------------------------------------------------------

    def encode(self, features: torch.Tensor, window: torch.Tensor, state: torch.Tensor,
               capture: torch.Tensor | None = None) -> torch.Tensor:
        """Raw inputs -> (B, trunk_dim) context, computed once per prediction.

        `capture` (B, S): the robot state when the features' views were taken (with
        `capture_motion`; ignored without). None: taken at this state, no motion since, as for
        features fresh at the tick. The policy and training always give it.
        """
        # Incomplete window: a row with any non-finite value is missing. It is set to the
        # channel mean (0 after normalisation) and flagged 0 in the mask channel.
        valid = torch.isfinite(window).all(dim=-1)                # (B, W) bool
        samples = (window - self.sensor_mean) / self.sensor_std   # (B, W, C)
        samples = torch.where(valid.unsqueeze(-1), samples, torch.zeros_like(samples))
        robot = (state - self.state_mean) / self.state_std        # (B, S)
        if self.cfg.capture_motion:
            moved = state - capture if capture is not None else torch.zeros_like(state)
            motion = (moved - self.motion_mean) / self.motion_std
            robot = torch.cat([robot, motion], dim=-1)            # (B, 2 S)
        if self.cfg.feature_norm:
            features = (features - self.feature_mean) / self.feature_std
        fused = self.fusion(self.sensor_encoder(samples, valid.to(samples.dtype)),
                            self.vl_pooling(features),
                            self.state_encoder(robot))            # (B, D)
        return self.trunk(fused)                                  # (B, D)

    def forward(self, features: torch.Tensor, window: torch.Tensor, state: torch.Tensor,
                capture: torch.Tensor | None = None, *, steps: int | None = None,
                noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
                prefix: torch.Tensor | None = None,
                prefix_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Predict (B, H, A) actions in physical units (`capture`: as in `encode`).

        Flow head only: `steps` Euler steps (default cfg.flow_steps), starting from `noise`
        (B, H * A) or from Gaussian noise drawn with `generator`; `prefix` (B, P, A) in
        physical units, P <= H, with `prefix_weights` (B, P) in [0, 1] (default 1: committed)
        holds the first P actions to it (see FlowHead.sample and `rtc_prefix`).
        """
        cfg = self.cfg
        context = self.encode(features, window, state, capture)   # (B, D)
        if isinstance(self.head, FlowHead):
            steps = cfg.flow_steps if steps is None else int(steps)
            if steps < 1:
                raise ValueError(f'steps must be >= 1, got {steps}')
            if noise is None:
                noise = torch.randn((context.shape[0], cfg.horizon * cfg.action_dim),
                                    generator=generator, dtype=context.dtype,
                                    device=context.device)
            target, weights = (None, None) if prefix is None else \
                self._inpainting(prefix, prefix_weights, state)
            if target is not None and self.head.prefix_in is not None:
                # trained to continue prefixes: the committed (weight 1) actions go in clean
                given = (weights.view(-1, cfg.horizon, cfg.action_dim)[:, :, 0] >= 1.0).sum(1)
                flat = self.head.continue_prefix(context, steps, noise, target, given)
            else:
                flat = self.head.sample(context, steps, noise, target, weights)  # (B, H * A)
        else:
            if prefix is not None:
                raise ValueError('the regression head cannot continue a prefix')
            flat = self.head(context)                             # (B, H * A)
        actions = flat.view(-1, cfg.horizon, cfg.action_dim)      # (B, H, A) normalised
        return from_action_frame(actions * self.action_std + self.action_mean, state,
                                 cfg.action_frame)                # (B, H, A) physical

    def _inpainting(self, prefix: torch.Tensor, weights: torch.Tensor | None,
                    state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P, A) physical prefix and (B, P) weights -> normalised (B, H * A) both."""
        cfg = self.cfg
        if prefix.dim() != 3 or prefix.shape[2] != cfg.action_dim or \
                not 1 <= prefix.shape[1] <= cfg.horizon:
            raise ValueError(f'prefix must be (B, 1..{cfg.horizon}, {cfg.action_dim}), got '
                             f'{tuple(prefix.shape)}')
        batch, length = prefix.shape[:2]
        target = prefix.new_zeros((batch, cfg.horizon, cfg.action_dim))
        target[:, :length] = (to_action_frame(prefix, state, cfg.action_frame)
                              - self.action_mean) / self.action_std
        w = prefix.new_zeros((batch, cfg.horizon))
        w[:, :length] = 1.0 if weights is None else weights.clamp(0.0, 1.0)
        return target.flatten(1), w.unsqueeze(-1).expand(-1, -1, cfg.action_dim).flatten(1)

    def loss(self, features: torch.Tensor, window: torch.Tensor, state: torch.Tensor,
             actions: torch.Tensor, generator: torch.Generator | None = None, *,
             capture: torch.Tensor | None = None, noise: torch.Tensor | None = None,
             t: torch.Tensor | None = None, prefix_len: torch.Tensor | None = None
             ) -> torch.Tensor:
        """Training loss against (B, H, A) target actions in physical units.

        `capture` as in `encode`. Flow head: `noise`, `t` and `prefix_len` as in FlowHead.loss
        (drawn when not given).
        """
        context = self.encode(features, window, state, capture)
        target = ((to_action_frame(actions, state, self.cfg.action_frame) - self.action_mean)
                  / self.action_std).flatten(1)                  # (B, H * A)
        if isinstance(self.head, FlowHead):
            return self.head.loss(context, target, generator, noise, t, prefix_len)
        return F.mse_loss(self.head(context), target)


PREFIX_SOFT_STEPS = 3           # free actions after a committed prefix that are still guided
PREFIX_SOFT_DECAY = 1.0         # their weights exp(-decay j), j = 1, 2, ...: 0.37, 0.14, 0.05


def rtc_prefix(committed: torch.Tensor, horizon: int, soft_steps: int = PREFIX_SOFT_STEPS,
               decay: float = PREFIX_SOFT_DECAY) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn committed (B, d, A) actions into (B, P, A) inpainting targets, (B, P) weights.

    Weight 1 on the d committed actions (hard inpainting); the next `soft_steps` actions within
    the horizon get exponentially decaying weights towards the committed motion continued at
    its last velocity (the last action itself when d = 1). RTC's soft mask decays over the
    rest of the previous chunk; the executor commits only d actions, so this constant-velocity
    continuation stands in for that remainder: it keeps the seam smooth without binding the
    free actions.
    """
    d = committed.shape[1]
    soft = max(0, min(soft_steps, horizon - d))
    step = committed[:, -1] - committed[:, -2] if d >= 2 else torch.zeros_like(committed[:, -1])
    j = torch.arange(1, soft + 1, dtype=committed.dtype, device=committed.device)   # (soft,)
    extension = committed[:, -1:] + j[None, :, None] * step[:, None]              # (B, soft, A)
    weights = torch.cat([torch.ones(d, dtype=committed.dtype, device=committed.device),
                         torch.exp(-decay * j)])                                  # (P,)
    return (torch.cat([committed, extension], dim=1),
            weights.expand(committed.shape[0], -1))


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
