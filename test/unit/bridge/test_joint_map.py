"""ros2_control's joint states through the joint map: extra joints ignored, missing refused."""
from types import SimpleNamespace

import numpy as np
import pytest

from vla_insertion.core import topics
from vla_insertion.core.bag.messages import robot_state_from_msgs
from vla_insertion.core.bridge.joint_map import (
    BAD_JOINT_STATES, joint_state_reader, joint_state_topic, JointMapError, JointStateMap,
    MISSING_JOINT)
from vla_insertion.core.config import ConfigError, ExecutorConfig, ExpertConfig
from vla_insertion.core.executor.gripper import GripperScale

UR = ('shoulder_pan_joint', 'shoulder_lift_joint', 'elbow_joint', 'wrist_1_joint',
      'wrist_2_joint', 'wrist_3_joint')
KNUCKLE = 'robotiq_85_left_knuckle_joint'       # 0 open .. 0.8 rad closed
ROBOTIQ = GripperScale(KNUCKLE, 0.0, 0.8)


def broadcaster_msg(stamp_s=12.5, gripper_rad=0.2, drop=()):
    """Return a JointState as joint_state_broadcaster sends it: its own order, extra joints."""
    joints = {'elbow_joint': 0.3, 'robotiq_85_right_knuckle_joint': -0.2, 'wrist_1_joint': 0.4,
              'shoulder_lift_joint': 0.2, KNUCKLE: gripper_rad, 'linear_rail': 1.5,
              'shoulder_pan_joint': 0.1, 'wrist_3_joint': 0.6, 'wrist_2_joint': 0.5}
    names = [n for n in joints if n not in drop]
    sec, nanosec = int(stamp_s), int(round((stamp_s % 1) * 1e9))
    return SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec)),
                           name=names, position=[joints[n] for n in names], velocity=[],
                           effort=[])


def read(msg, joint_map=JointStateMap(UR, ROBOTIQ)):
    return joint_map.robot_state(12.5, msg.name, msg.position)


def test_the_arm_in_action_order_the_gripper_in_0_to_1_extra_joints_ignored():
    state = read(broadcaster_msg())
    np.testing.assert_allclose(state.joint_positions_rad, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert state.gripper == pytest.approx(0.25)                 # 0.2 rad of 0.8
    assert state.joint_names == UR and state.stamp_s == 12.5
    np.testing.assert_array_equal(state.tool_position_m, 0.0)   # a JointState has no pose


@pytest.mark.parametrize('drop', [('wrist_2_joint',), (KNUCKLE,)])
def test_a_missing_joint_is_refused_naming_it(drop):
    with pytest.raises(JointMapError) as error:
        read(broadcaster_msg(drop=drop))
    assert error.value.cause == MISSING_JOINT and drop[0] in str(error.value)


def test_fewer_positions_than_names_is_refused():
    msg = broadcaster_msg()
    with pytest.raises(JointMapError) as error:
        JointStateMap(UR, ROBOTIQ).robot_state(1.0, msg.name, msg.position[:-1])
    assert error.value.cause == BAD_JOINT_STATES


def test_a_cell_without_a_gripper_joint_reads_gripper_0():
    no_gripper = JointStateMap(UR, GripperScale('', 0.0, 1.0))
    assert read(broadcaster_msg(drop=(KNUCKLE,)), no_gripper).gripper == 0.0


@pytest.mark.parametrize('arm,gripper', [(UR[:5], KNUCKLE), (UR[:5] + UR[:1], KNUCKLE),
                                         (UR, UR[0])])
def test_a_bad_map_is_refused(arm, gripper):
    with pytest.raises(ValueError):
        JointStateMap(arm, GripperScale(gripper, 0.0, 0.8))


def test_the_configured_source_gives_topic_and_reader():
    bridge = ExecutorConfig()
    assert joint_state_topic(bridge) is topics.JOINT_STATES
    assert joint_state_reader(bridge) is robot_state_from_msgs
    for config in (ExecutorConfig(joint_state_source='joint_states', joint_names=UR,
                                  gripper_joint=KNUCKLE, gripper_closed_position=0.8),
                   ExpertConfig(joint_state_source='joint_states', joint_names=UR,
                                gripper_joint=KNUCKLE, gripper_closed_position=0.8)):
        assert joint_state_topic(config) is topics.ROS2_JOINT_STATES
        state = joint_state_reader(config)(broadcaster_msg(stamp_s=3.25))
        assert state.stamp_s == pytest.approx(3.25) and state.gripper == pytest.approx(0.25)
        np.testing.assert_allclose(state.joint_positions_rad, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])


@pytest.mark.parametrize('cls', [ExecutorConfig, ExpertConfig])
@pytest.mark.parametrize('values,field', [
    ({'joint_state_source': 'zmq'}, 'joint_state_source'),
    ({'gripper_joint': 'joint_3'}, 'gripper_joint'),
    ({'gripper_open_position': 0.5, 'gripper_closed_position': 0.5}, 'must differ'),
    ({'gripper_closed_position': float('nan')}, 'gripper_closed_position'),
])
def test_bad_joint_state_fields_are_refused(cls, values, field):
    with pytest.raises(ConfigError, match=field):
        cls(**values)


@pytest.mark.parametrize('values,field', [
    ({'gripper_output': 'action'}, 'gripper_output'),
    ({'gripper_output': 'trajectory_joint'}, 'joint_trajectory in outputs'),
    ({'gripper_output': 'forward_command', 'gripper_joint': ''}, 'needs gripper_joint'),
])
def test_bad_gripper_outputs_are_refused(values, field):
    with pytest.raises(ConfigError, match=field):
        ExecutorConfig(**values)
