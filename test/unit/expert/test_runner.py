"""ExpertRunner: the one policy tick (rules, inference, stamping, reuse, statistics)."""
import numpy as np
import pytest

from vla_insertion.core.data import MODE_SYNC, RobotState, SensorWindowData, VLFeatureData
from vla_insertion.core.expert.policy import ExpertPolicy
from vla_insertion.core.expert.presets import make_untrained_checkpoint
from vla_insertion.core.expert.runner import expert_health, ExpertRunner
from vla_insertion.core.expert.staleness import REFUSALS, StalenessLimits
from vla_insertion.core.feature_contract import FeatureContract

CONTRACT = FeatureContract(model_id='tiny-test-vlm', reduction='image_token_grid_pool',
                           num_tokens=6, feature_dim=32, image_width=64, image_height=36,
                           view_names=('zed_1', 'oak'), prompt='insert')
CHANNELS = ('fx', 'fy', 'fz', 'tx', 'ty', 'tz', 'distance')
NOW = 100.0


@pytest.fixture(scope='module')
def policy(tmp_path_factory):
    path = make_untrained_checkpoint(tmp_path_factory.mktemp('e') / 'c', CONTRACT,
                                     preset='small')
    return ExpertPolicy(path)


def features(seq=1, stamp=NOW - 0.3, digest=CONTRACT.digest):
    return VLFeatureData(stamp_s=stamp, features=np.ones((6, 32), np.float32), sequence=seq,
                         contract_hash=digest, model_id='m')


def window(stamp=NOW - 0.01, channels=CHANNELS):
    return SensorWindowData(stamp_s=stamp, samples=np.zeros((65, 7), np.float32),
                            valid_samples=65, sample_rate_hz=650.0, channel_names=channels)


def robot(stamp=NOW - 0.02):
    return RobotState(stamp_s=stamp, joint_positions_rad=np.zeros(6),
                      tool_position_m=np.zeros(3), tool_orientation_xyzw=np.array([0, 0, 0, 1.]))


def test_published_chunks_are_stamped_sequenced_and_counted_by_reuse(policy):
    runner = ExpertRunner(policy, StalenessLimits(), MODE_SYNC)
    results = [runner.tick(features(seq), window(NOW + k * 0.1), robot(NOW + k * 0.1),
                           NOW + k * 0.1)
               for k, seq in enumerate([1, 1, 1, 2, 2])]
    assert all(r.published for r in results)
    assert [r.chunk.sequence for r in results] == [1, 2, 3, 4, 5]
    assert [r.chunk.reuse_index for r in results] == [1, 2, 3, 1, 2]
    assert [r.chunk.stamp_s for r in results] == pytest.approx(NOW + 0.1 * np.arange(5))
    assert all(r.chunk.mode == MODE_SYNC for r in results)
    assert results[0].chunk.feature_age_s == pytest.approx(0.3)
    assert runner.stats.published == 5
    assert runner.stats.chunks_per_features.summary()['mean'] == 3.0
    values = runner.stats.values()
    assert {f'drops.{r}' for r in REFUSALS} <= set(values) and values['chunks'] == 5


@pytest.mark.parametrize('inputs,reason', [
    ({'features': None}, 'no_features'),
    ({'features': features(digest='0' * 16)}, 'contract_mismatch'),
    ({'features': features(stamp=NOW - 2.0)}, 'features_too_old'),
    ({'window': window(stamp=NOW - 0.5)}, 'sensor_too_old'),
    ({'robot': None}, 'no_robot_state'),
    ({'window': window(channels=('a',) * 7)}, 'bad_observation'),   # refused by the policy
])
def test_refusals_publish_nothing_and_are_counted_by_reason(policy, inputs, reason):
    runner = ExpertRunner(policy, StalenessLimits())
    args = {'features': features(), 'window': window(), 'robot': robot(), **inputs}
    result = runner.tick(args['features'], args['window'], args['robot'], NOW)
    assert not result.published and result.decision.reason == reason
    assert runner.stats.refused.as_dict() == {reason: 1}
    assert runner.stats.last_refusal.startswith(reason)
    report = expert_health(runner.stats, 0, 0.0, 10.0)
    assert report.level == ('ERROR' if reason == 'contract_mismatch' else 'WARN')
    assert reason in report.message


def test_a_policy_free_runner_decides_for_training(policy):
    runner = ExpertRunner(None, StalenessLimits(), contract_digest=CONTRACT.digest,
                          feature_shape=(6, 32))
    assert runner.decide(features(), window(), robot(), NOW).publish
    assert runner.decide(features(), window(NOW - 0.3), robot(), NOW).reason == \
        'sensor_too_old'
    assert runner.stats.refused.as_dict() == {'sensor_too_old': 1}


def test_health_escalates_on_a_failed_loop_and_a_low_rate(policy):
    runner = ExpertRunner(policy, StalenessLimits())
    runner.tick(features(), window(), robot(), NOW)
    assert expert_health(runner.stats, 0, 10.0, 10.0).level == 'OK'
    assert expert_health(runner.stats, 0, 5.0, 10.0).level == 'WARN'
    assert expert_health(runner.stats, 0, 10.0, 10.0, failed='boom').level == 'ERROR'
    assert 'not publishing yet' in expert_health(
        ExpertRunner(policy, StalenessLimits()).stats, 0, 0.0, 10.0).message


def test_reset_starts_a_new_run(policy):
    runner = ExpertRunner(policy, StalenessLimits())
    runner.tick(features(), window(), robot(), NOW)
    runner.reset()
    again = runner.tick(features(), window(), robot(), NOW)
    assert again.chunk.sequence == 1 and again.chunk.reuse_index == 1
    assert runner.stats.published == 1


class _Refusing:
    """A policy without a feature contract that refuses for a reason of its own."""

    class meta:                    # noqa: N801 - stands for a checkpoint's meta
        contract_digest = None
        feature_shape = None
        untrained = False

    def infer(self, obs):
        from vla_insertion.core.expert.staleness import PolicyRefusal
        raise PolicyRefusal('server_error', 'the server failed')

    def reset(self) -> None:
        pass


def test_a_policys_own_refusals_are_counted_from_zero():
    runner = ExpertRunner(_Refusing(), StalenessLimits(), refusals=('server_error',))
    assert runner.stats.values()['drops.server_error'] == 0
    other = features(digest='whatever')        # no contract: any digest passes the rules
    result = runner.tick(other, window(), robot(), NOW)
    assert not result.published and result.decision.reason == 'server_error'
    assert result.decision.detail == 'the server failed'
    assert result.decision.feature_age_s == pytest.approx(0.3)
    assert runner.stats.values()['drops.server_error'] == 1
    runner.reset()
    assert runner.stats.values()['drops.server_error'] == 0
