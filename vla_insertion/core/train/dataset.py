"""Training samples over VLM updates: ticks as the robot would act, features of a drawn age.

    bags + VLM updates (feature_cache) ──> collect_ticks: per episode, the ticks the expert
                                            runner accepts (refusals counted by reason), with
                                            window, state and target chunk
                                       ──> PairedDataset: per sample, the candidate updates and
                                            their draw probabilities (feature_age.pair_weights)

A sample is one tick t of one episode: the sensor window and robot state at t, the recorded
chunk after t, and VL features drawn at every use from the updates of its episode no older than
`max_feature_age_s` (so the staleness rules hold for whatever is drawn). The runner decides on
the youngest update whose VLM run had started by t: a tick is refused when no features exist
yet or even the youngest is too old, as the node refuses it. Features come from a
`FeatureBank` of cached (memory-mapped, fp16) or in-memory arrays; a training step reads them
and nothing else: no image is decoded and no VLM runs.

A sample's arrays, what the expert sees at the tick and what the robot then did:

    features (T, F)   VL features of the update drawn for it (`PairedDataset.pair`)
    window   (W, C)   the newest sensor window at the tick (NaN rows = missing samples)
    state    (S,)     the robot state at the tick (`policy.robot_state_vector`)
    actions  (H, A)   the recorded joint positions [rad] at tick + k * dt, k = 0..H-1, and the
                      recorded gripper [0..1] (0 where none was recorded): `tick_targets`

`normalization_stats` and `feature_stats` give the model's mean/std buffers from the samples.
The optimisation is `core.train.trainer.Trainer`; the whole stage-1 pipeline from bags is
`core.train.fit.fit`. ROS-free, plain PyTorch.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from vla_insertion.core.bag.recording import RecordedInputs, Recording, tick_times
from vla_insertion.core.data import DEFAULT_SENSOR_CHANNELS, VLFeatureData
from vla_insertion.core.evaluation import metrics
from vla_insertion.core.expert.capture import recorded_captures
from vla_insertion.core.expert.model import to_action_frame
from vla_insertion.core.expert.policy import robot_state_vector
from vla_insertion.core.expert.runner import ExpertRunner
from vla_insertion.core.feature_contract import FeatureContract
from vla_insertion.core.train.feature_age import AgeModel, pair_weights
from vla_insertion.core.train.feature_cache import CachedBag
from vla_insertion.core.train.split import Episode

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


class FeatureBank:
    """The VL features of several bags behind one global row index.

    With the bags' recordings it also holds each update's capture state: the robot state
    vector when its views were taken (`core.expert.capture`).
    """

    def __init__(self, bags: list[CachedBag], recordings: dict[str, Recording] | None = None
                 ) -> None:
        self.bags = bags
        counts = [len(b.updates) for b in bags]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # (nb + 1,)
        self.captures = None                                      # (rows, S) float32
        if recordings is not None:
            parts = [recorded_captures(b.stamps_s, recordings[b.path].robot,
                                       robot_state_vector) for b in bags if len(b.updates)]
            self.captures = np.concatenate(parts) if parts else None

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Global rows -> (bag index, row within the bag)."""
        bag = np.searchsorted(self.offsets, rows, side='right') - 1
        return bag, rows - self.offsets[bag]

    def features(self, rows: np.ndarray) -> torch.Tensor:
        """Return the (B, T, F) float32 features of global rows (read from the arrays only)."""
        rows = np.asarray(rows, dtype=np.int64)
        first = self.bags[0].features
        out = np.empty((rows.size,) + tuple(first.shape[1:]), dtype=np.float32)  # (B, T, F)
        bag, local = self.locate(rows)
        for b in np.unique(bag):
            sel = bag == b
            out[sel] = self.bags[b].features[local[sel]]
        return torch.from_numpy(out)

    def capture_states(self, rows: np.ndarray) -> torch.Tensor:
        """Return the (B, S) robot state vectors at the capture of global rows."""
        if self.captures is None:
            raise ValueError('this feature bank was built without its recordings: no capture '
                             'states')
        return torch.from_numpy(self.captures[np.asarray(rows, dtype=np.int64)])

    def feature_stats(self, rows: np.ndarray, chunk: int = 1024) -> dict[str, np.ndarray]:
        """Return feature_mean, feature_std (T, F) over the distinct global rows given."""
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        return feature_stats(self.features(rows[start:start + chunk])
                             for start in range(0, rows.size, chunk))


TARGETS = ('measured', 'chunks')


