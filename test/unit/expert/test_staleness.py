"""Publication rules of the action expert: each one stops a chunk and says why."""
import dataclasses

import numpy as np
import pytest

from vla_insertion.core.config import ConfigError, ExpertConfig
from vla_insertion.core.data import RobotState, SensorWindowData, VLFeatureData
from vla_insertion.core.expert import staleness as st

NOW = 50.0
DIGEST = 'abcdef0123456789'
LIMITS = st.StalenessLimits(max_feature_age_s=1.0, max_sensor_age_s=0.1, max_robot_age_s=0.2)

FEATURES = VLFeatureData(stamp_s=NOW - 0.4, features=np.zeros((4, 8), np.float32), sequence=3,
                         contract_hash=DIGEST, model_id='m')
WINDOW = SensorWindowData(stamp_s=NOW - 0.01, samples=np.zeros((65, 7), np.float32),
                          valid_samples=65, sample_rate_hz=650.0)
ROBOT = RobotState(stamp_s=NOW - 0.05, joint_positions_rad=np.zeros(6),
                   tool_position_m=np.zeros(3), tool_orientation_xyzw=np.array([0, 0, 0, 1.0]))


def check(features=FEATURES, window=WINDOW, robot=ROBOT, limits=LIMITS):
    return st.check_inputs(features, window, robot, NOW, limits, DIGEST, (4, 8))


def test_fresh_inputs_publish_with_their_ages():
    decision = check()
    assert decision.publish and decision.reason == ''
    assert decision.feature_age_s == pytest.approx(0.4)
    assert decision.sensor_age_s == pytest.approx(0.01)
    assert decision.robot_age_s == pytest.approx(0.05)


@pytest.mark.parametrize('inputs,reason,words', [
    ({'features': None}, st.NO_FEATURES, 'no VL features'),
    ({'features': dataclasses.replace(FEATURES, contract_hash='ffff')}, st.CONTRACT_MISMATCH,
     "'ffff'"),
    ({'features': dataclasses.replace(FEATURES, features=np.zeros((4, 9), np.float32))},
     st.CONTRACT_MISMATCH, '(4, 9)'),
    ({'features': dataclasses.replace(FEATURES, stamp_s=NOW - 1.5)}, st.FEATURES_TOO_OLD,
     '1.500 s old'),
    ({'window': None}, st.NO_SENSOR_WINDOW, 'no sensor window'),
    ({'window': dataclasses.replace(WINDOW, valid_samples=40)}, st.WINDOW_INCOMPLETE, '40/65'),
    ({'window': dataclasses.replace(WINDOW, stamp_s=NOW - 0.3)}, st.SENSOR_TOO_OLD,
     '0.300 s old'),
    ({'robot': None}, st.NO_ROBOT_STATE, 'robot'),
    ({'robot': dataclasses.replace(ROBOT, stamp_s=NOW - 0.5)}, st.ROBOT_STATE_TOO_OLD,
     '0.500 s old'),
])
def test_each_rule_stops_publication_and_says_why(inputs, reason, words):
    decision = check(**inputs)
    assert not decision.publish
    assert decision.reason == reason
    assert words in decision.detail
    assert reason in st.REASONS


def test_incomplete_window_allowed_when_not_required():
    limits = dataclasses.replace(LIMITS, require_complete_window=False)
    assert check(window=dataclasses.replace(WINDOW, valid_samples=40), limits=limits).publish


def test_rules_apply_in_order():
    decision = check(features=dataclasses.replace(FEATURES, stamp_s=NOW - 5), window=None,
                     robot=None)
    assert decision.reason == st.FEATURES_TOO_OLD


def test_reuse_counter_counts_per_feature_sequence():
    counter = st.ReuseCounter()
    assert [counter.use(s) for s in (1, 1, 1, 1, 2, 2, 3, 3, 3)] == [1, 2, 3, 4, 1, 2, 1, 2, 3]
    counter.reset()
    assert counter.use(3) == 1


@pytest.mark.parametrize('bad', [{'max_feature_age_s': 0.0}, {'max_sensor_age_s': -1.0},
                                 {'require_complete_window': 1}])
def test_limits_validation(bad):
    with pytest.raises(ConfigError):
        st.StalenessLimits(**bad)


@pytest.mark.parametrize('bad', [{'rate_hz': 0.0}, {'mode': 'batch'}, {'device': 'tpu'},
                                 {'torch_threads': -1}, {'seed': -2}, {'scheduler': 'x'},
                                 {'sync_timeout_s': 0.0}, {'checkpoint': ''}])
def test_expert_config_validation(bad):
    with pytest.raises(ConfigError):
        ExpertConfig(**bad)


def test_inputs_without_a_contract_skip_only_the_contract_rule():
    other = dataclasses.replace(FEATURES, contract_hash='another', features=np.zeros((1, 1)))
    assert st.check_inputs(other, WINDOW, ROBOT, NOW, LIMITS, None).publish
    old = dataclasses.replace(FEATURES, stamp_s=NOW - 5.0)
    assert st.check_inputs(old, WINDOW, ROBOT, NOW, LIMITS, None).reason == st.FEATURES_TOO_OLD
