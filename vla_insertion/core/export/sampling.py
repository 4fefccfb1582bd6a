"""A bag sampled on a frame grid: what every exported stream held at each frame's stamp.

Frame k of an episode stands for t_k = t_0 + k / fps on the recorded header-stamp (capture)
clock, in integer nanoseconds. Its values are what a subscriber held then: the newest message
of each stream stamped at or before t_k (a message stamped up to STAMP_TOLERANCE_NS later counts
as at t_k: the rounding of stamps):

    observation.state    robot/joint_states: the arm joints [rad] and the `gripper` entry
                         [0 open .. 1 closed], read as the nodes read them
    observation.wrench   sensor/window: its newest `wrench_samples` rows, oldest first, each
                         row the window's channels (fx fy fz [N], tx ty tz [N m], distance [m]);
                         or, `summary`, per channel the mean, min and max of its received rows
    action               vla/command: the newest command the executor sent to the robot
                         (`command`: 6 joint targets [rad] + gripper); or vla/action_chunk: the
                         first action of the newest chunk stamped at or before t_k (`chunk`)
    observation.images   cameras/<view>/image/compressed: the newest frame of each view

t_0 is the first capture stamp of the first exported view at which every stream has a value,
not before the episode's start; the last frame is the last grid time not after the episode's end
nor after any stream's last message (no stream goes stale at the end). With the camera at fps
each frame is one capture; a slower camera repeats frames, a faster one skips some, and both are
counted per view. Messages that cannot stand for a stream are left out and counted by cause:
a window with fewer received rows than asked (`window_short`), a command the executor did not
send (`command_not_sent`: disarmed preview) or without a target (`command_invalid`), a message
whose arrays do not match its sizes (`malformed`).

Bags are read twice: every stream but the images first (with the stamps of every image), then,
per episode, only the images of its frames. ROS-free (rosbags).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vla_insertion.core import bag, topics
from vla_insertion.core.bag import messages
from vla_insertion.core.data import DEFAULT_SENSOR_CHANNELS, DEFAULT_VIEWS, SensorWindowData
from vla_insertion.core.export.options import ExportError, ExportOptions

STAMP_TOLERANCE_NS = 1_000          # a message stamped this much after t still counts at t [ns]


def newest_index(stamps_ns: np.ndarray, times_ns: np.ndarray) -> np.ndarray:
    """Return the index of the newest stamp at or before each time (-1: none yet).

    `stamps_ns` sorted; of equal stamps the last counts (the newer message).
    """
    return np.searchsorted(stamps_ns, np.asarray(times_ns) + STAMP_TOLERANCE_NS,
                           side='right') - 1


@dataclass
class Stream:
    """One exported vector stream of a bag: a value per message, by header stamp."""

    stamps_ns: np.ndarray          # (n,) int64, sorted
    values: np.ndarray             # (n, dim) float32
    names: tuple[str, ...]         # (dim,) what each column is


@dataclass
class Camera:
    """The frames of one view in a bag: their capture stamps and log times, by stamp."""

    stamps_ns: np.ndarray          # (n,) int64, sorted
    log_ns: np.ndarray             # (n,) int64, the bag's log time of each frame


@dataclass
class BagStreams:
    """What one bag holds of the exported streams."""

    path: Path
    state: Stream
    wrench: Stream
    action: Stream
    cameras: dict[str, Camera]     # view -> its frames, in export order
    left_out: Counter = field(default_factory=Counter)   # messages left out, by cause

    @property
    def span_s(self) -> tuple[float, float]:
        """Return the first and last robot state stamp [s] (an episode log's reference)."""
        return self.state.stamps_ns[0] * 1e-9, self.state.stamps_ns[-1] * 1e-9


def wrench_row(window: SensorWindowData, options: ExportOptions
               ) -> tuple[np.ndarray, tuple[str, ...]] | None:
    """Return a window's observation.wrench value and its names (None: too few rows)."""
    channels = window.channel_names or DEFAULT_SENSOR_CHANNELS[:window.samples.shape[1]]
    if len(channels) != window.samples.shape[1]:
        raise messages.ConversionError(f'SensorWindow: {len(channels)} channel names for '
                                       f'{window.samples.shape[1]} channels')
    if options.wrench == 'newest':
        n = options.wrench_samples
        if window.valid_samples < n or window.samples.shape[0] < n:
            return None
        names = tuple(f'{c}@{k - n + 1}' for k in range(n) for c in channels)
        return window.samples[-n:].reshape(-1), names             # (n * channels,) oldest first
    if window.valid_samples < 1:
        return None
    rows = window.samples[-window.valid_samples:]                 # (valid, channels)
    names = tuple(f'{c}.{s}' for s in ('mean', 'min', 'max') for c in channels)
    return np.concatenate([rows.mean(axis=0), rows.min(axis=0), rows.max(axis=0)]), names


def _command_row(msg) -> tuple[np.ndarray, tuple[str, ...]] | str:
    """Return an ExecutorCommand's 6 targets + gripper and names, or why it is left out."""
    if not msg.sent:
        return 'command_not_sent'
    positions = np.asarray(msg.positions, dtype=np.float64)
    if positions.size != len(msg.joint_names):
        raise messages.ConversionError(f'ExecutorCommand: {positions.size} positions for '
                                       f'{len(msg.joint_names)} joint names')
    row = np.r_[positions, float(msg.gripper)]
    if not np.all(np.isfinite(row)):
        return 'command_invalid'
    return row, tuple(msg.joint_names) + (messages.GRIPPER_JOINT,)


class _Rows:
    """Rows of one stream as read, checked to keep one set of names."""

    def __init__(self, path: Path, what: str) -> None:
        self.path, self.what = path, what
        self.stamps: list[int] = []
        self.values: list[np.ndarray] = []
        self.names: tuple[str, ...] | None = None

    def add(self, stamp_ns: int, value: np.ndarray, names: tuple[str, ...]) -> None:
        if self.names is None:
            self.names = names
        elif names != self.names:
            raise ExportError(f'{self.path}: {self.what} changes from {list(self.names)} to '
                              f'{list(names)} at stamp {stamp_ns} ns')
        self.stamps.append(stamp_ns)
        self.values.append(np.asarray(value, dtype=np.float32))

    def stream(self, topic: str, hint: str = '') -> Stream:
        if not self.stamps:
            raise ExportError(f'{self.path}: no usable {topic} message for {self.what}{hint}')
        stamps = np.array(self.stamps, dtype=np.int64)
        order = np.argsort(stamps, kind='stable')
        return Stream(stamps[order], np.stack(self.values)[order], self.names)


def ordered_views(views) -> tuple[str, ...]:
    """Return view names in the cell's prompt order, other names after them, sorted."""
    rank = {v: i for i, v in enumerate(DEFAULT_VIEWS)}
    return tuple(sorted(views, key=lambda v: (rank.get(v, len(rank)), v)))


def load_streams(path: str | Path, options: ExportOptions,
                 views: tuple[str, ...] | None = None) -> BagStreams:
    """Read a bag's state, wrench and action streams and the stamps of its images.

    `views`: the views to export (None: every recorded view); a view the bag lacks is an error.
    """
    path = Path(path)
    action_topic = topics.COMMAND if options.action == 'command' else topics.ACTION_CHUNK
    state = _Rows(path, 'observation.state')
    wrench = _Rows(path, 'observation.wrench')
    action = _Rows(path, 'action')
    left_out: Counter = Counter()
    wanted = [topics.JOINT_STATES.name, topics.SENSOR_WINDOW.name, action_topic.name]
    for topic, _log_ns, msg in bag.read_messages(path, wanted):
        entry = topics.find(topic)
        stamp = bag.header_stamp_ns(msg)
        try:
            if entry is topics.JOINT_STATES:
                robot = messages.robot_state_from_msgs(msg)
                joints = robot.joint_names
                if len(joints) != robot.joint_positions_rad.size:     # an unnamed JointState
                    joints = tuple(f'joint_{i + 1}' for i in range(robot.joint_positions_rad.size))
                state.add(stamp, np.r_[robot.joint_positions_rad, robot.gripper],
                          joints + (messages.GRIPPER_JOINT,))
            elif entry is topics.SENSOR_WINDOW:
                row = wrench_row(messages.sensor_window_from_msg(msg), options)
                if row is None:
                    left_out['window_short'] += 1
                else:
                    wrench.add(stamp, *row)
            elif entry is topics.COMMAND:
                row = _command_row(msg)
                if isinstance(row, str):
                    left_out[row] += 1
                else:
                    action.add(stamp, *row)
            else:
                chunk = messages.action_chunk_from_msg(msg)
                action.add(stamp, chunk.actions[0],
                           tuple(f'action_{i}' for i in range(chunk.actions.shape[1])))
        except messages.ConversionError:
            left_out['malformed'] += 1
    state_stream = state.stream(topics.JOINT_STATES.name)
    hint = ('; the executor never sent a command (disarmed?): --action chunk exports the '
            "policy's chunks" if options.action == 'command' else '')
    action_stream = action.stream(action_topic.name, hint)
    if options.action == 'chunk' and len(action_stream.names) == len(state_stream.names):
        action_stream.names = state_stream.names      # chunks act on the state's joints
    return BagStreams(path, state_stream,
                      wrench.stream(topics.SENSOR_WINDOW.name, ' (fewer received rows than '
                                    f'--wrench-samples {options.wrench_samples}?)'),
                      action_stream, _cameras(path, views), left_out)


def _cameras(path: Path, views: tuple[str, ...] | None) -> dict[str, Camera]:
    """Return the capture stamps and log times of every frame of the views."""
    stamps: dict[str, list[tuple[int, int]]] = {}
    for topic, _type, log_ns, data in bag.read_raw(path, [topics.CAMERAS.name]):
        stamps.setdefault(topics.view_of(topic), []).append(
            (bag.cdr_header_stamp_ns(data), log_ns))
    if views is None:
        views = ordered_views(stamps)
    missing = [v for v in views if v not in stamps]
    if missing:
        raise ExportError(f'{path}: no frames of view(s) {missing}; recorded views: '
                          f'{list(ordered_views(stamps))}')
    cameras = {}
    for view in views:
        pairs = np.array(sorted(stamps[view]), dtype=np.int64)     # by stamp, then log time
        cameras[view] = Camera(pairs[:, 0], pairs[:, 1])
    return cameras


@dataclass
class EpisodeSamples:
    """The frames of one episode: their stamps and every stream's value at each."""

    stamps_ns: np.ndarray          # (n,) int64, t_0 + k / fps
    state: np.ndarray              # (n, state dim) float32
    wrench: np.ndarray             # (n, wrench dim) float32
    action: np.ndarray             # (n, action dim) float32
    frames: dict[str, np.ndarray]  # view -> (n,) index of its frame in BagStreams.cameras
    max_age_ms: dict[str, float]   # stream -> the oldest value a frame got [ms]

    def __len__(self) -> int:
        return int(self.stamps_ns.size)

    def repeated(self, view: str) -> int:
        """Return how many frames show the same capture as the frame before."""
        return int(np.count_nonzero(np.diff(self.frames[view]) == 0))

    def skipped(self, view: str) -> int:
        """Return how many captures between the first and last frame no frame shows."""
        steps = np.diff(self.frames[view])
        return int(np.sum(steps[steps > 1] - 1))


def sample_episode(streams: BagStreams, fps: int, start_ns: int | None = None,
                   end_ns: int | None = None) -> EpisodeSamples | None:
    """Sample the episode [start, end] of a bag on its frame grid (None: no frame fits)."""
    vectors = {'observation.state': streams.state, 'observation.wrench': streams.wrench,
               'action': streams.action}
    firsts = [s.stamps_ns[0] for s in vectors.values()] + \
        [c.stamps_ns[0] for c in streams.cameras.values()]
    lasts = [s.stamps_ns[-1] for s in vectors.values()] + \
        [c.stamps_ns[-1] for c in streams.cameras.values()]
    begin = max(max(firsts), start_ns if start_ns is not None else -np.inf)
    end = min(min(lasts), end_ns if end_ns is not None else np.inf)
    if streams.cameras:
        first_view = next(iter(streams.cameras.values())).stamps_ns
        i = int(np.searchsorted(first_view, begin - STAMP_TOLERANCE_NS, side='left'))
        if i >= first_view.size:
            return None
        t0 = int(first_view[i])
    else:
        t0 = int(np.ceil(begin))
    if t0 > end + STAMP_TOLERANCE_NS:
        return None
    count = int((end + STAMP_TOLERANCE_NS - t0) * fps // 1_000_000_000) + 1
    grid = t0 + (np.arange(count, dtype=np.int64) * 1_000_000_000 + fps // 2) // fps
    picked = {key: newest_index(s.stamps_ns, grid) for key, s in vectors.items()}
    frames = {view: newest_index(c.stamps_ns, grid) for view, c in streams.cameras.items()}
    ages = {key: float((grid - vectors[key].stamps_ns[i]).max()) * 1e-6
            for key, i in picked.items()}
    ages.update({f'observation.images.{view}': float(
        (grid - streams.cameras[view].stamps_ns[i]).max()) * 1e-6 for view, i in frames.items()})
    return EpisodeSamples(grid, *(vectors[k].values[picked[k]] for k in vectors), frames, ages)


def read_frames(streams: BagStreams, samples: EpisodeSamples) -> dict[str, list[bytes]]:
    """Return each view's encoded image (JPEG) of every frame of an episode, in frame order.

    Reads only the stretch of the bag, by log time, that holds the episode's frames; a frame
    shown by several frames is one bytes object.
    """
    if not streams.cameras:
        return {}
    needed = {view: set(streams.cameras[view].stamps_ns[idx].tolist())
              for view, idx in samples.frames.items()}
    logs = np.concatenate([streams.cameras[view].log_ns[idx]
                           for view, idx in samples.frames.items()])
    found: dict[str, dict[int, bytes]] = {view: {} for view in needed}
    for topic, _log_ns, msg in bag.read_messages(
            streams.path, [topics.camera_topic(v) for v in needed],
            start_ns=int(logs.min()), stop_ns=int(logs.max()) + 1):
        view = topics.view_of(topic)
        stamp = bag.header_stamp_ns(msg)
        if view in needed and stamp in needed[view]:
            found[view][stamp] = bytes(msg.data)
    out = {}
    for view, idx in samples.frames.items():
        stamps = streams.cameras[view].stamps_ns[idx].tolist()
        missing = sorted(set(stamps) - set(found[view]))
        if missing:
            raise ExportError(f'{streams.path}: frame(s) of {view} stamped {missing[:3]} ns '
                              'indexed but not read back')
        out[view] = [found[view][s] for s in stamps]
    return out
