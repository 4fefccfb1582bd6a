"""joint_trajectory_controller's acceptance rules, written out: what ros2_control will take.

ros2_controllers' `JointTrajectoryController::validate_trajectory_msg` (the same rules from
Humble to Rolling) refuses a JointTrajectory from its `~/joint_trajectory` topic, logs an error
and keeps executing the old one. A refused stop would leave the old trajectory playing, so
every trajectory the executor publishes must pass. `check_trajectory` applies the controller's
rules in the controller's order, with its default parameters and the one we set
(`allow_partial_joints_goal: false`, `allow_integration_in_goal_trajectories: false`,
`allow_nonzero_velocity_at_trajectory_end: false`, no effort interface: docs/bringup.md), and
returns the first one broken; each reason is a stable name:

| reason | the controller refuses when |
| --- | --- |
| `joint_count` | the trajectory names a different number of joints than the controller has |
| `no_joint_names` | joint_names is empty |
| `no_points` | there are no points |
| `unknown_joint` | a name is not one of the controller's `joints` |
| `duplicate_joint` | (ours) a name twice: the controller would take it, with a joint missing |
| `nonzero_end_velocity` | a velocity of the last point exceeds float32 epsilon in magnitude |
| `ends_in_past` | the stamp is not 0 and stamp + the last time_from_start is before now |
| `time_not_increasing` | a point's time_from_start is not after the previous point's [ns] |
| `positions_size` | a point's positions are not one per joint |
| `velocities_size` | a point's velocities are neither empty nor one per joint |
| `accelerations_size` | a point's accelerations are neither empty nor one per joint |
| `effort` | a point has efforts (only for controllers with an effort command interface) |
| `non_finite` | (ours) NaN or inf anywhere: the controller would pass it to the hardware |

Times are compared in whole nanoseconds, as builtin_interfaces/Duration carries them
(`duration_ns`, which the message writer uses too).
"""
from __future__ import annotations

from dataclasses import dataclass
import math

import numpy as np

from vla_insertion.core.data import JointTrajectoryData

REASONS = ('joint_count', 'no_joint_names', 'no_points', 'unknown_joint', 'duplicate_joint',
           'nonzero_end_velocity', 'ends_in_past', 'time_not_increasing', 'positions_size',
           'velocities_size', 'accelerations_size', 'effort', 'non_finite')
# std::numeric_limits<float>::epsilon(): the controller's "zero" for the last velocities
END_VELOCITY_EPSILON = float(np.finfo(np.float32).eps)


@dataclass(frozen=True)
class TrajectoryCheck:
    """The controller's verdict on one trajectory."""

    reason: str = ''               # the first rule broken (REASONS), '' when accepted
    detail: str = ''               # what broke it, for a log line

    @property
    def accepted(self) -> bool:
        return not self.reason


def duration_ns(seconds: float) -> int:
    """Return a time_from_start [s] as the integer nanoseconds of builtin_interfaces/Duration."""
    return int(round(seconds * 1e9))


def check_trajectory(trajectory: JointTrajectoryData, joints: tuple[str, ...],
                     now_s: float) -> TrajectoryCheck:
    """Return what joint_trajectory_controller with `joints` does with `trajectory` at now_s."""
    names = tuple(trajectory.joint_names)
    points = trajectory.points
    if len(names) != len(joints):
        return TrajectoryCheck('joint_count', f'{len(names)} joints, the controller has '
                               f'{len(joints)}')
    if not names:
        return TrajectoryCheck('no_joint_names', 'joint_names is empty')
    if not points:
        return TrajectoryCheck('no_points', 'no points')
    unknown = [n for n in names if n not in joints]
    if unknown:
        return TrajectoryCheck('unknown_joint', f'{unknown} not in {list(joints)}')
    if len(set(names)) != len(names):
        return TrajectoryCheck('duplicate_joint', f'{list(names)} names a joint twice')
    moving = [n for n, v in zip(names, np.asarray(points[-1].velocities, dtype=np.float64))
              if not abs(v) <= END_VELOCITY_EPSILON]
    if moving:
        return TrajectoryCheck('nonzero_end_velocity', f'{moving} still move at the last point')
    if trajectory.stamp_s != 0.0 and trajectory.end_s < now_s:
        return TrajectoryCheck('ends_in_past', f'ends at {trajectory.end_s:.6f} s, before now '
                               f'{now_s:.6f} s')
    previous = None
    for i, point in enumerate(points):
        t_ns = duration_ns(point.time_from_start_s)
        if previous is not None and t_ns <= previous:
            return TrajectoryCheck('time_not_increasing', f'point {i} at {t_ns} ns, point '
                                   f'{i - 1} at {previous} ns')
        previous = t_ns
        for field_name, optional in (('positions', False), ('velocities', True),
                                     ('accelerations', True)):
            size = np.asarray(getattr(point, field_name)).size
            if size != len(names) and not (optional and size == 0):
                return TrajectoryCheck(f'{field_name}_size', f'point {i} has {size} '
                                       f'{field_name} for {len(names)} joints')
        if np.asarray(point.effort).size:
            return TrajectoryCheck('effort', f'point {i} has efforts')
    for i, point in enumerate(points):
        values = np.concatenate([np.asarray(point.positions, dtype=np.float64).ravel(),
                                 np.asarray(point.velocities, dtype=np.float64).ravel(),
                                 np.asarray(point.accelerations, dtype=np.float64).ravel()])
        if not (np.isfinite(values).all() and math.isfinite(point.time_from_start_s)):
            return TrajectoryCheck('non_finite', f'point {i} has a value that is not finite')
    if not math.isfinite(trajectory.stamp_s):
        return TrajectoryCheck('non_finite', f'stamp {trajectory.stamp_s}')
    return TrajectoryCheck()
