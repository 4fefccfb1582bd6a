"""The run summary computes rates, reuse and ages from a synthetic run with known answers."""
import math

import numpy as np
import pytest

from vla_insertion.core.data import ActionChunkData, SensorWindowData, VLFeatureData
from vla_insertion.core.evaluation.run_summary import (
    format_summary, RunRecorder, status_line, summarize)


def _synthetic_run() -> RunRecorder:
    rec = RunRecorder()
    for i in range(25):  # features at 2.5 Hz, 400 ms each
        rec.add_features(i * 0.4, VLFeatureData(
            stamp_s=i * 0.4 - 0.1, features=np.zeros((1, 1), np.float32), sequence=i,
            contract_hash='h', model_id='m', inference_ms=400.0 if i % 2 else 300.0,
            untrained=True))
    for k in range(100):  # chunks at 10 Hz, each feature set used 4 times
        rec.add_chunk(k * 0.1, ActionChunkData(
            stamp_s=k * 0.1, actions=np.zeros((8, 7), np.float32), dt_s=0.1,
            sequence=k, feature_sequence=k // 4, reuse_index=k % 4 + 1,
            feature_age_s=0.1 * (k % 4 + 1), inference_ms=5.0))
    rec.set_frames('zed_1', 30)  # as the camera bridge reports it in /diagnostics
    rec.set_drops('camera_bridge', {'malformed': 3, 'oversized': 0})
    rec.set_window(SensorWindowData(stamp_s=1.0, samples=np.zeros((65, 7), np.float32),
                                    valid_samples=65, sample_rate_hz=650.0))
    rec.set_joints(np.radians([45.0, 0, 0, 0, 0, 0]))
    return rec


def test_summary_numbers():
    s = summarize(_synthetic_run())
    assert s['actions'] == 100
    assert s['action_rate_hz'] == pytest.approx(10.0)
    assert s['vl_updates'] == 25
    assert s['vl_rate_hz'] == pytest.approx(2.5)
    assert s['vl_ms_mean'] == pytest.approx(348.0)  # 12 x 400 + 13 x 300 over 25
    assert s['chunks_per_feature_mean'] == pytest.approx(4.0)
    assert s['reuse_index_mean'] == pytest.approx(2.5)
    assert s['feature_age_s_mean'] == pytest.approx(0.25)
    assert s['action_period_ms'] == pytest.approx(100.0)
    assert s['action_period_err_p99_ms'] == pytest.approx(0.0, abs=1e-6)
    assert s['drops'] == {'camera_bridge.malformed': 3}  # zero counts are left out
    assert s['frames_per_view'] == {'zed_1': 30}
    assert s['untrained'] is True


def test_summary_window_and_text():
    rec = _synthetic_run()
    s = summarize(rec, since_s=5.0)
    assert s['actions'] == 50  # chunks received at 5.0 .. 9.9 s
    line = status_line(rec, window_s=5.0, now_s=9.9)
    assert 'Sensor: 65/65' in line and 'J1=45.00 deg' in line and 'untrained' in line
    text = format_summary(summarize(rec), duration_s=10.0)
    assert '100 at 10.00 Hz' in text and 'UNTRAINED' in text


def test_a_trained_expert_on_the_untrained_vlm_is_labelled_as_such():
    rec = _synthetic_run()
    rec.set_expert({'untrained': 'False', 'rate_hz': '10.0'})    # its /diagnostics values
    text = format_summary(summarize(rec), duration_s=10.0)
    assert 'not meaningful' not in text
    assert 'expert trained on the features of the UNTRAINED' in text
    assert '(untrained VLM, trained expert)' in status_line(rec, window_s=5.0, now_s=9.9)
    rec.set_expert({'untrained': 'True'})
    assert 'not meaningful' in format_summary(summarize(rec), duration_s=10.0)


def test_empty_run_does_not_divide_by_zero():
    s = summarize(RunRecorder())
    assert s['actions'] == 0 and s['action_rate_hz'] == 0.0
    assert math.isnan(s['action_period_err_p99_ms'])
    assert 'none' in format_summary(s, duration_s=0.0)


def _end(episode: int, success: bool, reason: str, t: float | None, peak: float) -> dict:
    return {'episode': episode, 'success': success, 'reason': reason, 'time_to_insert_s': t,
            'peak_force_n': peak, 'mean_force_n': peak / 2}


