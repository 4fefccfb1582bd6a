"""The sim cell's scripted demonstrator as a policy server's policy (tools/serve_policy.py).

Its interface, the same keys over both protocols (the policy_client defaults map to it):

    images   wrist     uint8 (H, W, 3), any size: checked, not looked at
    state    joints    float32 (6,) measured joints [rad]
             gripper   float32 (1,) [0 open..1 closed]
             tool      float32 (7,) tool position [m] and orientation x y z w
    prompt   task      the instruction (not looked at)
    reply    joints    float32 (8, 6) joint targets [rad], 0.1 s apart from the observation on
             gripper   float32 (8, 1) [0..1]

openpi lays these keys out flat, GR00T nested by modality with batch and time dims first
(openpi.py, gr00t.py). Over GR00T it honours the RTC inputs: the `rtc_frozen_steps` leading
actions of its chunk are the previous actions sent (their last `rtc_overlap_steps` of
`action_horizon`), as GR00T N1.7's action head freezes them. Like the reference_policy node it
acts only while the cell reports a running episode (the hole comes from the episode stream:
privileged, sim only); otherwise it fails the request, which the client counts as a server
error.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vla_insertion.core.data import NUM_JOINTS, RobotState
from vla_insertion.core.sim.reference import EpisodeReference

IMAGE_KEY, PROMPT_KEY = 'wrist', 'task'
STATE_WIDTHS = {'joints': NUM_JOINTS, 'gripper': 1, 'tool': 7}
ACTION_KEYS = ('joints', 'gripper')
METADATA = {'policy': 'scripted reference (sim only)', 'image_keys': [IMAGE_KEY],
            'state_keys': STATE_WIDTHS, 'prompt_key': PROMPT_KEY, 'action_keys': ACTION_KEYS,
            'action_horizon': 8, 'dt_s': 0.1}


class NotActing(RuntimeError):
    """No running episode, or an observation that is not this interface's."""


class ServedReference:
    """`openpi(obs)` and `gr00t(obs, options)`: the demonstrator's chunk as a reply map.

    `episodes()` returns the newest core.wire.EpisodeMessage (an EpisodeListener's `latest`).
    """

    def __init__(self, episodes: Callable[[], object]) -> None:
        self._episodes = episodes
        self._reference = EpisodeReference()

    def openpi(self, obs: dict) -> dict:
        if not isinstance(obs, dict):
            raise NotActing(f'an observation is a map, got {type(obs).__name__}')
        _image(obs.get(IMAGE_KEY))
        actions = self._act({k: obs.get(k) for k in STATE_WIDTHS})
        return {'joints': actions[:, :NUM_JOINTS], 'gripper': actions[:, NUM_JOINTS:]}

    def gr00t(self, obs: dict, options: dict | None) -> dict:
        if not isinstance(obs, dict) or not all(isinstance(obs.get(m), dict)
                                                for m in ('video', 'state')):
            raise NotActing('an observation is {video: {...}, state: {...}, language: {...}}')
        _image(_unbatched(obs['video'].get(IMAGE_KEY), IMAGE_KEY, 5))
        actions = self._act({k: _unbatched(obs['state'].get(k), k, 3) for k in STATE_WIDTHS})
        previous = obs.get('action')
        if isinstance(previous, dict) and options:
            actions = _frozen(actions, previous, options)
        return {'joints': actions[None, :, :NUM_JOINTS], 'gripper': actions[None, :, NUM_JOINTS:]}

    def _act(self, state: dict) -> np.ndarray:
        for key, width in STATE_WIDTHS.items():
            value = state[key]
            if not isinstance(value, np.ndarray) or value.shape != (width,):
                raise NotActing(f'state {key!r} must be a ({width},) array, got '
                                f'{getattr(value, "shape", type(value).__name__)}')
        tool = state['tool'].astype(np.float64)
        robot = RobotState(0.0, state['joints'].astype(np.float64), tool[:3], tool[3:],
                           gripper=float(state['gripper'][0]))
        chunk = self._reference.act(self._episodes(), robot)
        if chunk is None:
            raise NotActing(f'not acting: {self._reference.waiting}')
        return chunk.actions.astype(np.float32)                   # (8, 7)


def _image(value) -> None:
    if not isinstance(value, np.ndarray) or value.dtype != np.uint8 or value.ndim != 3 \
            or value.shape[-1] != 3:
        raise NotActing(f'image {IMAGE_KEY!r} must be uint8 (H, W, 3), got '
                        f'{getattr(value, "shape", type(value).__name__)}')


def _unbatched(value, key: str, ndim: int) -> np.ndarray:
    """GR00T's (1, 1, ...) batch and time dims off."""
    if not isinstance(value, np.ndarray) or value.ndim != ndim or value.shape[:2] != (1, 1):
        raise NotActing(f'{key!r} must have batch and time dims (1, 1, ...), got '
                        f'{getattr(value, "shape", type(value).__name__)}')
    return value[0, 0]


def _frozen(actions: np.ndarray, previous: dict, options: dict) -> np.ndarray:
    """Return `actions` (H, 7) with the frozen leading steps taken from the previous actions."""
    try:
        prev = np.concatenate([np.asarray(previous[k])[0] for k in ACTION_KEYS], axis=1)
        horizon, overlap = int(options['action_horizon']), int(options['rtc_overlap_steps'])
        frozen = int(options['rtc_frozen_steps'])
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise NotActing(f'previous actions or RTC options unusable: {exc}') from None
    if prev.shape[1] != actions.shape[1] or not 0 <= frozen <= overlap <= horizon <= len(prev):
        raise NotActing(f'previous actions {prev.shape} do not fit the options {options}')
    out = actions.copy()
    steps = min(frozen, len(out))
    out[:steps] = prev[horizon - overlap:horizon - overlap + steps]
    return out
