"""LatestInputs: what the expert ticks on, the newest of each stream, and the robot at capture.

    put_features / put_window / put_prefix     the newest of each is held
    put_joints / put_pose (or put_robot)       the newest, and those of the last HISTORY_S
        -> newest(now_s) -> TickInputs
             features, window
             robot     the newest joint state with the newest pose (RobotState.with_pose)
             capture   the robot when the features' views were taken (core/expert/capture.py)
             prefix    the committed prefix resampled to actions applying from now_s
             malformed what did not convert, by stream
        -> tick_newest(runner, inputs, now_s): the runner's tick on them

The action_expert and policy_client nodes put what their subscriptions receive, converted at the
edge (`put_converted`: a message that does not convert is put as `Malformed`, so every tick says
why it refuses); the in-process
closed loop (core/sim/loop.py) puts what the simulated cell gives it. Both tick through
`tick_newest`, so the capture rule and the prefix alignment (core.executor.merge.align_prefix)
have one caller. Thread-safe: puts from any thread (subscriptions), one reader (the tick).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
import math
import threading
from typing import TYPE_CHECKING

import numpy as np

from vla_insertion.core.bag.messages import time_from_msg
from vla_insertion.core.data import (
    ActionChunkData, RobotState, SensorWindowData, ToolPose, VLFeatureData)
from vla_insertion.core.executor.merge import align_prefix
from vla_insertion.core.expert.capture import HISTORY_S, StampedHistory

if TYPE_CHECKING:   # the runner imports torch; this module does not need it
    from vla_insertion.core.expert.runner import ExpertRunner, TickResult

# The streams a malformed message is counted under, as the refusal `bad_<stream>`, in the order
# a tick reports them. A malformed prefix is counted but the tick goes on without a prefix.
FEATURES, WINDOW, PREFIX, ROBOT = 'features', 'window', 'prefix', 'robot'
JOINTS, POSE = 'joints', 'pose'    # the robot state's two halves, held apart


@dataclass(frozen=True)
class Malformed:
    """A message that did not convert, held in its stream's place so that the tick says why."""

    detail: str                    # the conversion error
    stamp_s: float = math.nan      # its header stamp [s]; a joint state's keeps its history order


@dataclass(frozen=True)
class TickInputs:
    """The inputs of one tick at now_s (None: none held, or the held one is malformed)."""

    features: VLFeatureData | None = None
    window: SensorWindowData | None = None
    robot: RobotState | None = None    # the newest joint state with the newest pose
    capture: RobotState | None = None  # the robot at the features' stamp (their capture)
    prefix: np.ndarray | None = None   # (d', A) committed actions applying from now_s
    malformed: tuple[tuple[str, str], ...] = ()   # (stream, detail), in FEATURES..ROBOT order
    no_pose: bool = False              # joint states held but no tool pose: robot is None


