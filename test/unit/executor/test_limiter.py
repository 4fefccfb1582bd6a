"""The chunk interpolation (PCHIP Hermite, underrun) and the motion limiter's guarantees."""
from hypothesis import given, HealthCheck, settings
from hypothesis import strategies as st
import numpy as np
import pytest

from vla_insertion.core.executor.interpolation import ChunkTrajectory, pchip_slopes
from vla_insertion.core.executor.limiter import jerk_taps, MotionLimiter, stopping_speed

T = 0.01
DT = 0.1


def _chunk(points, stamp=0.0, accel=4.0):
    points = np.asarray(points, dtype=np.float64)
    if points.ndim == 1:
        points = points[:, None]
    return ChunkTrajectory(stamp, points, DT, np.full(points.shape[1], accel))


def _walk(traj, t0, t1, step=1e-3):
    times = np.arange(t0, t1, step)
    pos, vel = zip(*(traj.sample(t) for t in times))
    return times, np.array(pos), np.array(vel)


# --- interpolation ------------------------------------------------------------------------

def test_curve_passes_through_every_action_at_its_time():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(8, 7))
    traj = ChunkTrajectory(2.0, points, DT, np.full(7, 4.0))
    for k in range(8):
        np.testing.assert_allclose(traj.sample(2.0 + k * DT)[0], points[k], atol=1e-12)
    assert traj.index(2.25) == pytest.approx(2.5)
    assert traj.end_s == pytest.approx(2.7)


def test_position_and_velocity_are_continuous_and_velocity_is_the_derivative():
    traj = _chunk([0.0, 0.1, 0.15, 0.1, 0.3, 0.31, 0.31, 0.0])
    eps = 1e-8
    for k in range(-1, 9):                      # every action point, the start and the end
        t = k * DT if k >= 0 else 0.0
        before, after = traj.sample(t - eps), traj.sample(t + eps)
        assert abs(after[0][0] - before[0][0]) < 1e-6
        assert abs(after[1][0] - before[1][0]) < 1e-5, k
    times, pos, vel = _walk(traj, -0.02, 1.2, step=2e-4)
    step = times[1] - times[0]
    numeric = np.gradient(pos[:, 0], step)
    np.testing.assert_allclose(vel[1:-1, 0], numeric[1:-1], atol=0.02)


def test_monotone_interpolation_never_overshoots_the_actions():
    points = np.array([0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0])  # steps: a spline would ring
    traj = _chunk(points)
    _, pos, _ = _walk(traj, 0.0, traj.end_s)
    assert pos.min() >= -1e-12 and pos.max() <= 1.0 + 1e-12
    slopes = pchip_slopes(points[:, None], DT)[:, 0]
    assert slopes[1] == 0.0 and slopes[3] == 0.0            # flat next to a plateau


def test_underrun_decelerates_at_the_limit_without_a_jump_and_holds():
    points = np.linspace(0.0, 0.7, 8)                         # 1 rad/s to the end
    traj = _chunk(points, accel=4.0)
    p_end, v_end = traj.sample(traj.end_s)
    assert v_end[0] == pytest.approx(1.0)
    p, v = traj.sample(traj.end_s + 1e-9)
    assert p[0] == pytest.approx(p_end[0]) and v[0] == pytest.approx(1.0)
    p, v = traj.sample(traj.end_s + 0.125)                    # halfway through the 0.25 s stop
    assert v[0] == pytest.approx(0.5)
    p_rest, v_rest = traj.sample(traj.end_s + 10.0)
    assert v_rest[0] == 0.0
    assert p_rest[0] == pytest.approx(0.7 + 1.0 ** 2 / (2 * 4.0))
    np.testing.assert_allclose(traj.rest_position, p_rest)


def test_single_action_chunk_holds_it():
    traj = _chunk([[0.3]])
    assert traj.sample(0.5)[0][0] == 0.3 and traj.sample(0.5)[1][0] == 0.0


# --- limiter ------------------------------------------------------------------------------

