"""The robot state at the capture of the VL features: one rule for training and running.

The VL features describe the views at their stamp (the capture), and the expert uses them a
few hundred milliseconds later. An expert with `capture_motion` also gets the robot state at
that capture, so it can carry what the views showed (the hole relative to the tip) forward by
the motion since. The rule, the same everywhere: the newest robot state at or before the
capture stamp, else the oldest one known (the capture came before the first robot state, as at
start-up, when the arm is still).

- At run time the action_expert node keeps the joint states and poses it received
  (`core.expert.inputs.LatestInputs`: a `StampedHistory` of each, by their header stamps) and
  combines the newest of each at or before the capture, as a recording answers it; the
  in-process closed loop feeds the same `LatestInputs` every robot state it steps on; a caller
  that gives no capture gets the one in the states of the runner's ticks (`RobotHistory`).
- In training and offline evaluation the recording answers it (`recorded_captures`,
  `RecordedInputs.robot`).
"""
from __future__ import annotations

from collections import deque
import math
import threading
from typing import Callable, Generic, TypeVar

import numpy as np

from vla_insertion.core.data import RobotState

HISTORY_S = 3.0     # kept robot states [s]: longer than any usable feature age
T = TypeVar('T')


class StampedHistory(Generic[T]):
    """Items of the last `span_s` seconds, looked up by stamp; thread-safe.

    `stamp_of(item)` gives an item's stamp [s]. An item older than the newest one held (the
    sender's clock jumped back) starts the history again from it, so a lookup never mixes two
    clocks; an item with a non-finite stamp is not kept (`rejected`).
    """

    def __init__(self, stamp_of: Callable[[T], float], span_s: float = HISTORY_S) -> None:
        if not span_s > 0:
            raise ValueError(f'span_s must be > 0, got {span_s}')
        self.span_s = span_s
        self._stamp_of = stamp_of
        self._items: deque[tuple[float, T]] = deque()
        self._lock = threading.Lock()
        self.restarts = 0            # clock jumps back that cleared the history
        self.rejected = 0            # items with a non-finite stamp, not kept

    def add(self, item: T) -> None:
        stamp = float(self._stamp_of(item))
        if not math.isfinite(stamp):
            self.rejected += 1
            return
        with self._lock:
            items = self._items
            if items and stamp < items[-1][0]:
                items.clear()
                self.restarts += 1
            if items and stamp == items[-1][0]:
                items[-1] = (stamp, item)             # the same instant: keep the newest copy
            else:
                items.append((stamp, item))
            while items[0][0] < stamp - self.span_s:
                items.popleft()

    def at(self, stamp_s: float) -> T | None:
        """Return the newest item at or before `stamp_s`, else the oldest; None when empty."""
        with self._lock:
            items = self._items
            if not items:
                return None
            # seconds at a sender's rate, and the stamp looked up is near the end
            for stamp, item in reversed(items):
                if stamp <= stamp_s:
                    return item
            return items[0][1]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


class RobotHistory(StampedHistory[RobotState]):
    """Robot states by their stamps: what the runner was given, for the capture lookup."""

    def __init__(self, span_s: float = HISTORY_S) -> None:
        super().__init__(lambda robot: robot.stamp_s, span_s)


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
