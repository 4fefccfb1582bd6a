"""The robot state at the capture of the VL features: one rule for training and running.

The VL features describe the views at their stamp (the capture), and the expert uses them a
few hundred milliseconds later. An expert with `capture_motion` also gets the robot state at
that capture, so it can carry what the views showed (the hole relative to the tip) forward by
the motion since. The rule, the same everywhere: the newest robot state at or before the
capture stamp, else the oldest one known (the capture came before the first robot state, as at
start-up, when the arm is still).

- At run time `RobotHistory` holds the robot states of the last seconds (the node adds every
  message it receives; the runner adds the one of each tick) and answers `at(stamp)`.
- In training and offline evaluation the recording answers it (`recorded_captures`,
  `RecordedInputs.robot`).
"""
from __future__ import annotations

from collections import deque
import math
import threading

import numpy as np

from vla_insertion.core.data import RobotState

HISTORY_S = 3.0     # kept robot states [s]: longer than any usable feature age


class RobotHistory:
    """Robot states of the last `span_s` seconds, looked up by stamp; thread-safe.

    A state older than the newest one held (the sender's clock jumped back) starts the
    history again from it, so a lookup never mixes two clocks.
    """

    def __init__(self, span_s: float = HISTORY_S) -> None:
        if not span_s > 0:
            raise ValueError(f'span_s must be > 0, got {span_s}')
        self.span_s = span_s
        self._states: deque[RobotState] = deque()
        self._lock = threading.Lock()
        self.restarts = 0            # clock jumps back that cleared the history
        self.rejected = 0            # states with a non-finite stamp, not kept

    def add(self, robot: RobotState) -> None:
        if not math.isfinite(robot.stamp_s):
            self.rejected += 1
            return
        with self._lock:
            states = self._states
            if states and robot.stamp_s < states[-1].stamp_s:
                states.clear()
                self.restarts += 1
            if states and robot.stamp_s == states[-1].stamp_s:
                states[-1] = robot                    # the same instant: keep the newest copy
            else:
                states.append(robot)
            while states[0].stamp_s < robot.stamp_s - self.span_s:
                states.popleft()

    def at(self, stamp_s: float) -> RobotState | None:
        """Return the newest state at or before `stamp_s`, else the oldest; None when empty."""
        with self._lock:
            states = self._states
            if not states:
                return None
            # states are few (seconds at the robot's rate) and the capture is near the end
            for robot in reversed(states):
                if robot.stamp_s <= stamp_s:
                    return robot
            return states[0]

    def clear(self) -> None:
        with self._lock:
            self._states.clear()

    def __len__(self) -> int:
        return len(self._states)


def recorded_captures(stamps_s: np.ndarray, robot_at, state_vector) -> np.ndarray:
    """Return the (U, S) state vectors at the capture stamps of a recording's VL updates.

    `robot_at(t)`: the recording's newest robot state at or before t (None before the first);
    `state_vector(robot)`: the expert's state vector. Captures before the first robot state get
    the earliest one found, as `RobotHistory.at` answers with the oldest it holds.
    """
    vectors = [None if (r := robot_at(float(t))) is None else state_vector(r) for t in stamps_s]
    known = [v for v in vectors if v is not None]
    if not known:
        raise ValueError('no robot state recorded at or before any VL update')
    first = known[0]
    return np.stack([first if v is None else v for v in vectors]).astype(np.float32)
