"""LatestInputs and tick_newest: the newest inputs of a tick, the robot at capture, the prefix.

No ROS: messages for the one-rule check are plain namespaces read by core.bag.messages, as a
recorded bag's are.
"""
from dataclasses import replace
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from vla_insertion.core.bag.messages import pose_from_msg, robot_state_from_msgs
from vla_insertion.core.data import (
    ActionChunkData, RobotState, SensorWindowData, ToolPose, VLFeatureData)
from vla_insertion.core.executor.merge import align_prefix
from vla_insertion.core.expert.inputs import (
    FEATURES, JOINTS, LatestInputs, Malformed, PREFIX, ROBOT, tick_newest, WINDOW)
from vla_insertion.core.expert.runner import ExpertRunner
from vla_insertion.core.expert.staleness import StalenessLimits

NOW = 100.0
DIGEST = '0123456789abcdef'


def features(stamp: float = NOW - 0.3, seq: int = 1) -> VLFeatureData:
    return VLFeatureData(stamp_s=stamp, features=np.ones((6, 32), np.float32), sequence=seq,
                         contract_hash=DIGEST, model_id='m')


def window(stamp: float = NOW - 0.01) -> SensorWindowData:
    return SensorWindowData(stamp_s=stamp, samples=np.zeros((65, 7), np.float32),
                            valid_samples=65, sample_rate_hz=650.0)


def joints(stamp: float, joint0: float = 0.0, gripper: float = 0.5) -> RobotState:
    """Return a joint state as the node converts it: the tool pose left at the origin."""
    return RobotState(stamp_s=stamp, joint_positions_rad=np.r_[joint0, np.zeros(5)],
                      tool_position_m=np.zeros(3), tool_orientation_xyzw=np.array([0, 0, 0, 1.]),
                      gripper=gripper)


def pose(stamp: float, x: float = 0.4) -> ToolPose:
    return ToolPose(stamp, np.array([x, 0.0, 0.3]), np.array([0.0, 0.0, 0.0, 1.0]))


def stamp_msg(t: float) -> SimpleNamespace:
    return SimpleNamespace(sec=int(t), nanosec=int(round((t - int(t)) * 1e9)))


class RecordingPolicy:
    """Answers every observation with a zero chunk and keeps the observations."""

    meta = None

    def __init__(self) -> None:
        self.observations = []

    def infer(self, obs) -> ActionChunkData:
        self.observations.append(obs)
        return ActionChunkData(stamp_s=obs.now_s, actions=np.zeros((8, 7), np.float32),
                               dt_s=0.1)

    def reset(self) -> None:
        self.observations.clear()


def runner() -> ExpertRunner:
    limits = StalenessLimits(max_feature_age_s=1.0, max_sensor_age_s=1.0, max_robot_age_s=1.0)
    return ExpertRunner(RecordingPolicy(), limits, contract_digest=DIGEST, feature_shape=(6, 32))


def filled(inputs: LatestInputs | None = None) -> LatestInputs:
    """Return inputs with features captured at NOW - 0.298, 1 s of joints and poses."""
    inputs = inputs or LatestInputs()
    events = [(NOW - 1.0 + 0.01 * k, 'joints') for k in range(100)]
    events += [(NOW - 1.0 + 0.007 * k, 'pose') for k in range(143)]
    for t, kind in sorted(events):         # in stamp order, as they arrive
        if kind == 'joints':
            inputs.put_joints(joints(t, joint0=t - NOW))
        else:
            inputs.put_pose(pose(t, x=t - NOW))
    inputs.put_features(features(stamp=NOW - 0.298))
    inputs.put_window(window())
    return inputs