def test_scored_episodes_are_summarised_in_the_keys_of_every_episode_summary():
    rec = _synthetic_run()
    for report in (_end(3, True, 'success', 4.0, 10.0), _end(4, False, 'timeout', None, 30.0),
                   _end(5, True, 'success', 6.0, 20.0)):
        rec.add_episode(report)
    s = summarize(rec)
    assert (s['episodes'], s['successes']) == (3, 2)
    assert s['success_rate'] == pytest.approx(2 / 3)
    assert s['outcomes'] == {'success': 2, 'timeout': 1}
    assert s['time_to_insert_s_mean'] == pytest.approx(5.0)     # of the successes only
    assert (s['peak_force_n_max'], s['peak_force_n_mean']) == (30.0, pytest.approx(20.0))
    assert s['mean_force_n_mean'] == pytest.approx(10.0)
    assert [e['episode'] for e in s['per_episode']] == [3, 4, 5]
    assert ('2/3 succeeded (67%), outcomes success=2, timeout=1, time to insert avg 5.0 s, '
            'peak force 30.0 N') in format_summary(s, duration_s=10.0)


def test_the_demo_summary_carries_the_episode_count_and_the_held_out_evaluation():
    from vla_insertion.core.evaluation.summary import (
        held_out_evaluation, success_text, summarize_outcomes)
    rec = _synthetic_run()
    for k in range(10):
        rec.add_episode(_end(k, k != 4, 'success' if k != 4 else 'timeout',
                             5.0 if k != 4 else None, 12.0))
    build = summarize_outcomes([_end(k, k != 7, 'success' if k != 7 else 'over_force',
                                     6.0 if k != 7 else None, 20.0) for k in range(20)])
    held = held_out_evaluation(build, seed=7, where='in-process, when the policy was built')
    assert (held['episodes'], held['successes'], held['seed']) == (20, 19, 7)
    assert 'per_episode' not in held
    s = summarize(rec, held_out=held)
    assert (s['episodes'], s['successes']) == (10, 9) and s['held_out'] == held
    assert success_text(s) == '9/10 = 90%' and success_text(held) == '19/20 = 95%'
    text = format_summary(s, duration_s=120.0)
    assert '9/10 succeeded (90%)' in text
    assert ('held-out holes      19/20 = 95% (in-process, when the policy was built, seed 7, '
            'episodes 0..19), outcomes over_force=1, success=19') in text
    # a run without a build's evaluation says nothing of one
    assert summarize(rec)['held_out'] is None
    assert 'held-out' not in format_summary(summarize(rec), duration_s=1.0)
    assert success_text(summarize(RunRecorder())) == 'no episode'


def test_no_episode_and_no_success_leave_the_means_empty():
    s = summarize(RunRecorder())
    assert (s['episodes'], s['successes'], s['success_rate']) == (0, 0, None)
    assert 'succeeded' not in format_summary(s, duration_s=1.0)
    rec = RunRecorder()
    rec.add_episode(_end(0, False, 'over_force', None, 60.0))
    s = summarize(rec)
    assert s['success_rate'] == 0.0 and s['time_to_insert_s_mean'] is None
    assert '0/1 succeeded (0%)' in format_summary(s, duration_s=1.0)


def test_diagnostics_values_reach_the_recorder_by_their_keys():
    rec = RunRecorder()
    rec.add_diagnostics('camera_bridge', {'drops.bad_magic': '3', 'drops.late': '0',
                                          'frames.zed_1': '120', 'fps.zed_1': '30.0'})
    rec.add_diagnostics('vlm_node', {'skipped.stale_views': '2', 'drops.bogus': 'x'})
    rec.add_diagnostics('cell_a/chunk_executor', {
        'steps': '500', 'commands_sent': '450', 'armed': 'True', 'state': 'tracking',
        'fault': '', 'gate.velocity_limit': '7', 'gate.force_limit': '0', 'starved': '2',
        'delay_s.p50': '0.004', 'jerk.rms': 'nan'})
    rec.add_diagnostics('action_expert', {'untrained': 'False'})
    s = summarize(rec)
    assert s['drops'] == {'camera_bridge.bad_magic': 3, 'vlm_node.skipped_stale_views': 2}
    assert s['frames_per_view'] == {'zed_1': 120}
    ex = s['executor']
    assert (ex['commands'], ex['sent'], ex['armed'], ex['state']) == (500, 450, True, 'tracking')
    assert ex['gate'] == {'velocity_limit': 7} and ex['starved'] == 2
    assert ex['chunk_delay_s_p50'] == pytest.approx(0.004) and math.isnan(ex['jerk_rms'])
    assert rec.expert_untrained is False
