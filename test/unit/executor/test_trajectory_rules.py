"""joint_trajectory_controller's acceptance rules: each rule refuses what the controller does."""
from dataclasses import replace
import math

import numpy as np
import pytest

from vla_insertion.core.data import JointTrajectoryData, TrajectoryPointData
from vla_insertion.core.executor.trajectory_rules import (
    check_trajectory, duration_ns, END_VELOCITY_EPSILON, REASONS)

JOINTS = tuple(f'joint_{i}' for i in range(1, 7))
NOW = 100.0


def point(t, q=0.0, v=0.0, **kwargs):
    return TrajectoryPointData(t, np.full(6, q), np.full(6, v), **kwargs)


def good(**changes) -> JointTrajectoryData:
    trajectory = JointTrajectoryData(NOW, JOINTS, (point(0.02, 0.1, 0.5), point(0.03, 0.105, 0.4),
                                                   point(0.04, 0.108, 0.0)))
    return replace(trajectory, **changes)


def verdict(trajectory, joints=JOINTS, now=NOW):
    return check_trajectory(trajectory, joints, now).reason


def test_a_trajectory_that_ends_at_rest_in_the_future_is_accepted():
    check = check_trajectory(good(), JOINTS, NOW)
    assert check.accepted and check.reason == '' and check.detail == ''
    assert verdict(good(stamp_s=0.0), now=1e9) == ''          # stamp 0: starts on arrival
    assert verdict(good(joint_names=tuple(reversed(JOINTS)))) == ''   # any order of the joints
    no_velocities = good(points=(TrajectoryPointData(0.5, np.zeros(6), np.zeros(0)),))
    assert verdict(no_velocities) == ''                       # velocities may be left out
    last = good().points[-1]
    tiny = replace(last, velocities=np.full(6, 0.9 * END_VELOCITY_EPSILON))
    assert verdict(good(points=good().points[:-1] + (tiny,))) == ''   # the controller's zero


@pytest.mark.parametrize('changes, reason', [
    ({'joint_names': JOINTS[:5]}, 'joint_count'),
    ({'joint_names': JOINTS + ('joint_7',)}, 'joint_count'),
    ({'joint_names': JOINTS[:5] + ('elbow',)}, 'unknown_joint'),
    ({'joint_names': JOINTS[:5] + ('joint_1',)}, 'duplicate_joint'),
    ({'points': ()}, 'no_points'),
    ({'points': (point(0.02, 0.1, 0.5),)}, 'nonzero_end_velocity'),
    ({'points': (point(0.02), point(0.02))}, 'time_not_increasing'),
    ({'points': (point(0.03), point(0.02))}, 'time_not_increasing'),
    ({'points': (point(0.02), point(0.02 + 0.4e-9))}, 'time_not_increasing'),   # same ns
    ({'points': (TrajectoryPointData(0.1, np.zeros(5), np.zeros(6)),)}, 'positions_size'),
    ({'points': (TrajectoryPointData(0.1, np.zeros(6), np.zeros(3)),)}, 'velocities_size'),
    ({'points': (point(0.1, accelerations=np.zeros(2)),)}, 'accelerations_size'),
    ({'points': (point(0.1, effort=np.zeros(6)),)}, 'effort'),
    ({'points': (point(0.1, q=math.nan),)}, 'non_finite'),
])
def test_each_rule_refuses_what_the_controller_refuses(changes, reason):
    assert reason in REASONS
    assert verdict(good(**changes)) == reason


def test_no_joint_names_and_a_trajectory_that_ends_in_the_past():
    assert verdict(good(joint_names=()), joints=()) == 'no_joint_names'
    assert verdict(good(), now=NOW + 0.0401) == 'ends_in_past'
    assert verdict(good(), now=NOW + 0.04) == ''              # ending now is not in the past


def test_the_first_rule_broken_is_reported_in_the_controllers_order():
    bad = good(joint_names=JOINTS[:5] + ('x',), points=(point(0.1, v=1.0),))
    assert verdict(bad) == 'unknown_joint'                     # before the end velocity
    assert verdict(good(points=(point(0.1, v=1.0),)), now=NOW + 1.0) == 'nonzero_end_velocity'


def test_durations_are_whole_nanoseconds():
    assert duration_ns(0.02) == 20_000_000
    assert duration_ns(1.0000000004) == 1_000_000_000
