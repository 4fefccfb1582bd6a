"""The one model interface every inference component implements.

The real VLM, a tiny untrained one, the action expert and wrappers (artificial delay, recording)
all expose `infer(obs) -> output` and `reset()`, so nodes, the evaluator and the comparison
experiment can stack and swap them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import numpy as np

from vla_insertion.core.data import CameraFrame, RobotState, SensorWindowData, VLFeatureData

ObsT = TypeVar('ObsT', contravariant=True)
OutT = TypeVar('OutT', covariant=True)


class Model(Protocol, Generic[ObsT, OutT]):
    def infer(self, obs: ObsT) -> OutT:
        """Run one inference; raise a specific exception on bad input."""

    def reset(self) -> None:
        """Forget any state carried between calls (new episode)."""


@dataclass(frozen=True)
class VlmObservation:
    """Input of the VLM: the newest frame of each configured view."""

    frames: dict[str, CameraFrame]  # view name -> frame; every configured view present
    sequence: int = 0               # sequence number to give the resulting features


@dataclass(frozen=True)
class ExpertObservation:
    """Input of the action expert: the newest of each stream at one tick."""

    features: VLFeatureData
    window: SensorWindowData
    robot: RobotState
    now_s: float                    # tick time on the local clock [s]
    prefix: np.ndarray | None = None  # (d, A) committed actions applying from now_s, or None
    capture_robot: RobotState | None = None  # the robot state when the features' views were taken