def test_the_robot_is_the_newest_joints_with_the_newest_pose_by_the_recordings_rule():
    # the same joint state and pose as messages, combined by core.bag.messages (a recording)
    header = SimpleNamespace(stamp=stamp_msg(NOW - 0.02))
    joint_msg = SimpleNamespace(header=header, name=['j1', 'j2', 'j3', 'j4', 'j5', 'j6',
                                                     'gripper'],
                                position=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    pose_msg = SimpleNamespace(header=SimpleNamespace(stamp=stamp_msg(NOW - 0.05)),
                               pose=SimpleNamespace(
                                   position=SimpleNamespace(x=0.4, y=0.1, z=0.3),
                                   orientation=SimpleNamespace(x=0.0, y=0.0, z=0.6, w=0.8)))
    inputs = LatestInputs()
    inputs.put_joints(robot_state_from_msgs(joint_msg))      # as the node converts them
    inputs.put_pose(pose_from_msg(pose_msg))
    robot = inputs.newest(NOW).robot
    expected = robot_state_from_msgs(joint_msg, pose_msg)
    assert robot.stamp_s == pytest.approx(NOW - 0.05)         # the older of the two
    assert robot.stamp_s == expected.stamp_s and robot.gripper == pytest.approx(0.7)
    for field in ('joint_positions_rad', 'tool_position_m', 'tool_orientation_xyzw'):
        np.testing.assert_array_equal(getattr(robot, field), getattr(expected, field))
    assert robot.joint_names == expected.joint_names


def test_the_capture_takes_each_half_at_or_before_the_features_stamp():
    got = filled().newest(NOW)
    capture = got.capture
    # joints every 10 ms, poses every 7 ms: each half is the newest at or before NOW - 0.298
    assert capture.joint_positions_rad[0] == pytest.approx(-0.3, abs=1e-9)
    assert capture.tool_position_m[0] == pytest.approx(-1.0 + 0.007 * 100, abs=1e-9)
    assert capture.stamp_s == pytest.approx(NOW - 0.3)        # the older half's stamp
    assert capture.gripper == 0.5
    # the tick's robot is the newest of each
    assert got.robot.joint_positions_rad[0] == pytest.approx(-0.01, abs=1e-9)
    assert got.robot.tool_position_m[0] == pytest.approx(-1.0 + 0.007 * 142, abs=1e-9)
    assert got.malformed == () and got.prefix is None and got.window.stamp_s == NOW - 0.01


def test_the_capture_and_the_committed_prefix_reach_the_policy():
    inputs, run = filled(), runner()
    actions = np.arange(5 * 7, dtype=np.float32).reshape(5, 7)
    inputs.put_prefix(ActionChunkData(stamp_s=NOW - 0.03, actions=actions, dt_s=0.1))
    result, got = tick_newest(run, inputs, NOW)
    assert result.published, result.decision
    obs = run.policy.observations[-1]
    np.testing.assert_allclose(obs.prefix, align_prefix(NOW - 0.03, actions, 0.1, NOW))
    assert obs.prefix.shape == (5, 7) and obs.prefix[0, 0] == pytest.approx(0.3 * 7)
    assert obs.capture_robot is got.capture and obs.robot is got.robot


def test_a_whole_robot_state_answers_the_capture_as_the_runners_history_does():
    inputs = LatestInputs()
    for k in range(50):                                      # the sim cell's states, 10 ms
        inputs.put_robot(replace(joints(NOW - 0.5 + 0.01 * k, joint0=k), tool_position_m=np.full(
            3, float(k))))
    inputs.put_features(features(stamp=NOW - 0.205))
    got = inputs.newest(NOW)
    assert got.capture.joint_positions_rad[0] == 29 and got.capture.tool_position_m[0] == 29
    assert got.capture.stamp_s == pytest.approx(NOW - 0.21)
    assert got.robot.joint_positions_rad[0] == 49


@pytest.mark.parametrize('stream,put', [(FEATURES, 'put_features'), (WINDOW, 'put_window')])
def test_malformed_features_or_window_refuse_the_tick_by_stream(stream, put):
    inputs, run = filled(), runner()
    getattr(inputs, put)(Malformed('VLFeatures: data has 3 values, expected 6 x 32 = 192'))
    result, got = tick_newest(run, inputs, NOW)
    assert not result.published and result.decision.reason == f'bad_{stream}'
    assert got.malformed == ((stream, 'VLFeatures: data has 3 values, expected 6 x 32 = 192'),)
    assert run.policy.observations == [] and run.stats.refused.as_dict() == {f'bad_{stream}': 1}


def test_a_malformed_prefix_is_counted_and_the_tick_goes_on_without_it():
    inputs, run = filled(), runner()
    inputs.put_prefix(Malformed('ActionChunk: data has 5 values'))
    result, got = tick_newest(run, inputs, NOW)
    assert result.published and run.policy.observations[-1].prefix is None
    assert got.malformed == ((PREFIX, 'ActionChunk: data has 5 values'),)
    assert run.stats.refused.as_dict() == {'bad_prefix': 1}


def test_every_malformed_input_is_counted_and_the_first_refuses():
    inputs, run = filled(), runner()
    inputs.put_window(Malformed('bad window'))
    inputs.put_prefix(Malformed('bad prefix'))
    inputs.put_joints(Malformed('JointState names 7 but only 3 positions', NOW - 0.005))
    result, got = tick_newest(run, inputs, NOW)
    assert result.decision.reason == 'bad_window'
    assert [s for s, _ in got.malformed] == [WINDOW, PREFIX, ROBOT]
    assert run.stats.refused.as_dict() == {'bad_window': 1, 'bad_prefix': 1, 'bad_robot': 1}


def test_a_malformed_joint_state_at_the_capture_refuses_as_bad_robot():
    inputs = LatestInputs()
    inputs.put_pose(pose(NOW - 0.5))
    inputs.put_joints(joints(NOW - 0.4))
    inputs.put_joints(Malformed('too few positions', NOW - 0.3))    # the one at the capture
    inputs.put_joints(joints(NOW - 0.2))                           # the newest is fine
    inputs.put_window(window())
    inputs.put_features(features(stamp=NOW - 0.25))
    result, got = tick_newest(runner(), inputs, NOW)
    assert result.decision.reason == 'bad_robot' and got.capture is None
    assert got.malformed == ((ROBOT, 'too few positions'),)
    # features captured after the newest joint state: the capture is fine again
    inputs.put_features(features(stamp=NOW - 0.15))
    result, got = tick_newest(runner(), inputs, NOW)
    assert result.published and got.malformed == ()
    assert got.capture.stamp_s == pytest.approx(NOW - 0.5)         # the older half: the pose


def test_joint_states_without_a_tool_pose_refuse_as_no_tool_pose_after_the_earlier_rules():
    # a ros2_control cell's joint states (joint_state_source: joint_states), no robot/pose
    inputs = LatestInputs()
    inputs.put_joints(joints(NOW - 0.01))
    inputs.put_window(window())
    run = runner()
    result, got = tick_newest(run, inputs, NOW)
    assert result.decision.reason == 'no_features'                # the rules keep their order
    inputs.put_features(features())
    result, got = tick_newest(run, inputs, NOW)
    assert got.robot is None and got.no_pose
    assert result.decision.reason == 'no_tool_pose' and 'robot/pose' in result.decision.detail
    assert run.stats.values()['drops.no_tool_pose'] == 1
    inputs.put_pose(pose(NOW - 0.01))
    assert tick_newest(run, inputs, NOW)[0].published
    assert not LatestInputs().newest(NOW).no_pose               # nothing held: no_robot_state


def test_nothing_held_gives_no_inputs_and_clear_forgets():
    inputs = LatestInputs()
    got = inputs.newest(NOW)
    assert (got.features, got.window, got.robot, got.capture, got.prefix) == (None,) * 5
    filled(inputs)
    assert inputs.held(JOINTS) is not None and inputs.held(FEATURES) is not None
    inputs.clear()
    got = inputs.newest(NOW)
    assert got.robot is None and got.features is None and inputs.held(JOINTS) is None
    assert inputs.feature_arrivals == 1            # the count goes on for sync waits


def test_a_sync_wait_ends_with_new_features_on_timeout_or_when_stopped():
    inputs, stop, results = LatestInputs(), threading.Event(), {}
    assert not inputs.wait_for_features(0, timeout_s=0.01)    # nothing arrives

    def wait(name: str, after: int) -> None:
        results[name] = inputs.wait_for_features(after, timeout_s=30.0, stopped=stop.is_set)
    thread = threading.Thread(target=wait, args=('features', 0))
    thread.start()
    inputs.put_features(features())
    thread.join(timeout=30.0)
    thread = threading.Thread(target=wait, args=('stopped', 1))   # nothing beyond the 1st
    thread.start()
    stop.set()
    inputs.wake()
    thread.join(timeout=30.0)
    assert results == {'features': True, 'stopped': False}
