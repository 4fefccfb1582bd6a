"""A recorded session as the pipeline saw it: timelines of every input, looked up by time.

    rec = load_recording('artifacts/bags/session_01', views=('zed_1', ...))
    inputs = RecordedInputs(rec, views)
    for t in tick_times(inputs, rate_hz=10.0):
        features = inputs.features(t)
        runner.tick(features, inputs.window(t), inputs.robot(t), t,
                    capture_robot=inputs.capture(features))

Everything is on the recorded header-stamp clock [s]. `RecordedInputs` answers "what was the
newest input of each stream at time t" the way the action_expert node holds its newest inputs
(sensor windows, robot states and frames by their stamps, which they reach within milliseconds;
VL features by their arrival, an inference after their capture stamp):
the robot state is the newest joint state and the newest pose combined by the same reader
(`core.messages.robot_state_from_msgs`), so offline tools see exactly what the live node saw.
Topics are found through the topic table (core/topics.py), whatever their namespace. ROS-free:
bags are read with rosbags (core/bag/reader.py).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vla_insertion.core import bag, topics

from vla_insertion.core.bag import messages

from vla_insertion.core.data import (
    ActionChunkData, CameraFrame, RobotState, SensorWindowData, VLFeatureData)
from vla_insertion.core.evaluation import metrics
from vla_insertion.core.interfaces import VlmObservation


class Timeline:
    """Items sorted by their stamp [s], with `newest(t)`: the last item stamped <= t."""

    def __init__(self, items: list[tuple[float, object]]) -> None:
        self.items = sorted(items, key=lambda it: it[0])
        self.stamps = [s for s, _ in self.items]

    def newest(self, t_s: float):
        i = bisect.bisect_right(self.stamps, t_s + 1e-9) - 1
        return self.items[i][1] if i >= 0 else None

    def first_s(self) -> float:
        return self.stamps[0] if self.stamps else np.inf

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class Recording:
    """What evaluation and training need from a bag, on the recorded header-stamp clock."""

    path: Path
    trajectory: metrics.Trajectory                     # arm joints [rad] over time
    joints: Timeline                                   # JointState messages by stamp
    poses: Timeline                                    # PoseStamped messages by stamp
    windows: Timeline                                  # SensorWindowData by stamp
    features: Timeline = field(default_factory=lambda: Timeline([]))  # VLFeatureData by arrival
    frames: dict[str, Timeline] = field(default_factory=dict)   # view -> CameraFrame
    chunks: list[ActionChunkData] = field(default_factory=list)
    chunk_log_s: list[float] = field(default_factory=list)      # bag receive time per chunk
    log_offset_s: float = 0.0                          # median(log time - header stamp) [s]

    @property
    def start_s(self) -> float:
        return float(self.trajectory.times_s[0])

    @property
    def end_s(self) -> float:
        return float(self.trajectory.times_s[-1])

    def robot(self, t_s: float) -> RobotState | None:
        """Return the robot state the node would hold at t: newest joints and pose, combined."""
        joints = self.joints.newest(t_s)
        pose = self.poses.newest(t_s)
        if joints is None or pose is None:
            return None
        return messages.robot_state_from_msgs(joints, pose)


def load_recording(path: str | Path, views: tuple[str, ...] | None = None, joints: int = 6,
                   progress: bool = False) -> Recording:
    """Read the robot, sensor, feature, camera and chunk topics of a bag.

    `views`: the camera views to load (None: every recorded view, (): none, which saves memory
    when only the expert's inputs are needed).
    """
    joint_rows, joint_msgs, poses, windows, features = [], [], [], [], []
    chunks, chunk_log, offsets = [], [], []
    frames: dict[str, list] = {}
    info = bag.bag_info(path)
    stream = bag.read_messages(path)
    if progress:
        stream = tqdm(stream, total=info.message_count, desc='reading bag', unit='msg')
    for topic, log_ns, msg in stream:
        entry = topics.find(topic)
        if entry is topics.JOINT_STATES:
            stamp, positions = messages.joint_state_from_msg(msg)
            if positions.size < joints:
                continue
            names = tuple(n for n in msg.name if n != messages.GRIPPER_JOINT)[:joints]
            joint_rows.append((stamp, positions[:joints], names))
            joint_msgs.append((stamp, msg))
            offsets.append(log_ns * 1e-9 - stamp)
        elif entry is topics.POSE:
            poses.append((messages.time_from_msg(msg.header.stamp), msg))
        elif entry is topics.SENSOR_WINDOW:
            w = messages.sensor_window_from_msg(msg)
            windows.append((w.stamp_s, w))
        elif entry is topics.FEATURES:
            features.append((log_ns * 1e-9, messages.vl_features_from_msg(msg)))
        elif entry is topics.CAMERAS:
            view = topics.view_of(topic)
            if views is None or view in views:
                frame = messages.camera_frame_from_msg(msg, view)
                frames.setdefault(view, []).append((frame.stamp_s, frame))
        elif entry is topics.ACTION_CHUNK:
            chunks.append(messages.action_chunk_from_msg(msg))
            chunk_log.append(log_ns * 1e-9)
    if len(joint_rows) < 2:
        raise bag.BagError(f'{path}: fewer than 2 robot/joint_states messages')
    log_offset = float(np.median(offsets))
    # features become usable when they arrive, a VLM inference after their capture stamp:
    # key them by arrival (log time) on the header-stamp clock
    features = [(log_s - log_offset, f) for log_s, f in features]
    joint_rows.sort(key=lambda r: r[0])
    times = np.array([r[0] for r in joint_rows])
    keep = np.concatenate([[True], np.diff(times) > 0])
    traj = metrics.Trajectory(times[keep], np.stack([r[1] for r in joint_rows])[keep],
                              joint_rows[0][2] or ())
    return Recording(Path(path), traj, Timeline(joint_msgs), Timeline(poses), Timeline(windows),
                     Timeline(features), {v: Timeline(items) for v, items in frames.items()},
                     chunks, chunk_log, log_offset)


class RecordedInputs:
    """The newest recorded input of every stream at a given recorded time."""

    def __init__(self, rec: Recording, views: tuple[str, ...] = ()) -> None:
        missing = [v for v in views if v not in rec.frames]
        if missing:
            raise bag.BagError(f'{rec.path}: no frames of view(s) {missing}; recorded views: '
                               f'{sorted(rec.frames)}')
        self.rec, self.views = rec, tuple(views)

    def first_complete_s(self, with_features: bool = False) -> float:
        """Return the first time at which every stream used has an input [s]."""
        firsts = [self.rec.joints.first_s(), self.rec.poses.first_s(),
                  self.rec.windows.first_s()] + [self.rec.frames[v].first_s() for v in self.views]
        if with_features:
            firsts.append(self.rec.features.first_s())
        first = float(max(firsts))
        if not np.isfinite(first):
            raise bag.BagError(f'{self.rec.path}: a stream the evaluation needs was not '
                               'recorded (robot/pose, sensor/window, cameras or vla/features)')
        return first

    def vlm(self, t_s: float, sequence: int = 0) -> VlmObservation:
        frames: dict[str, CameraFrame] = {v: self.rec.frames[v].newest(t_s) for v in self.views}
        return VlmObservation(frames=frames, sequence=sequence)

    def window(self, t_s: float) -> SensorWindowData | None:
        return self.rec.windows.newest(t_s)

    def robot(self, t_s: float) -> RobotState | None:
        return self.rec.robot(t_s)

    def capture(self, features: VLFeatureData | None) -> RobotState | None:
        """Return the robot state when the features' views were taken (None: not recorded)."""
        return None if features is None else self.rec.robot(features.stamp_s)

    def features(self, t_s: float) -> VLFeatureData | None:
        """Return the newest recorded VL features at t (published ones, from vla/features)."""
        return self.rec.features.newest(t_s)


def tick_times(inputs: RecordedInputs, rate_hz: float = 10.0,
               with_features: bool = False, not_before_s: float = -np.inf) -> np.ndarray:
    """Return tick times [s] at `rate_hz` from the first complete input to the recording's end.

    `not_before_s`: start no earlier (training starts at the first VL update's stamp).
    """
    period = 1.0 / rate_hz
    start = max(inputs.first_complete_s(with_features), not_before_s)
    return start + np.arange(int(np.floor((inputs.rec.end_s - start) / period)) + 1) * period
