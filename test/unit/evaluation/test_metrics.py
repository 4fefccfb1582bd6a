"""Metrics on synthetic trajectories with known errors return the known numbers."""
import numpy as np
import pytest

from vla_insertion.core.evaluation import metrics as m

DT = 0.1
H = 4


def ramp(t0=0.0, t1=10.0, rate=100.0, slopes=(1.0, -2.0, 0.5)) -> m.Trajectory:
    """Joints moving linearly, q_j(t) = slope_j * t [rad], sampled at `rate` Hz."""
    t = np.arange(t0, t1 + 1e-9, 1.0 / rate)
    return m.Trajectory(t, np.outer(t, slopes), ('a', 'b', 'c'))


def perfect_chunks(traj, stamps, offsets=None, gripper=True) -> np.ndarray:
    """Chunks predicting the trajectory exactly, plus a per-(chunk, step, joint) offset."""
    times = np.asarray(stamps)[:, None] + np.arange(H)[None, :] * DT
    actions = traj.at(times)                      # (M, H, J)
    if offsets is not None:
        actions = actions + offsets
    if gripper:
        actions = np.concatenate([actions, np.full(actions.shape[:2] + (1,), 0.5)], axis=2)
    return actions


def test_interpolation_is_exact_on_a_ramp_and_nan_outside():
    traj = ramp()
    np.testing.assert_allclose(traj.at(np.array([0.123, 5.0])),
                               [[0.123, -0.246, 0.0615], [5.0, -10.0, 2.5]])
    assert np.isnan(traj.at(np.array([10.5]))).all()


def test_constant_offsets_give_known_mae_and_rmse():
    traj = ramp()
    stamps = np.arange(0.0, 5.0, 0.1)
    offsets = np.array([0.1, -0.2, 0.0])
    series = m.ChunkSeries(stamps, perfect_chunks(traj, stamps, offsets), DT)
    mae, rmse = m.per_joint(m.chunk_errors(traj, series))
    np.testing.assert_allclose(mae, [0.1, 0.2, 0.0], atol=1e-12)
    np.testing.assert_allclose(rmse, [0.1, 0.2, 0.0], atol=1e-12)


def test_mixed_errors_separate_mae_from_rmse():
    traj = ramp()
    stamps = np.array([1.0, 2.0])
    offsets = np.zeros((2, H, 3))
    offsets[0, :, 0] = 1.0                        # joint a: errors 1 and 3 -> MAE 2, RMSE sqrt 5
    offsets[1, :, 0] = -3.0
    result = m.evaluate(traj, m.ChunkSeries(stamps, perfect_chunks(traj, stamps, offsets), DT))
    joint_a = result['all_steps']['per_joint']['a']
    assert joint_a['mae_rad'] == pytest.approx(2.0)
    assert joint_a['rmse_rad'] == pytest.approx(np.sqrt(5.0))
    assert joint_a['mae_deg'] == pytest.approx(np.degrees(2.0))
    assert result['all_steps']['per_joint']['b']['mae_rad'] == pytest.approx(0.0, abs=1e-12)
    assert result['compared_actions'] == 2 * H


def test_error_grows_by_horizon_step():
    traj = ramp()
    stamps = np.arange(0.0, 5.0, 0.4)
    offsets = np.zeros((stamps.size, H, 3))
    offsets[:, :, 1] = 0.3 * np.arange(H)[None, :]   # only joint b, k * 0.3 rad
    series = m.ChunkSeries(stamps, perfect_chunks(traj, stamps, offsets), DT)
    mae, rmse = m.by_horizon_step(m.chunk_errors(traj, series))
    np.testing.assert_allclose(mae, 0.3 * np.arange(H) / 3, atol=1e-12)   # mean over 3 joints
    np.testing.assert_allclose(rmse, 0.3 * np.arange(H) / np.sqrt(3), atol=1e-12)


def test_actions_beyond_the_recording_are_not_compared():
    traj = ramp(t1=1.0)
    series = m.ChunkSeries(np.array([0.85]), perfect_chunks(ramp(), [0.85]), DT)
    errors = m.chunk_errors(traj, series)
    # steps at 0.85 and 0.95 lie inside [0, 1.0], 1.05 and 1.15 outside
    assert (~np.isnan(errors[0, :, 0])).tolist() == [True, True, False, False]


