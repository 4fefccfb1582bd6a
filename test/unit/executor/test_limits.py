"""Joint limits: ros2_control shape, nested and dotted parameters, validation, the params file."""
import dataclasses
from pathlib import Path

import pytest

from vla_insertion.core.config import (
    ConfigError, ExecutorConfig, field_docs)
from vla_insertion.core.executor import ChunkExecutor
from vla_insertion.core.executor.limits import (
    default_limits, KEYS, limits_from_params, split_params)
from vla_insertion.core.params import load_config, node_params

PARAMS = Path(__file__).resolve().parents[3] / 'config' / 'vla_insertion.yaml'
JOINTS = ('joint_1', 'joint_2', 'joint_3', 'joint_4', 'joint_5', 'joint_6')


def test_defaults_are_ur5e_like_and_complete():
    table = default_limits()
    assert table.names == JOINTS + ('gripper',)
    j3 = dict(zip(table.names, table.joints))['joint_3']
    assert j3.min_position == pytest.approx(-3.14159, abs=1e-5)   # the UR elbow is +-pi
    grip = table.joints[-1]
    assert (grip.min_position, grip.max_position) == (0.0, 1.0)
    for limits in table.joints:
        assert limits.has_position_limits and limits.has_velocity_limits
        assert limits.has_acceleration_limits and limits.has_jerk_limits


def test_nested_and_dotted_forms_give_the_same_table():
    nested = {'joint_limits': {'joint_2': {'max_velocity': 0.5, 'max_acceleration': 2}}}
    dotted = {'joint_limits.joint_2.max_velocity': 0.5,
              'joint_limits.joint_2.max_acceleration': 2, 'merge': 'latest'}
    a, b = limits_from_params(nested), limits_from_params(dotted)
    assert a == b
    j2 = a.joints[1]
    assert j2.max_velocity == 0.5 and j2.max_acceleration == 2.0
    assert isinstance(j2.max_acceleration, float)
    assert a.joints[0] == default_limits().joints[0]               # untouched joints keep defaults


def test_to_params_round_trips():
    table = limits_from_params({'joint_limits.gripper.max_velocity': 1.5})
    params = table.to_params()
    assert params['joint_limits.gripper.max_velocity'] == 1.5
    assert limits_from_params(params) == table


@pytest.mark.parametrize('params, words', [
    ({'joint_limits.joint_7.max_velocity': 1.0}, ['joint_7', 'unknown joint']),
    ({'joint_limits.joint_1.max_velocty': 1.0}, ['joint_1', 'max_velocty', 'unknown key']),
    ({'joint_limits': {'joint_4': {'soft_lower_limit': 0.0}}}, ['joint_4', 'soft_lower_limit']),
    ({'joint_limits.joint_2.max_velocity': -1.0}, ['joint_limits.joint_2.max_velocity', '> 0']),
    ({'joint_limits.joint_3.max_jerk': float('nan')}, ['joint_limits.joint_3.max_jerk']),
    ({'joint_limits.joint_5.max_acceleration': 'fast'}, ['joint_5.max_acceleration']),
    ({'joint_limits.joint_1.has_velocity_limits': 'yes'}, ['joint_1.has_velocity_limits']),
    ({'joint_limits.joint_1.has_velocity_limits': False},
     ['joint_1.has_velocity_limits', 'must be true']),
    ({'joint_limits.joint_6.min_position': 3.0, 'joint_limits.joint_6.max_position': 1.0},
     ['joint_6.min_position', 'below max_position']),
    ({'joint_limits.gripper.angle_wraparound': True}, ['gripper.angle_wraparound']),
    ({'joint_limits.joint_1': 3.0}, ['joint_limits.joint_1']),
    ({'joint_limits': {'joint_1': 3.0}}, ['joint_limits.joint_1']),
])
def test_bad_limits_name_the_joint_and_key(params, words):
    with pytest.raises(ConfigError) as info:
        limits_from_params(params)
    for word in words:
        assert word in str(info.value)


def test_deceleration_tightens_the_symmetric_bound_and_jerk_is_optional():
    table = limits_from_params({'joint_limits': {'joint_1': {
        'has_deceleration_limits': True, 'max_deceleration': 2.0,
        'has_jerk_limits': False}}})
    assert table.joints[0].acceleration == 2.0
    assert table.joints[0].jerk == float('inf')


def test_executor_refuses_limits_for_other_joints_and_a_margin_too_wide():
    with pytest.raises(ConfigError, match='joint_limits are for'):
        ChunkExecutor(ExecutorConfig(joint_names=('a', 'b', 'c', 'd', 'e', 'f')),
                      default_limits())
    with pytest.raises(ConfigError, match='position_margin_rad'):
        ChunkExecutor(ExecutorConfig(position_margin_rad=0.6),
                      limits_from_params({'joint_limits.joint_1.min_position': -1.0,
                                          'joint_limits.joint_1.max_position': 0.1}))
    with pytest.raises(ConfigError, match='max_jerk'):           # a 1000-period jerk filter
        ChunkExecutor(ExecutorConfig(), limits_from_params(
            {'joint_limits.joint_1.max_jerk': 0.8}))


@pytest.mark.parametrize('bad', [
    {'merge': 'average'}, {'control_rate_hz': 0.0}, {'actuator_lead_s': 1.5},
    {'force_soft_n': 50.0}, {'torque_soft_nm': 5.0}, {'min_speed_scale': 0.0},
    {'joint_names': ('joint_1',)}, {'trajectory_dt_s': 0.001}, {'ensemble_k': float('nan')},
    {'command_timeout_s': 0.0}, {'start_armed': 'yes'}, {'prefix_quantile': 0.0},
    {'max_distance_from_measured_rad': 0.0}])
def test_executor_config_validation(bad):
    with pytest.raises(ConfigError):
        ExecutorConfig(**bad)


def test_every_config_field_documents_its_unit_or_choices():
    docs = field_docs(ExecutorConfig)
    assert set(docs) == {f.name for f in dataclasses.fields(ExecutorConfig)}
    for name, doc in docs.items():
        assert doc, name


def test_params_file_section_builds_the_config_and_the_limits():
    # the one loader: unknown names raise, joint_limits.* are the limits' own parameters
    config = load_config(ExecutorConfig, 'chunk_executor', PARAMS,
                         extra_prefixes=('joint_limits.',))
    values, limits = split_params({n: v for n, (v, _) in
                                   node_params(PARAMS, 'chunk_executor').items()})
    assert set(values) <= {f.name for f in dataclasses.fields(ExecutorConfig)}
    table = limits_from_params(limits, config.joint_names)
    assert {k.split('.')[1] for k in limits} == set(table.names)
    assert {k.split('.')[2] for k in limits} <= set(KEYS)
    ChunkExecutor(config, table)