@given(st.floats(0.0, 5.0), st.floats(0.001, 1.0))
@settings(max_examples=200, deadline=None)
def test_stopping_speed_is_the_largest_speed_that_stops_within_the_budget(budget, step):
    v = float(stopping_speed(np.array([budget]), np.array([step]), T)[0])

    def distance(speed):
        k = np.arange(0, int(speed / step) + 2)
        return T * np.maximum(speed - k * step, 0.0).sum()

    assert distance(v) <= budget * (1 + 1e-9) + 1e-15
    assert distance(v * (1 + 1e-6) + 1e-9) > budget


def test_jerk_taps():
    assert jerk_taps(np.array([4.0, 20.0]), np.array([100.0, 500.0]), T) == 8
    assert jerk_taps(np.array([4.0]), np.array([np.inf]), T) == 1


def _limiter(lower=-1.0, upper=1.0, v=1.0, a=4.0, j=100.0, n=2):
    full = np.ones(n)
    return MotionLimiter(lower * full, upper * full, v * full, a * full, j * full, T)


def _check_stream(positions, lim, tol=1e-9):
    p = np.asarray(positions)
    vel = np.diff(p, axis=0) / T
    acc = np.diff(vel, axis=0) / T
    jerk = np.diff(acc, axis=0) / T
    assert (p >= lim.lower - tol).all() and (p <= lim.upper + tol).all()
    assert (np.abs(vel) <= lim.v_max * (1 + tol) + tol).all(), np.abs(vel).max()
    assert (np.abs(acc) <= lim.a_max * (1 + 1e-7) + 1e-7).all(), np.abs(acc).max()
    assert (np.abs(jerk) <= lim.j_max * (1 + 1e-6) + 1e-5).all(), np.abs(jerk).max()


def test_a_step_is_approached_within_limits_and_without_overshoot():
    lim = _limiter()
    lim.reset(np.zeros(2))
    out = [lim.position]
    for _ in range(200):
        out.append(lim.step(np.array([0.5, -0.2])).position)
    out = np.array(out)
    _check_stream(out, lim)
    np.testing.assert_allclose(out[-1], [0.5, -0.2], atol=1e-9)
    assert out[:, 0].max() <= 0.5 + 1e-9 and out[:, 1].min() >= -0.2 - 1e-9


def test_a_feasible_ramp_is_followed_exactly_after_the_filter_delay():
    lim = _limiter(n=1)
    lim.reset(np.zeros(1))
    speed = 0.3
    out = []
    for n in range(1, 150):
        # sample the reference the filter delay ahead, as the executor does
        t = n * T + lim.delay_s
        out.append(lim.step(np.array([speed * t]), np.array([speed])).position[0])
    late = np.array(out[60:])
    expected = speed * np.arange(61, 150) * T
    np.testing.assert_allclose(late, expected, atol=1e-9)


def test_brake_stops_inside_the_limits():
    lim = _limiter(n=1)
    lim.reset(np.zeros(1))
    for _ in range(40):                                   # run up to speed towards the limit
        lim.step(np.array([5.0]))
    out = [lim.position]
    for _ in range(100):
        out.append(lim.step(None).position)
    assert lim.at_rest
    _check_stream(out, lim)


@given(st.lists(st.tuples(st.floats(-3, 3), st.floats(-50, 50), st.floats(0.0, 1.0),
                          st.booleans()), min_size=5, max_size=60),
       st.floats(-0.99, 0.99))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_target_sequence_gives_a_stream_within_every_limit(targets, start):
    lim = _limiter(n=1)
    lim.reset(np.array([start]))
    out = [lim.position]
    for target, velocity, scale, brake in targets:
        for _ in range(4):
            result = None if brake else np.array([target])
            out.append(lim.step(result, np.array([velocity]), scale).position)
    _check_stream(out, lim)


def test_speed_scale_slows_but_never_demands_an_impossible_deceleration():
    lim = _limiter(n=1)
    lim.reset(np.array([-0.9]))
    out = [lim.position]
    for _ in range(60):
        out.append(lim.step(np.array([0.9])).position)
    for _ in range(60):
        out.append(lim.step(np.array([0.9]), speed_scale=0.1).position)
    _check_stream(out, lim)
    assert abs(out[-1][0] - out[-2][0]) / T <= 0.1 + 1e-9
