"""What a remote policy server is sent, and how its reply becomes our chunk: the two mappings.

Both come from the params file (PolicyClientConfig, section policy_client), so that a DROID-,
LIBERO- or ALOHA-style openpi server or a GR00T embodiment can be fed from our topics:

    observation                                   (ObservationMapping.build)
      image_views[i] -> image_keys[i]   our view's newest frame: decoded, resized to
                                        image_width x image_height ('pad': aspect kept, black
                                        bars, as openpi's resize_with_pad; 'stretch'), uint8
                                        RGB, (H, W, 3) 'hwc' or (3, H, W) 'chw'
      state_keys 'key=part+part'        float32 vector of our state parts in order (STATE_PARTS)
      prompt_key                        the prompt
      prefix (GR00T, send_prefix)       the committed actions, mapped back to the server's
                                        action keys and units (ActionMapping.to_server)
    reply                                         (ActionMapping.to_ours)
      action_keys                       the server's arrays, (H, d_k) each (a leading batch of
                                        1 is dropped), concatenated: (H, D)
      ours[:, i] = server[:, action_indices[i]] * action_scale[i] + action_offset[i]
                                        i = joint_1..joint_6 [rad], gripper [0 open..1 closed]
      action_mode 'delta'               the joints are relative to the joints sent
      action_horizon                    keep the first n actions (0: all)

`ViewSet` and `NewestViews` hold the newest frame of each mapped view: a ViewSet stands where the
action expert has its VL features (core/expert/inputs.py LatestInputs, the staleness rules),
stamped with its oldest view, so `max_feature_age_s` bounds the age of every view sent.
"""
from __future__ import annotations

from dataclasses import dataclass
import threading
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from vla_insertion.core.data import CameraFrame, NUM_JOINTS, RobotState, SensorWindowData
from vla_insertion.core.remote.refusals import (
    BAD_SHAPE, BAD_TYPE, BadObservation, BadReply, MISSING_KEY, NON_FINITE)
from vla_insertion.core.vlm.images import decode_image, resize_image, VlmInputError

if TYPE_CHECKING:
    from vla_insertion.core.config import PolicyClientConfig

# Our state parts a server's state vector is made of, and their widths.
STATE_PARTS = {
    'joints': NUM_JOINTS,          # measured joints [rad], joint_1..joint_6
    'gripper': 1,                  # gripper [0 open..1 closed]
    'tool_position': 3,            # tool position in the base frame [m]
    'tool_orientation': 4,         # tool orientation, unit quaternion x y z w
    'force': 3,                    # newest fx fy fz of the sensor window [N]
    'torque': 3,                   # newest tx ty tz of the sensor window [N m]
}
WRENCH_CHANNELS = {'force': ('fx', 'fy', 'fz'), 'torque': ('tx', 'ty', 'tz')}


def parse_state_keys(entries) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Return ((server key, (part, ...)), ...) of 'key=part+part' entries; ValueError if bad."""
    out = []
    for entry in entries:
        key, sep, parts = str(entry).partition('=')
        names = tuple(p.strip() for p in parts.split('+'))
        if not sep or not key.strip() or not all(names):
            raise ValueError(f"state_keys entry {entry!r} is not 'key=part+part'")
        unknown = [p for p in names if p not in STATE_PARTS]
        if unknown:
            raise ValueError(f'state_keys entry {entry!r}: unknown part(s) {unknown}; known: '
                             f'{list(STATE_PARTS)}')
        out.append((key.strip(), names))
    keys = [k for k, _ in out]
    if len(set(keys)) != len(keys):
        raise ValueError(f'state_keys repeat a key: {keys}')
    return tuple(out)


@dataclass(frozen=True)
class ViewSet:
    """The newest frame of every mapped view: a remote policy's stand-in for VL features."""

    frames: tuple[CameraFrame, ...]  # in image_views order
    stamp_s: float                 # capture time of the oldest of them [s]
    sequence: int                  # increments with every new frame of any view


