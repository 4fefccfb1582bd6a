"""Whether the action expert may publish a chunk at a tick, and why not.

Each rule is a parameter of the node. A refused tick publishes nothing (the robot keeps
executing the previous chunk or holds), and its reason is counted and shown in /diagnostics. The
rules are checked in a fixed order and the first that fails is the reason:

    no_features          no VL features received yet
    contract_mismatch    features made under another feature contract (hash or shape)
    features_too_old     now - features.stamp_s > max_feature_age_s
    no_sensor_window     no sensor window received yet
    window_incomplete    fewer valid samples than the window length (require_complete_window)
    sensor_too_old       now - window.stamp_s > max_sensor_age_s
    no_robot_state       joint states or tool pose not received yet
    no_tool_pose         joint states but no tool pose: nothing publishes robot/pose (a
                         ros2_control cell reading joint_states without it; docs/bringup.md)
    robot_state_too_old  now - (older of the joint and pose stamps) > max_robot_age_s

`core.expert.runner.ExpertRunner` applies them at every tick, live and offline. A remote policy
(core/remote/, the policy_client node) ticks through the same runner and rules: its "features"
are the camera views it sends (`core.remote.mapping.ViewSet`, stamped with the oldest view), it
has no feature contract (`contract_digest` None skips that rule), and it refuses a tick for
reasons of its own by raising a `PolicyRefusal`.
"""
from __future__ import annotations

from dataclasses import dataclass
import threading

from vla_insertion.core.config import require, require_positive
from vla_insertion.core.data import RobotState, SensorWindowData, VLFeatureData

NO_FEATURES = 'no_features'
CONTRACT_MISMATCH = 'contract_mismatch'
FEATURES_TOO_OLD = 'features_too_old'
NO_SENSOR_WINDOW = 'no_sensor_window'
WINDOW_INCOMPLETE = 'window_incomplete'
SENSOR_TOO_OLD = 'sensor_too_old'
NO_ROBOT_STATE = 'no_robot_state'
NO_TOOL_POSE = 'no_tool_pose'
ROBOT_STATE_TOO_OLD = 'robot_state_too_old'
REASONS = (NO_FEATURES, CONTRACT_MISMATCH, FEATURES_TOO_OLD, NO_SENSOR_WINDOW, WINDOW_INCOMPLETE,
           SENSOR_TOO_OLD, NO_ROBOT_STATE, NO_TOOL_POSE, ROBOT_STATE_TOO_OLD)
# After the rules: the policy refused the observation (shape, channels, non-finite values), and
# sync mode's wait for requested features timed out.
BAD_OBSERVATION = 'bad_observation'
SYNC_TIMEOUT = 'sync_timeout'
REFUSALS = REASONS + (BAD_OBSERVATION, SYNC_TIMEOUT)


class PolicyRefusal(Exception):
    """A policy refuses an observation for a reason of its own (a remote server's error).

    `reason` is the refusal's key, counted like the rules' (`drops.<reason>`).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class StalenessLimits:
    """The publication rules' thresholds."""

    max_feature_age_s: float = 1.0     # oldest VL features (now - capture stamp) to act on [s]
    max_sensor_age_s: float = 0.1      # oldest sensor window (now - newest sample) to act on [s]
    max_robot_age_s: float = 0.2       # oldest robot state (joints and pose) to act on [s]
    require_complete_window: bool = True  # refuse windows with missing (NaN) rows

    def __post_init__(self) -> None:
        for name in ('max_feature_age_s', 'max_sensor_age_s', 'max_robot_age_s'):
            require_positive(name, getattr(self, name))
        require(isinstance(self.require_complete_window, bool),
                f'require_complete_window must be a bool, got {self.require_complete_window!r}')

    @classmethod
    def from_config(cls, config) -> StalenessLimits:
        """Return the limits an ExpertConfig sets (the node's parameters)."""
        return cls(config.max_feature_age_s, config.max_sensor_age_s, config.max_robot_age_s,
                   config.require_complete_window)