def test_executed_stream_uses_newest_chunk_and_holds_when_stale():
    stamps = np.array([0.0, 0.2, 1.0])              # chunk 1 runs out at 0.6, gap until 1.0
    actions = np.zeros((3, H, 1))
    actions[0, :, 0] = [0, 1, 2, 3]
    actions[1, :, 0] = [10, 11, 12, 13]
    actions[2, :, 0] = [20, 21, 22, 23]
    ex = m.executed(m.ChunkSeries(stamps, actions, DT), np.arange(0, 13) * 0.1 - 0.1)
    # ticks -0.1 .. 1.1 s
    assert ex.actions[:, 0][1:].tolist() == [0, 1, 10, 11, 12, 13, 13, 13, 13, 13, 20, 21]
    assert np.isnan(ex.actions[0, 0]) and ex.chunk_index[0] == -1
    assert ex.stale.tolist() == [False] * 7 + [True] * 4 + [False] * 2


def test_stale_actions_raise_the_executed_error_by_the_known_amount():
    # chunks every 0.8 s, horizon 4 x 0.1 s: for 0.4 s of each 0.8 s the last action is held,
    # so joint a (slope 1 rad/s) lags by 0.1, 0.2, 0.3, 0.4 rad at the stale ticks
    traj = ramp(t1=7.9, slopes=(1.0,))              # ends where the last chunk's cycle ends
    stamps = np.arange(0.0, 8.0, 0.8)
    series = m.ChunkSeries(stamps, perfect_chunks(traj, stamps), DT)
    result = m.evaluate(traj, series)
    per_cycle = np.array([0, 0, 0, 0, 0.1, 0.2, 0.3, 0.4])
    ticks = m.control_ticks(series, traj)
    expected = np.tile(per_cycle, ticks.size // 8 + 1)[:ticks.size]
    assert result['executed']['mae_rad'] == pytest.approx(expected.mean())
    assert result['executed']['rmse_rad'] == pytest.approx(np.sqrt((expected ** 2).mean()))
    assert result['all_steps']['mae_rad'] == pytest.approx(0.0, abs=1e-12)
    assert result['executed']['stale_fraction'] == pytest.approx(
        (np.tile([0, 0, 0, 0, 1, 1, 1, 1], ticks.size // 8 + 1)[:ticks.size]).mean())


def test_boundary_discontinuity_overlapping_and_adjacent():
    stamps = np.array([0.0, 0.2, 1.0])
    actions = np.zeros((3, H, 2))
    actions[0, :, 0] = [0.0, 0.1, 0.2, 0.3]
    actions[1, :, 0] = [0.5, 0.6, 0.7, 0.8]        # starts at step 2 of chunk 0: jump 0.3
    actions[2, :, 0] = [0.7, 0.8, 0.9, 1.0]        # chunk 1 ran out (last 0.8): jump 0.1
    d = m.discontinuity(m.ChunkSeries(stamps, actions, DT), num_joints=2)
    np.testing.assert_allclose(d.jumps[:, 0], [0.3, 0.1])
    np.testing.assert_allclose(d.jumps[:, 1], [0.0, 0.0])
    assert d.overlapping.tolist() == [True, False]


def test_perfect_consecutive_chunks_have_no_jump():
    traj = ramp()
    stamps = np.arange(0.0, 3.0, 0.1)
    d = m.discontinuity(m.ChunkSeries(stamps, perfect_chunks(traj, stamps), DT), 3)
    np.testing.assert_allclose(d.jumps, 0.0, atol=1e-12)


def test_rate_timing_and_feature_stats():
    stamps = np.arange(21) * 0.1
    series = m.ChunkSeries(stamps, np.zeros((21, H, 7)), DT,
                           inference_ms=np.full(21, 5.0),
                           latency_ms=np.linspace(10, 30, 21),
                           feature_age_s=np.tile([0.1, 0.2, 0.3], 7),
                           reuse_index=np.tile([1, 2, 3], 7),
                           feature_sequence=np.repeat(np.arange(7), 3))
    rate = m.action_rate(series.stamps_s, 0.1)
    assert rate['rate_hz'] == pytest.approx(10.0)
    assert rate['period_error_ms']['max'] == pytest.approx(0.0, abs=1e-9)
    feats = m.feature_stats(series)
    assert feats['age_s']['mean'] == pytest.approx(0.2)
    assert feats['distinct_features'] == 7
    assert feats['chunks_per_feature'] == pytest.approx(3.0)
    assert feats['reuse_index']['max'] == 3
    hist = m.histogram(series.latency_ms, bins=4)
    assert sum(hist['counts']) == 21 and hist['edges'][0] == 10 and hist['edges'][-1] == 30
    assert m.summary(series.latency_ms)['p50'] == pytest.approx(20.0)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        m.Trajectory(np.array([0.0, 0.0]), np.zeros((2, 1)))
    with pytest.raises(ValueError):
        m.ChunkSeries(np.array([1.0, 0.0]), np.zeros((2, H, 1)), DT)
    with pytest.raises(ValueError):
        m.chunk_errors(ramp(), m.ChunkSeries(np.array([0.0]), np.zeros((1, H, 2)), DT))
