"""Every custom message and the standard ones we fill, converted to and from numpy."""
import math

from builtin_interfaces.msg import Time
import numpy as np
import pytest

from vla_insertion import conversions as conv
from vla_insertion.core.data import (
    ActionChunkData, CameraFrame, JointTrajectoryData, MODE_SYNC, NodeStatsData, RobotState,
    SensorWindowData, TrajectoryPointData, VLFeatureData)


@pytest.mark.parametrize('t', [0.0, 1.5, 1700000000.123456789, 0.999999999, 12.0000000004])
def test_time_round_trip(t):
    msg = conv.time_to_msg(t)
    assert 0 <= msg.nanosec < 1_000_000_000
    assert conv.time_from_msg(msg) == pytest.approx(t, abs=1e-9)


def test_time_carry_into_seconds():
    assert conv.time_to_msg(1.9999999999) == Time(sec=2, nanosec=0)


@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -1.0])
def test_time_rejects_invalid(bad):
    with pytest.raises(conv.ConversionError):
        conv.time_to_msg(bad)


def test_sensor_window_round_trip():
    samples = np.arange(65 * 4, dtype=np.float32).reshape(65, 4)
    samples[:5] = np.nan  # incomplete: the first 5 rows were never received
    window = SensorWindowData(stamp_s=12.5, samples=samples, valid_samples=60,
                              sample_rate_hz=650.0, channel_names=('fx', 'fy', 'fz', 'dist'),
                              clock_offset_s=-0.0123, clock_calibrated=True,
                              gap_samples=3, late_samples=1)
    back = conv.sensor_window_from_msg(conv.sensor_window_to_msg(window))
    np.testing.assert_array_equal(back.samples, samples)  # NaN rows compare equal here
    assert back.valid_samples == 60 and not back.complete
    assert back.channel_names == window.channel_names
    assert back.clock_offset_s == pytest.approx(-0.0123)
    assert (back.gap_samples, back.late_samples) == (3, 1)
    assert back.stamp_s == pytest.approx(12.5)


def test_sensor_window_rejects_wrong_size():
    msg = conv.sensor_window_to_msg(SensorWindowData(
        stamp_s=1.0, samples=np.zeros((65, 2), np.float32), valid_samples=65,
        sample_rate_hz=650.0))
    msg.num_samples = 64
    with pytest.raises(conv.ConversionError, match='expected 64 x 2'):
        conv.sensor_window_from_msg(msg)


def test_vl_features_round_trip():
    rng = np.random.default_rng(0)
    feat = VLFeatureData(stamp_s=3.25, features=rng.standard_normal((16, 64)).astype(np.float32),
                         sequence=7, contract_hash='abc123', model_id='tiny',
                         view_names=('a', 'b'), view_stamps_s=(3.2, 3.25), inference_ms=12.5,
                         untrained=True)
    back = conv.vl_features_from_msg(conv.vl_features_to_msg(feat))
    np.testing.assert_array_equal(back.features, feat.features)
    assert back.view_stamps_s == pytest.approx(feat.view_stamps_s)
    assert (back.sequence, back.contract_hash, back.model_id, back.untrained) == (
        7, 'abc123', 'tiny', True)
    assert back.view_names == ('a', 'b')


def test_vl_features_rejects_mismatched_views():
    msg = conv.vl_features_to_msg(VLFeatureData(
        stamp_s=1.0, features=np.zeros((1, 4), np.float32), sequence=0, contract_hash='h',
        model_id='m', view_names=('a',), view_stamps_s=(1.0,)))
    msg.view_names = ['a', 'b']
    with pytest.raises(conv.ConversionError, match='view stamps'):
        conv.vl_features_from_msg(msg)


def test_action_chunk_round_trip():
    actions = np.linspace(-1, 1, 56, dtype=np.float32).reshape(8, 7)
    chunk = ActionChunkData(stamp_s=100.0, actions=actions, dt_s=0.1, sequence=5,
                            feature_sequence=2, feature_age_s=0.31, reuse_index=3,
                            sensor_stamp_s=99.98, sensor_age_s=0.02, inference_ms=4.2,
                            mode=MODE_SYNC)
    back = conv.action_chunk_from_msg(conv.action_chunk_to_msg(chunk))
    np.testing.assert_array_equal(back.actions, actions)
    assert back.actions[0, 6] == actions[0, 6]  # row-major: row 0 is the first action
    assert back.sensor_stamp_s == pytest.approx(99.98)
    assert (back.sequence, back.feature_sequence, back.reuse_index, back.mode) == (5, 2, 3, 1)
    assert back.feature_age_s == pytest.approx(0.31)


