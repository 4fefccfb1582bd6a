"""The safety gate's rules, their cause names and the force/torque monitor.

Every control step the rules are evaluated in this order; each that acts is counted under its
cause (the /diagnostics key is `gate.<cause>`, the count is of control steps in which it acted):

    non_finite             the plan gave a non-finite or misshapen reference -> hold
    no_robot_state         no joint state yet -> hold (nothing can be checked)
    robot_state_too_old    now - joint state stamp > max_robot_age_s -> hold
    chunk_too_old          the action being followed was planned from an observation older
                           than max_chunk_age_s -> hold
    no_sensor_window       require_sensor and no force window yet -> hold
    sensor_too_old         require_sensor and now - window stamp > max_sensor_age_s -> hold
    position_limit         an arm joint's target outside [min + margin, max - margin] is
                           clipped, or the limiter brakes to stay inside
    max_distance           a joint target further than max_distance_from_measured_rad from the
                           measured joint is pulled back to that distance
    velocity_limit         the limiter held an arm joint to its velocity limit
    acceleration_limit     ... a joint or the gripper to its acceleration limit (or braked early)
    jerk_limit             the requested acceleration changed faster than the jerk limit, and
                           the jerk filter smoothed it
    force_soft, torque_soft  |F| or |tau| above the soft limit: the speed limits are scaled
                           down linearly to min_speed_scale at the hard limit
    force_limit, torque_limit  |F| or |tau| at or above the hard limit: hold and latch a fault
                           (ERROR) until reset_fault(); counted every step the fault holds
    watchdog               no accepted chunk for chunk_timeout_s -> hold
    tool_pose_too_old      a workspace box is set and the newest tool pose (robot/pose) is
                           older than max_robot_age_s -> hold
    workspace              the tool, at its measured velocity, would come to rest outside the
                           workspace box -> hold and latch a fault (core/executor/safety.py)
    estop                  safety/estop is true: latched fault until it is false and
                           reset_fault() (counted every step the fault holds)
    gripper_range          the gripper's part of position_limit: its target outside
                           joint_limits.gripper's range is clipped (core/executor/gripper.py)
    gripper_rate           the gripper's part of velocity_limit: held to its max_velocity

Every decision becomes an input of the one motion limiter (a clipped target, a speed scale, or
"hold" = brake to a stop at the acceleration limit), which produces the sent position last: no
rule can undo the position, velocity, acceleration and jerk limits.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vla_insertion.core.data import SensorWindowData

NON_FINITE = 'non_finite'
NO_ROBOT_STATE = 'no_robot_state'
ROBOT_STATE_TOO_OLD = 'robot_state_too_old'
CHUNK_TOO_OLD = 'chunk_too_old'
NO_SENSOR_WINDOW = 'no_sensor_window'
SENSOR_TOO_OLD = 'sensor_too_old'
POSITION_LIMIT = 'position_limit'
MAX_DISTANCE = 'max_distance'
VELOCITY_LIMIT = 'velocity_limit'
ACCELERATION_LIMIT = 'acceleration_limit'
JERK_LIMIT = 'jerk_limit'
FORCE_SOFT = 'force_soft'
TORQUE_SOFT = 'torque_soft'
FORCE_LIMIT = 'force_limit'
TORQUE_LIMIT = 'torque_limit'
WATCHDOG = 'watchdog'
TOOL_POSE_TOO_OLD = 'tool_pose_too_old'
WORKSPACE = 'workspace'
ESTOP = 'estop'
CAUSES = (NON_FINITE, NO_ROBOT_STATE, ROBOT_STATE_TOO_OLD, CHUNK_TOO_OLD, NO_SENSOR_WINDOW,
          SENSOR_TOO_OLD, POSITION_LIMIT, MAX_DISTANCE, VELOCITY_LIMIT, ACCELERATION_LIMIT,
          JERK_LIMIT, FORCE_SOFT, TORQUE_SOFT, FORCE_LIMIT, TORQUE_LIMIT, WATCHDOG,
          TOOL_POSE_TOO_OLD, WORKSPACE, ESTOP)
LATCHING = (FORCE_LIMIT, TORQUE_LIMIT, WORKSPACE, ESTOP)

# The gripper's range and rate, counted apart from the arm joints' (core/executor/gripper.py).
GRIPPER_RANGE = 'gripper_range'
GRIPPER_RATE = 'gripper_rate'
CAUSES += (GRIPPER_RANGE, GRIPPER_RATE)

FORCE_CHANNELS = ('fx', 'fy', 'fz')     # [N]
TORQUE_CHANNELS = ('tx', 'ty', 'tz')    # [N m]


class SensorWindowError(ValueError):
    """A sensor window the force monitor cannot read (its cause is the drop counter key)."""

    def __init__(self, cause: str, detail: str) -> None:
        super().__init__(f'{cause}: {detail}')
        self.cause = cause


@dataclass(frozen=True)
class Wrench:
    """Peak force and torque magnitude over the valid rows of one sensor window."""

    stamp_s: float                 # newest sample's time [s]
    force_n: float                 # max |(fx, fy, fz)| [N]
    torque_nm: float               # max |(tx, ty, tz)| [N m]


def peak_wrench(window: SensorWindowData) -> Wrench:
    """Read the window's force and torque channels; raise SensorWindowError if unusable.

    The peak over the whole window is used (not the newest sample): a 650 Hz impact shorter
    than the 100 Hz control period still trips the hard limit, and the soft scaling releases
    only once the window has no high sample left. The channels are taken to be bias-free (the
    tool's weight compensated), as the sensor delivers and the policy was trained on.
    """
    names = tuple(window.channel_names) or ('fx', 'fy', 'fz', 'tx', 'ty', 'tz')
    samples = np.asarray(window.samples, dtype=np.float64)
    if samples.ndim != 2 or samples.shape[1] != len(names):
        raise SensorWindowError('bad_shape', f'samples {samples.shape} for channels {names}')
    missing = [c for c in FORCE_CHANNELS + TORQUE_CHANNELS if c not in names]
    if missing:
        raise SensorWindowError('bad_channels', f'no {missing} in {list(names)}')
    valid = int(window.valid_samples)
    if valid < 1 or valid > samples.shape[0]:
        raise SensorWindowError('empty', f'valid_samples {valid} of {samples.shape[0]}')
    rows = samples[-valid:]
    force = rows[:, [names.index(c) for c in FORCE_CHANNELS]]
    torque = rows[:, [names.index(c) for c in TORQUE_CHANNELS]]
    if not (np.isfinite(force).all() and np.isfinite(torque).all()) \
            or not np.isfinite(window.stamp_s):
        raise SensorWindowError('non_finite', 'non-finite force or torque in the valid rows')
    return Wrench(float(window.stamp_s), float(np.linalg.norm(force, axis=1).max()),
                  float(np.linalg.norm(torque, axis=1).max()))


def soft_scale(value: float, soft: float, hard: float, floor: float) -> float:
    """1 up to `soft`, then linearly down to `floor` at `hard`."""
    if value <= soft:
        return 1.0
    return max(floor, 1.0 - (1.0 - floor) * (value - soft) / (hard - soft))


def clamp(values: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, bool]:
    """Clip and say whether anything changed."""
    out = np.clip(values, lower, upper)
    return out, bool(np.any(out != values))
