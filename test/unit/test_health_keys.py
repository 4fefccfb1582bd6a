"""The readers of the /diagnostics keys (core/health.py) on values with known answers."""
import math

from vla_insertion.core import health


def test_drop_and_frame_counts():
    values = {'drops.bad_magic': '3', 'skipped.stale_views': '2', 'drops.bogus': 'x',
              'drops.nan': 'nan', 'drops.late': '0', 'frames.zed_1': '120', 'fps.zed_1': '30.0',
              'received': '7'}
    # zeros stay (a monitor shows every cause); what is not a finite number is left out
    assert health.drop_counts(values) == {'bad_magic': 3, 'late': 0, 'skipped_stale_views': 2}
    assert health.frame_counts(values) == {'zed_1': 120}


def test_counters_keep_the_positive_counts_of_one_group():
    values = {'gate.velocity_limit': 7, 'gate.force_limit': 0, 'gate.': 4, 'gates.x': 1,
              'gate.jerk_limit': '2.0'}        # ChunkExecutor.stats() numbers or their text
    assert health.counters(values, 'gate.') == {'velocity_limit': 7, 'jerk_limit': 2}


def test_number_and_flags():
    assert health.number({'a': '0.5'}, 'a') == 0.5
    assert health.number({'a': 'inf'}, 'a') is None and health.number({}, 'a') is None
    assert health.untrained_flag({'untrained': 'True'}) is True
    assert health.untrained_flag({'untrained': False}) is False
    assert health.untrained_flag({}) is None


def test_pipeline_numbers_in_the_episode_summary_keys():
    executor = {'gate.max_distance': '5', 'starved': '3', 'jerk.rms': '12.5',
                'boundary.velocity_jump.p50': '0.01', 'boundary.velocity_jump.max': 'nan',
                'delay_s.p50': '0.02'}
    expert = {'feature_age_s_mean': '0.4', 'drops.no_features': '9', 'drops.stale_robot': '0'}
    assert health.pipeline_numbers(executor, expert) == {
        'gate': {'max_distance': 5}, 'starved': 3, 'jerk_rms_mean': 12.5,
        'velocity_jump_p50_mean': 0.01, 'velocity_jump_max': None, 'chunk_delay_s_mean': 0.02,
        'feature_age_s_mean': 0.4, 'refused': {'no_features': 9}}
    empty = health.pipeline_numbers({}, {})
    assert empty['starved'] == 0 and empty['jerk_rms_mean'] is None and empty['gate'] == {}


def test_executor_state_is_empty_without_values():
    assert health.executor_state({}) == {}
    state = health.executor_state({'armed': False, 'steps': 10})
    assert state['armed'] is False and state['commands'] == 10
    assert state['stops'] == {} and state['stop'] == ''
    stopped = health.executor_state({'stops.disarm': '2', 'stops.watchdog': 0, 'stop': 'disarm'})
    assert stopped['stops'] == {'disarm': 2} and stopped['stop'] == 'disarm'
    assert math.isnan(state['chunk_delay_s_p50'])