class NewestViews:
    """Keep the newest frame per view; `put` returns the ViewSet once every view has one."""

    def __init__(self, views: tuple[str, ...]) -> None:
        self.views = tuple(views)
        self._lock = threading.Lock()
        self._frames: dict[str, CameraFrame] = {}
        self._sequence = 0

    def put(self, frame: CameraFrame) -> ViewSet | None:
        with self._lock:
            self._frames[frame.view] = frame
            if len(self._frames) < len(self.views):
                return None
            self._sequence += 1
            frames = tuple(self._frames[v] for v in self.views)
            return ViewSet(frames, min(f.stamp_s for f in frames), self._sequence)

    def clear(self) -> None:
        with self._lock:
            self._frames.clear()


@dataclass(frozen=True)
class ServerObservation:
    """One observation in the server's terms; each protocol lays it out (openpi.py, gr00t.py)."""

    images: dict[str, np.ndarray]  # key -> uint8 (H, W, 3) or (3, H, W)
    state: dict[str, np.ndarray]   # key -> float32 (D,)
    prompt_key: str
    prompt: str
    prefix: dict[str, np.ndarray] | None = None  # action key -> float32 (d, d_k), the committed


def fit_image(image: Image.Image, width: int, height: int, resize: str) -> np.ndarray:
    """Return `image` as uint8 (height, width, 3): stretched, or scaled into it with black bars."""
    if image.size != (width, height):
        if resize == 'stretch':
            image = resize_image(image, width, height)
        else:
            ratio = max(image.width / width, image.height / height)
            inner = image.resize((max(1, int(image.width / ratio)),
                                  max(1, int(image.height / ratio))), Image.BILINEAR)
            image = Image.new('RGB', (width, height))
            image.paste(inner, ((width - inner.width) // 2, (height - inner.height) // 2))
    return np.asarray(image, dtype=np.uint8)


class ObservationMapping:
    """Our newest inputs -> a ServerObservation, as the params file says (module docstring)."""

    def __init__(self, config: PolicyClientConfig) -> None:
        self.config = config
        self.state_keys = parse_state_keys(config.state_keys)

    def build(self, views: ViewSet, robot: RobotState, window: SensorWindowData | None,
              prefix: dict[str, np.ndarray] | None = None) -> ServerObservation:
        """Raise BadObservation when a view does not decode or a state part is missing."""
        cfg = self.config
        images = {}
        for key, frame in zip(cfg.image_keys, views.frames):
            try:
                image = decode_image(frame, (cfg.image_width, cfg.image_height))
            except VlmInputError as exc:
                raise BadObservation(str(exc)) from None
            pixels = fit_image(image, cfg.image_width, cfg.image_height, cfg.image_resize)
            images[key] = np.ascontiguousarray(pixels.transpose(2, 0, 1)) \
                if cfg.image_layout == 'chw' else pixels
        parts = state_parts(robot, window)
        state = {}
        for key, names in self.state_keys:
            missing = [n for n in names if n not in parts]
            if missing:
                raise BadObservation(f'state key {key!r}: no {missing} (the sensor window has '
                                     f'no channels {[WRENCH_CHANNELS[m] for m in missing]})')
            state[key] = np.concatenate([parts[n] for n in names]).astype(np.float32)
        return ServerObservation(images, state, cfg.prompt_key, cfg.prompt, prefix)


def state_parts(robot: RobotState, window: SensorWindowData | None) -> dict[str, np.ndarray]:
    """Return our state parts (STATE_PARTS) that these inputs have, float64 vectors."""
    parts = {'joints': np.asarray(robot.joint_positions_rad, dtype=np.float64),
             'gripper': np.array([robot.gripper], dtype=np.float64),
             'tool_position': np.asarray(robot.tool_position_m, dtype=np.float64),
             'tool_orientation': np.asarray(robot.tool_orientation_xyzw, dtype=np.float64)}
    if window is not None and window.valid_samples > 0:
        newest = window.samples[-1]
        for name, channels in WRENCH_CHANNELS.items():
            if all(c in window.channel_names for c in channels):
                parts[name] = np.array([newest[window.channel_names.index(c)]
                                        for c in channels], dtype=np.float64)
    return parts


class ActionMapping:
    """The server's action arrays <-> our (H, 7) actions, as the params file says."""

    def __init__(self, config: PolicyClientConfig) -> None:
        self.keys = tuple(config.action_keys)
        self.indices = np.asarray(config.action_indices, dtype=np.int64)     # (7,)
        self.scale = np.asarray(config.action_scale, dtype=np.float64)       # (7,)
        self.offset = np.asarray(config.action_offset, dtype=np.float64)     # (7,)
        self.delta = config.action_mode == 'delta'
        self.horizon = config.action_horizon
        self.widths: tuple[int, ...] | None = None   # per key, from the last good reply

    def to_ours(self, reply, sent_joints: np.ndarray) -> np.ndarray:
        """Return our float32 (H, 7) actions from a reply map; BadReply if it is not one."""
        if not isinstance(reply, dict):
            raise BadReply(BAD_TYPE, f'the actions are in a {type(reply).__name__}, not a map')
        arrays = []
        for key in self.keys:
            if key not in reply:
                raise BadReply(MISSING_KEY, f'no {key!r} in the reply (keys: '
                                            f'{sorted(map(str, reply))[:8]})')
            arrays.append(_actions_array(key, reply[key]))
        lengths = {a.shape[0] for a in arrays}
        if len(lengths) != 1:
            raise BadReply(BAD_SHAPE, f'action keys of different horizons {sorted(lengths)}')
        server = np.concatenate(arrays, axis=1)                                # (H, D)
        if server.shape[1] <= int(self.indices.max()):
            raise BadReply(BAD_SHAPE, f'{server.shape[1]} action dims, action_indices needs '
                                      f'{int(self.indices.max()) + 1}')
        if self.horizon and server.shape[0] < self.horizon:
            raise BadReply(BAD_SHAPE, f'{server.shape[0]} actions < action_horizon '
                                      f'{self.horizon}')
        server = server[:self.horizon] if self.horizon else server
        with np.errstate(over='ignore', invalid='ignore'):   # absurd values: non_finite
            ours = server[:, self.indices] * self.scale + self.offset         # (H, 7)
            if self.delta:
                ours[:, :NUM_JOINTS] += np.asarray(sent_joints, dtype=np.float64)
        if not np.isfinite(ours).all():
            raise BadReply(NON_FINITE, 'NaN or inf among the mapped actions')
        self.widths = tuple(a.shape[1] for a in arrays)
        return ours.astype(np.float32)

    def to_server(self, prefix: np.ndarray, sent_joints: np.ndarray
                  ) -> dict[str, np.ndarray] | None:
        """Return our committed (d, 7) actions in the server's keys and units.

        None before the first reply (the widths of its keys are not known yet). Dims we do not
        map are sent as 0.
        """
        if self.widths is None or prefix is None or len(prefix) == 0:
            return None
        ours = np.asarray(prefix, dtype=np.float64).copy()                    # (d, 7)
        if self.delta:
            ours[:, :NUM_JOINTS] -= np.asarray(sent_joints, dtype=np.float64)
        server = np.zeros((len(ours), sum(self.widths)))                      # (d, D)
        server[:, self.indices] = (ours - self.offset) / self.scale
        split = np.cumsum(self.widths)[:-1]
        return {k: part.astype(np.float32)
                for k, part in zip(self.keys, np.split(server, split, axis=1))}


def _actions_array(key: str, value) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype.kind not in 'iuf':
        raise BadReply(BAD_TYPE, f'{key!r} is {type(value).__name__}, not a numeric array')
    array = value[0] if value.ndim == 3 and value.shape[0] == 1 else value   # batch of 1
    if array.ndim != 2 or array.shape[0] < 1:
        raise BadReply(BAD_SHAPE, f'{key!r} has shape {value.shape}, not (horizon, dims)')
    return array.astype(np.float64)