class LatestInputs:
    """The newest features, sensor window, committed prefix and robot state; see the module."""

    def __init__(self, history_s: float = HISTORY_S) -> None:
        self._lock = threading.Lock()
        self._features_arrived = threading.Condition(self._lock)
        self._newest: dict[str, object] = dict.fromkeys((FEATURES, WINDOW, PREFIX, JOINTS, POSE))
        # every joint state and pose of the last seconds, by stamp: the robot at the capture
        self._joints: StampedHistory[RobotState | Malformed] = StampedHistory(
            lambda item: item.stamp_s, history_s)
        self._poses: StampedHistory[ToolPose] = StampedHistory(
            lambda pose: pose.stamp_s, history_s)
        self.feature_arrivals = 0      # features put so far, malformed ones included

    # --- puts: any thread -------------------------------------------------------------------

    def put_features(self, features: VLFeatureData | Malformed | None) -> None:
        with self._features_arrived:
            self._newest[FEATURES] = features
            self.feature_arrivals += 1
            self._features_arrived.notify_all()

    def put_window(self, window: SensorWindowData | Malformed | None) -> None:
        with self._lock:
            self._newest[WINDOW] = window

    def put_prefix(self, committed: ActionChunkData | Malformed | None) -> None:
        """Hold the actions the chunk executor has committed (merge = prefix), as published."""
        with self._lock:
            self._newest[PREFIX] = committed

    def put_joints(self, joints: RobotState | Malformed) -> None:
        """Hold a joint state: a RobotState whose tool pose is left out (put_pose brings it)."""
        with self._lock:
            self._newest[JOINTS] = joints
        self._joints.add(joints)

    def put_pose(self, pose: ToolPose) -> None:
        with self._lock:
            self._newest[POSE] = pose
        self._poses.add(pose)

    def put_robot(self, robot: RobotState) -> None:
        """Hold a whole robot state (joints and pose known together, as in the simulated cell)."""
        self.put_joints(robot)
        self.put_pose(ToolPose(robot.stamp_s, robot.tool_position_m, robot.tool_orientation_xyzw))

    def clear(self) -> None:
        """Forget every input (a new run); the feature arrival count goes on."""
        with self._lock:
            self._newest = dict.fromkeys(self._newest)
        self._joints.clear()
        self._poses.clear()

    # --- the tick's view ----------------------------------------------------------------------

    def held(self, stream: str) -> object:
        """Return the newest item put of `stream` (FEATURES ... POSE) as put, or None."""
        with self._lock:
            return self._newest[stream]

    def newest(self, now_s: float) -> TickInputs:
        """Return the inputs of a tick at `now_s`; see TickInputs."""
        with self._lock:
            held = dict(self._newest)
        joints, pose = held[JOINTS], held[POSE]
        malformed = []
        for stream in (FEATURES, WINDOW, PREFIX):
            if isinstance(held[stream], Malformed):
                malformed.append((stream, held[stream].detail))
                held[stream] = None
        features, committed = held[FEATURES], held[PREFIX]
        robot, capture = _combined(joints, pose), None
        if features is not None and not isinstance(robot, Malformed):
            capture = _combined(self._joints.at(features.stamp_s),
                                self._poses.at(features.stamp_s))
        bad_robot = next((r for r in (robot, capture) if isinstance(r, Malformed)), None)
        if bad_robot is not None:
            malformed.append((ROBOT, bad_robot.detail))
            robot = capture = None
        prefix = None if committed is None else align_prefix(
            committed.stamp_s, committed.actions, committed.dt_s, now_s)
        no_pose = joints is not None and not isinstance(joints, Malformed) and pose is None
        return TickInputs(features, held[WINDOW], robot, capture, prefix, tuple(malformed),
                          no_pose)

    # --- sync mode: features asked for ------------------------------------------------------

    def wait_for_features(self, after: int, timeout_s: float,
                          stopped: Callable[[], bool] = lambda: False) -> bool:
        """Wait until features beyond the `after`-th arrived; False on timeout or `stopped()`.

        `wake()` makes a waiter check `stopped` at once (the loop is being stopped).
        """
        with self._features_arrived:
            return self._features_arrived.wait_for(
                lambda: self.feature_arrivals > after or stopped(), timeout=timeout_s) \
                and not stopped()

    def wake(self) -> None:
        with self._features_arrived:
            self._features_arrived.notify_all()


def put_converted(put: Callable[[object], None], read: Callable[[object], object],
                  msg) -> None:
    """Put `read(msg)`; a message that does not convert is put as Malformed (ticks refuse)."""
    try:
        item = read(msg)
    except ValueError as exc:     # ConversionError, or fewer positions than joint names
        item = Malformed(str(exc), time_from_msg(msg.header.stamp))
    put(item)


def _combined(joints: RobotState | Malformed | None,
              pose: ToolPose | None) -> RobotState | Malformed | None:
    """Return the robot state of a joint state and a pose (None without both)."""
    if joints is None or pose is None:
        return None
    if isinstance(joints, Malformed):
        return joints                  # the tick refuses, saying why
    return joints.with_pose(pose)


def tick_newest(runner: ExpertRunner, inputs: LatestInputs,
                now_s: float) -> tuple[TickResult, TickInputs]:
    """Tick `runner` on the newest inputs; return (TickResult, TickInputs).

    A malformed input is counted as the refusal `bad_<stream>`; the first one of the features,
    the window or the robot state refuses the tick (nothing runs), a malformed prefix only
    leaves the prefix out.
    """
    got = inputs.newest(now_s)
    refused = None
    for stream, detail in got.malformed:
        refusal = runner.refuse(f'bad_{stream}', detail)
        if refused is None and stream != PREFIX:
            refused = refusal
    if refused is not None:
        return refused, got
    return runner.tick(got.features, got.window, got.robot, now_s, prefix=got.prefix,
                       capture_robot=got.capture, no_pose=got.no_pose), got