def _chunk_ticks(rec: Recording, horizon: int, dt_s: float) -> list[tuple[float, np.ndarray]]:
    """Return (stamp, actions (H, A)) of every recorded chunk, refusing another shape."""
    out = []
    for chunk in rec.chunks:
        actions = np.asarray(chunk.actions, dtype=np.float32)
        if actions.shape[0] != horizon or abs(chunk.dt_s - dt_s) > 1e-6:
            raise ValueError(f'{rec.path}: a recorded chunk of {actions.shape[0]} actions '
                             f'{chunk.dt_s} s apart; training wants {horizon} x {dt_s} s')
        out.append((float(chunk.stamp_s), actions))
    return out


def collect_ticks(rec: Recording, episode: Episode, cached: CachedBag, runner: ExpertRunner,
                  contract: FeatureContract, horizon: int, dt_s: float, rate_hz: float,
                  targets: str = 'measured') -> dict:
    """Return an episode's accepted ticks: tick_s, windows, states, actions, refused.

    `runner` (policy-free: `ExpertRunner(None, limits, contract_digest=..., feature_shape=...)`)
    decides each tick as the node would, on the youngest update whose run had started by then.
    `targets`: 'measured', ticks at `rate_hz` and what the robot then did (the recorded joints
    at tick + k dt); 'chunks', a tick at each recorded `vla/action_chunk` stamp and that chunk
    (the demonstrator's answer to what it saw then: no executor lag or unobserved velocity
    in the target).
    """
    inputs = RecordedInputs(rec, ())
    stamps, run_s = cached.stamps_s, cached.run_s
    blank = np.broadcast_to(np.float32(0), (contract.num_tokens, contract.feature_dim))
    out = {'tick_s': [], 'windows': [], 'states': [], 'actions': [], 'ticks': 0, 'refused': {}}
    if stamps.size == 0:                               # the VLM never ran in this bag
        return out
    first = max(stamps[0], episode.start_s)
    if targets == 'chunks':
        pairs = [(t, a) for t, a in _chunk_ticks(rec, horizon, dt_s) if t >= first]
    else:   # ticks on the grid open-loop evaluation uses: from the first views on
        pairs = [(t, tick_targets(inputs, t, horizon, dt_s))
                 for t in tick_times(inputs, rate_hz, not_before_s=first)]
    for t, actions in pairs:
        if not episode.contains(t, t + (horizon - 1) * dt_s):
            continue
        if actions is None:                        # the chunk runs past the recording
            continue
        out['ticks'] += 1
        k = int(np.searchsorted(run_s, t + 1e-9, side='right')) - 1
        features = None
        if k >= 0 and stamps[k] >= episode.start_s:
            features = VLFeatureData(stamp_s=float(stamps[k]), features=blank, sequence=k + 1,
                                     contract_hash=contract.digest, model_id=contract.model_id)
        window, robot = inputs.window(t), inputs.robot(t)
        if not runner.decide(features, window, robot, t).publish:
            continue
        if window.channel_names and tuple(window.channel_names) != DEFAULT_SENSOR_CHANNELS:
            raise ValueError(f'{rec.path}: sensor channels {list(window.channel_names)} != '
                             f'{list(DEFAULT_SENSOR_CHANNELS)}')
        out['tick_s'].append(t)
        out['windows'].append(np.asarray(window.samples, dtype=np.float32))
        out['states'].append(robot_state_vector(robot))
        out['actions'].append(actions)
    out['refused'] = runner.stats.refused.as_dict()
    return out