@dataclass(frozen=True)
class Decision:
    """The verdict of one tick: publish, or the reason not to with a human-readable detail."""

    publish: bool
    reason: str = ''                   # one of REASONS when publish is False
    detail: str = ''
    feature_age_s: float = float('nan')
    sensor_age_s: float = float('nan')
    robot_age_s: float = float('nan')


def check_inputs(features: VLFeatureData | None, window: SensorWindowData | None,
                 robot: RobotState | None, now_s: float, limits: StalenessLimits,
                 contract_digest: str | None, feature_shape: tuple[int, int] | None = None,
                 no_pose: bool = False) -> Decision:
    """Apply the rules in order; `robot` stamps are the older of joints and pose.

    `no_pose`: robot is None because joint states are held but no tool pose (no_tool_pose).
    `contract_digest` None: the inputs have no feature contract (a remote policy's camera
    views), and the contract rule is skipped.
    """
    if features is None:
        return Decision(False, NO_FEATURES, 'no VL features received yet')
    if contract_digest is not None:
        shape = tuple(features.features.shape)
        if features.contract_hash != contract_digest or \
                (feature_shape is not None and shape != tuple(feature_shape)):
            return Decision(False, CONTRACT_MISMATCH,
                            f'features contract {features.contract_hash!r} shape {shape} != '
                            f'checkpoint contract {contract_digest!r} shape {feature_shape}')
    feature_age = now_s - features.stamp_s
    if feature_age > limits.max_feature_age_s:
        return Decision(False, FEATURES_TOO_OLD,
                        f'features {features.sequence} are {feature_age:.3f} s old '
                        f'(max_feature_age_s {limits.max_feature_age_s})',
                        feature_age_s=feature_age)
    if window is None:
        return Decision(False, NO_SENSOR_WINDOW, 'no sensor window received yet',
                        feature_age_s=feature_age)
    sensor_age = now_s - window.stamp_s
    if limits.require_complete_window and not window.complete:
        return Decision(False, WINDOW_INCOMPLETE,
                        f'sensor window has {window.valid_samples}/{window.samples.shape[0]} '
                        'samples', feature_age_s=feature_age, sensor_age_s=sensor_age)
    if sensor_age > limits.max_sensor_age_s:
        return Decision(False, SENSOR_TOO_OLD,
                        f'sensor window is {sensor_age:.3f} s old '
                        f'(max_sensor_age_s {limits.max_sensor_age_s})',
                        feature_age_s=feature_age, sensor_age_s=sensor_age)
    if robot is None and no_pose:
        return Decision(False, NO_TOOL_POSE, 'joint states but no tool pose on robot/pose: the '
                        "policy's state needs it (robot_bridge or a pose_broadcaster)",
                        feature_age_s=feature_age, sensor_age_s=sensor_age)
    if robot is None:
        return Decision(False, NO_ROBOT_STATE, 'no robot joint state and tool pose received yet',
                        feature_age_s=feature_age, sensor_age_s=sensor_age)
    robot_age = now_s - robot.stamp_s
    if robot_age > limits.max_robot_age_s:
        return Decision(False, ROBOT_STATE_TOO_OLD,
                        f'robot state is {robot_age:.3f} s old '
                        f'(max_robot_age_s {limits.max_robot_age_s})',
                        feature_age_s=feature_age, sensor_age_s=sensor_age,
                        robot_age_s=robot_age)
    return Decision(True, feature_age_s=feature_age, sensor_age_s=sensor_age,
                    robot_age_s=robot_age)


class ReuseCounter:
    """How many chunks have used the current VL feature set (1 for its first chunk).

    Counted per feature `sequence`: a new sequence restarts at 1. Only published chunks count.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sequence: int | None = None
        self._uses = 0

    def use(self, sequence: int) -> int:
        """Record one chunk made from features `sequence`; return its reuse index."""
        with self._lock:
            if sequence != self._sequence:
                self._sequence, self._uses = sequence, 0
            self._uses += 1
            return self._uses

    def reset(self) -> None:
        with self._lock:
            self._sequence, self._uses = None, 0