def test_robot_state_round_trip():
    state = RobotState(stamp_s=5.0, joint_positions_rad=np.radians([10, 20, 30, 40, 50, 60]),
                       tool_position_m=np.array([0.4, -0.1, 0.3]),
                       tool_orientation_xyzw=np.array([0.0, 0.0, math.sin(0.25), math.cos(0.25)]),
                       gripper=0.8)
    joints, pose = conv.robot_state_to_msgs(state)
    assert joints.name == list(state.joint_names) + ['gripper']
    assert joints.position[-1] == pytest.approx(0.8)
    back = conv.robot_state_from_msgs(joints, pose)
    assert back.gripper == pytest.approx(0.8)             # carried in the message, not by hand
    assert back.joint_names == state.joint_names
    np.testing.assert_allclose(back.joint_positions_rad, state.joint_positions_rad)
    np.testing.assert_allclose(back.tool_position_m, state.tool_position_m)
    np.testing.assert_allclose(back.tool_orientation_xyzw, state.tool_orientation_xyzw)


def test_robot_state_is_stamped_with_the_older_of_joints_and_pose():
    state = RobotState(stamp_s=5.0, joint_positions_rad=np.zeros(6),
                       tool_position_m=np.zeros(3), tool_orientation_xyzw=np.array([0, 0, 0, 1.0]))
    joints, pose = conv.robot_state_to_msgs(state)
    pose.header.stamp = conv.time_to_msg(4.5)
    assert conv.robot_state_from_msgs(joints, pose).stamp_s == pytest.approx(4.5)
    joints.header.stamp = conv.time_to_msg(4.0)
    assert conv.robot_state_from_msgs(joints, pose).stamp_s == pytest.approx(4.0)


def test_joint_state_without_gripper_and_with_gripper_anywhere():
    joints = conv.JointState(name=['j1', 'gripper', 'j2'], position=[0.1, 0.3, 0.2])
    stamp, positions = conv.joint_state_from_msg(joints)
    np.testing.assert_allclose(positions, [0.1, 0.2])
    assert conv.gripper_from_msg(joints) == pytest.approx(0.3)
    assert conv.gripper_from_msg(conv.JointState(name=['j1'], position=[0.1])) is None
    with pytest.raises(conv.ConversionError):
        conv.gripper_from_msg(conv.JointState(name=['j1', 'gripper'], position=[0.1]))


def test_joint_trajectory_round_trip_in_whole_nanoseconds():
    names = tuple(f'joint_{i}' for i in range(1, 7))
    points = (TrajectoryPointData(0.02, np.arange(6) * 0.1, np.full(6, 0.5)),
              TrajectoryPointData(1.0300000004, np.arange(6) * 0.2, np.zeros(6)))
    for stamp in (0.0, 1700000000.25):
        msg = conv.joint_trajectory_to_msg(JointTrajectoryData(stamp, names, points))
        assert msg.points[1].time_from_start.sec == 1
        assert msg.points[1].time_from_start.nanosec == 30_000_000
        assert len(msg.points[0].accelerations) == 0 and len(msg.points[0].effort) == 0
        back = conv.joint_trajectory_from_msg(msg)
        assert back.stamp_s == pytest.approx(stamp) and back.joint_names == names
        for a, b in zip(back.points, points):
            assert a.time_from_start_s == pytest.approx(b.time_from_start_s, abs=1e-9)
            np.testing.assert_array_equal(a.positions, b.positions)
            np.testing.assert_array_equal(a.velocities, b.velocities)


def test_camera_frame_round_trip():
    frame = CameraFrame(view='zed_1', stamp_s=2.5, data=b'\xff\xd8jpeg\xff\xd9')
    msg = conv.camera_frame_to_msg(frame)
    assert msg.header.frame_id == 'zed_1' and msg.format == 'jpeg'
    back = conv.camera_frame_from_msg(msg, view='zed_1')
    assert back.data == frame.data and back.stamp_s == pytest.approx(2.5)


def test_node_stats_and_diagnostics():
    stats = NodeStatsData(stamp_s=1.0, node='vlm', rate_hz=2.6, latency_mean_ms=380.0,
                          latency_p99_ms=410.0, input_age_s=0.2, published=10, dropped=1)
    back = conv.node_stats_from_msg(conv.node_stats_to_msg(stats))
    assert back.rate_hz == pytest.approx(2.6) and back.published == 10 and back.dropped == 1
    status = conv.diagnostic_status_to_msg('vlm', 'hw', 'WARN', 'slow', {'ms': 412.345, 'n': 3})
    assert status.level == status.WARN
    assert {kv.key: kv.value for kv in status.values} == {'ms': '412.345', 'n': '3'}


@pytest.mark.parametrize('value,text', [
    (1234500.04, '1234500.040'),        # a 1234.5 s clock offset in ms, to 0.001 ms
    (-1123456.78912, '-1123456.789'), (1.7e12 + 0.25, '1700000000000.250'),
    (9999.123456, '9999.12'), (0.000123456789, '0.000123457'), (2.5, '2.5'),
    (float('nan'), 'nan'), (float('inf'), 'inf'), (True, 'True'), (0, '0')])
def test_diagnostic_values_keep_their_resolution(value, text):
    status = conv.diagnostic_status_to_msg('bridge', 'hw', 'OK', 'ok', {'v': value})
    assert status.values[0].value == text