class PairedDataset:
    """Accepted ticks of some episodes, each with its candidate VLM updates and their weights."""

    def __init__(self, bank: FeatureBank, ticks: list[dict], bag_index: list[int],
                 episodes: list[Episode], age_model: AgeModel, max_age_s: float) -> None:
        self.bank = bank
        self.episodes = episodes
        parts = [t for t in ticks if t['tick_s']]
        if not parts:
            raise ValueError('no accepted tick in these episodes')
        self.windows = torch.from_numpy(np.concatenate([np.stack(p['windows']) for p in parts]))
        self.states = torch.from_numpy(np.concatenate([np.stack(p['states']) for p in parts]))
        self.actions = torch.from_numpy(np.concatenate([np.stack(p['actions']) for p in parts]))
        self.tick_s = np.concatenate([np.asarray(p['tick_s']) for p in parts])       # (N,)
        self.episode = np.concatenate([np.full(len(t['tick_s']), i)
                                       for i, t in enumerate(ticks)]).astype(np.int64)
        starts, rows, ages, probs = [0], [], [], []
        self.fallbacks = 0
        for i, t in enumerate(ticks):
            bag = self.bank.bags[bag_index[i]]
            stamps, run_s, offset = bag.stamps_s, bag.run_s, self.bank.offsets[bag_index[i]]
            for tick in t['tick_s']:
                lo = np.searchsorted(stamps, max(tick - max_age_s, episodes[i].start_s) - 1e-9)
                hi = np.searchsorted(stamps, tick + 1e-9, side='right')
                local = np.arange(hi - 1, lo - 1, -1)          # youngest first: ages ascending
                age = tick - stamps[local]
                weights, fell_back = pair_weights(age_model, age, run_s[local] <= tick + 1e-9)
                self.fallbacks += int(fell_back)
                rows.append(local + offset)
                ages.append(age)
                probs.append(weights)
                starts.append(starts[-1] + local.size)
        self.cand_start = np.asarray(starts, dtype=np.int64)                         # (N + 1,)
        self.cand_rows = np.concatenate(rows).astype(np.int64)                       # (M,)
        self.cand_ages = np.concatenate(ages)                                        # (M,)
        self.cand_probs = np.concatenate(probs)                                      # (M,)
        # per-sample cumulative probabilities shifted by the sample index: one searchsorted
        # over the whole array finds every sample's draw
        cum = np.concatenate([np.cumsum(p) for p in probs])
        owner = np.repeat(np.arange(len(self)), np.diff(self.cand_start))
        self._cum = cum + owner                                                      # (M,)

    def __len__(self) -> int:
        return int(self.tick_s.shape[0])

    def pair(self, index: np.ndarray, uniforms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Draw each sample's update with uniforms in [0, 1); return (global rows, ages [s])."""
        index = np.asarray(index, dtype=np.int64)
        pos = np.searchsorted(self._cum, index + np.asarray(uniforms), side='right')
        pos = np.clip(pos, self.cand_start[index], self.cand_start[index + 1] - 1)
        return self.cand_rows[pos], self.cand_ages[pos]

    def inputs(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return (windows, states, actions) of the samples in `index`."""
        return self.windows[index], self.states[index], self.actions[index]

    def features_of(self, rows: np.ndarray) -> torch.Tensor:
        return self.bank.features(rows)

    def captures_of(self, index: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        """Return the (B, S) robot states at the capture of the updates drawn (`rows`)."""
        return self.bank.capture_states(rows)

    def normalization(self, action_frame: str = 'delta') -> dict[str, np.ndarray]:
        """Return the model's statistics: sensor, state, action, VL features, motion.

        VL features and the motion since the capture where the bank has them; the motion over
        every candidate pairing, each weighted by how often it is drawn.
        """
        stats = normalization_stats(self.windows, self.states, self.actions,
                                    action_frame=action_frame)
        if self.bank.bags[0].features is not None:
            stats.update(self.bank.feature_stats(self.cand_rows))
        if self.bank.captures is not None:
            owner = np.repeat(np.arange(len(self)), np.diff(self.cand_start))
            motion = self.states.numpy()[owner] - self.bank.captures[self.cand_rows]  # (M, S)
            mean = np.average(motion, axis=0, weights=self.cand_probs)
            std = np.sqrt(np.average((motion - mean) ** 2, axis=0, weights=self.cand_probs))
            stats['motion_mean'] = mean.astype(np.float32)
            stats['motion_std'] = np.maximum(std, MIN_STD).astype(np.float32)
        return stats


def build_split(recordings: dict[str, Recording], bank: FeatureBank, episodes: list[Episode],
                runner_factory, contract: FeatureContract, age_model: AgeModel,
                max_age_s: float, horizon: int, dt_s: float, rate_hz: float,
                targets: str = 'measured') -> tuple[PairedDataset | None, dict]:
    """Collect the ticks of some episodes into a PairedDataset; return it and a report.

    `recordings` and `bank` are keyed and ordered by bag path; `runner_factory()` returns a new
    policy-free runner per episode (its counters are the episode's refusals).
    """
    paths = [b.path for b in bank.bags]
    ticks, bag_index, refused, total = [], [], {}, 0
    for episode in episodes:
        i = paths.index(episode.bag)
        part = collect_ticks(recordings[episode.bag], episode, bank.bags[i], runner_factory(),
                             contract, horizon, dt_s, rate_hz, targets)
        total += part['ticks']
        for k, v in part['refused'].items():
            refused[k] = refused.get(k, 0) + v
        ticks.append(part)
        bag_index.append(i)
    report = {'episodes': len(episodes), 'ticks': total, 'refused': refused, 'samples': 0}
    if not any(t['tick_s'] for t in ticks):
        return None, report
    data = PairedDataset(bank, ticks, bag_index, episodes, age_model, max_age_s)
    report['samples'] = len(data)
    report['fallbacks'] = data.fallbacks   # samples with no update in the age model's support
    return data, report
