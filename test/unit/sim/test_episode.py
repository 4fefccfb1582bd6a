"""Episodes: seeded hole positions, each outcome, the reset to the next episode."""
import math

import numpy as np
import pytest

from vla_insertion.core.config import ConfigError
from vla_insertion.core.sim.cell import CellParams, RUNNING, SETTLING, SimCell
from vla_insertion.core.sim.episode import (
    DROPPED, episode_spec, EpisodeJudge, EpisodeParams, OVER_FORCE, SUCCESS, TIMEOUT)
from vla_insertion.core.sim.geometry import BLOCK_SIZE_M, HOLE_CENTRE_M, INSERT_DEPTH_M
from vla_insertion.core.sim.kinematics import HOME_RAD, solve_ik
from vla_insertion.core.sim.servo import ServoCommand


def test_hole_positions_are_seeded_reproducible_and_in_range():
    params = EpisodeParams()
    specs = [episode_spec(7, i, params) for i in range(50)]
    again = [episode_spec(7, i, params) for i in range(50)]
    for a, b in zip(specs, again):
        np.testing.assert_array_equal(a.hole_top_m, b.hole_top_m)
        np.testing.assert_array_equal(a.approach_offset_m, b.approach_offset_m)
    holes = np.array([s.hole_top_m for s in specs])
    offsets = np.array([s.approach_offset_m for s in specs])
    assert len({tuple(h) for h in holes}) == 50                     # every episode its own
    assert (np.abs(holes[:, :2] - HOLE_CENTRE_M) <= params.hole_range_m).all()
    assert (holes[:, 2] == BLOCK_SIZE_M[2]).all()
    assert (np.abs(offsets) <= params.approach_offset_m).all()
    assert np.abs(holes[:, :2] - HOLE_CENTRE_M).max() > 0.8 * params.hole_range_m
    other_seed = episode_spec(8, 0, params)
    assert not np.allclose(other_seed.hole_top_m, specs[0].hole_top_m)


@pytest.mark.parametrize('steps,reason', [
    ([(0.0, 0.0, 1.0), (60.0, 0.002, 1.0)], OVER_FORCE),
    ([(5.0, 0.01, 1.0), (9.0, INSERT_DEPTH_M - 0.0005, 1.0)], SUCCESS),
    ([(0.0, 0.0, 1.0), (0.0, 0.0, 0.4)], DROPPED),
])
def test_the_judge_decides_each_outcome(steps, reason):
    spec = episode_spec(0, 3)
    judge = EpisodeJudge(spec, EpisodeParams(max_contact_force_n=50.0), start_s=10.0)
    record = None
    for k, (force, depth, gripper) in enumerate(steps):
        record = judge.update(10.0 + 0.5 * (k + 1), force, depth, gripper)
        if k < len(steps) - 1:
            assert record is None
    assert record is not None and record.reason == reason
    assert record.success == (reason == SUCCESS) and record.index == 3 and record.seed == 0
    assert record.duration_s == pytest.approx(0.5 * len(steps))
    assert record.peak_force_n == max(f for f, _, _ in steps)
    assert record.max_depth_m == max(d for _, d, _ in steps)
    if reason == SUCCESS:
        assert record.time_to_insert_s == pytest.approx(1.0)
        assert record.mean_force_n == pytest.approx(7.0)             # over the contact steps
    else:
        assert math.isnan(record.time_to_insert_s)
        assert record.as_dict()['time_to_insert_s'] is None


@pytest.mark.slow
def test_an_idle_episode_times_out_and_the_next_one_starts_at_home():
    params = CellParams(episode=EpisodeParams(timeout_s=1.0, settle_s=0.2))
    cell = SimCell(params, seed=4)
    first = cell.spec
    assert [e[0] for e in cell.events] == ['start']
    cell.advance_to(0.999)
    assert not cell.records and cell.phase == RUNNING
    decided = cell.advance_to(1.0)
    assert [r.reason for r in decided] == [TIMEOUT] and not decided[0].success
    assert decided[0].duration_s == pytest.approx(1.0)
    assert cell.phase == SETTLING
    cell.advance_to(1.25)
    assert cell.spec.index == 1 and cell.phase == RUNNING
    assert not np.allclose(cell.spec.hole_top_m, first.hole_top_m)
    np.testing.assert_allclose(cell.state().joints_rad, HOME_RAD)
    assert [e[0] for e in cell.events] == ['start', 'end', 'start']
    np.testing.assert_array_equal(episode_spec(4, 1, params.episode).hole_top_m,
                                  cell.spec.hole_top_m)


@pytest.mark.slow
def test_pushing_into_the_block_fails_the_episode_as_over_force():
    cell = SimCell(CellParams(episode=EpisodeParams(settle_s=0.5)), seed=0)
    hole = cell.spec.hole_top_m
    above = hole + [0.02, 0.01, 0.02]
    down = above + np.linspace(0.0, 1.0, 101)[:, None] * np.array([0.0, 0.0, -0.03])
    q_above = solve_ik(above[None], cell.state().joints_rad)[0]
    q_down = solve_ik(down, q_above)                                 # ends 1 cm into the top
    record = None
    for k in range(5000):
        if k % 10 == 0:
            q = q_above if k < 2000 else q_down[min((k - 2000) // 10, 100)]
            cell.command(ServoCommand(q, np.zeros(6), lead_s=0.01, timeout_s=0.2), cell.t_s)
        record = cell.step() or record
        if record:
            break
    assert record is not None and record.reason == OVER_FORCE and not record.success
    assert record.peak_force_n > 50.0 and record.max_depth_m == 0.0
    # settling: commands are ignored and the arm holds until the next episode
    held = cell.state().joints_rad.copy()
    cell.command(ServoCommand(q_above, np.zeros(6), timeout_s=0.2), cell.t_s)
    cell.advance_to(cell.t_s + 0.3)
    assert cell.phase == SETTLING
    np.testing.assert_allclose(cell.state().joints_rad, held, atol=2e-3)


@pytest.mark.parametrize('changes', [{'timeout_s': 0.0}, {'max_contact_force_n': -1.0},
                                     {'insert_tolerance_m': 0.03}, {'settle_s': -0.1},
                                     {'hole_range_m': 0.5}, {'approach_offset_m': 0.01}])
def test_episode_params_are_validated(changes):
    with pytest.raises(ConfigError):
        EpisodeParams(**changes)
