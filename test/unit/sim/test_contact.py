"""Peg-on-block contact: free air, friction with depth, jamming, and no way through the block."""
import math

import numpy as np
import pytest

from vla_insertion.core.sim.cell import SimCell
from vla_insertion.core.sim.contact import (
    ContactModel, ContactParams, FREE, INSIDE, JAMMED, SIDE, SURFACE)
from vla_insertion.core.sim.geometry import (
    BLOCK_SIZE_M, CLEARANCE_M, HOLE_DEPTH_M, HOLE_RADIUS_M)
from vla_insertion.core.sim.kinematics import DOWN, forward_kinematics, solve_ik
from vla_insertion.core.sim.servo import ServoCommand

HOLE = np.array([-0.42, -0.27, 0.05])
DOWN_AXIS = np.array([0.0, 0.0, -1.0])
DT = 0.001
PARAMS = ContactParams()


def tilted(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([math.sin(a), 0.0, -math.cos(a)])


def descend(model, start_xy, z_from, z_to, axis=DOWN_AXIS, speed=0.01, lateral_to=None):
    """Move the free tip from z_from to z_to at `speed` [m/s]; the results of every step."""
    n = int(abs(z_from - z_to) / speed / DT)
    lateral_to = start_xy if lateral_to is None else lateral_to
    results = []
    for k in range(n + 1):
        s = k / n
        xy = (1 - s) * np.asarray(start_xy) + s * np.asarray(lateral_to)
        results.append(model.update(np.r_[xy, z_from + s * (z_to - z_from)], axis, DT))
    return results


def test_free_air_has_no_force_and_the_laser_sees_the_hole_bottom():
    model = ContactModel(HOLE)
    result = model.update(HOLE + [0.0, 0.0, 0.1], DOWN_AXIS, DT)
    assert result.mode == FREE and result.depth_m == 0.0
    np.testing.assert_array_equal(result.force_n, 0.0)
    np.testing.assert_array_equal(result.torque_nm, 0.0)
    assert result.distance_m == pytest.approx(0.1 + HOLE_DEPTH_M)
    beside = model.update(HOLE + [0.03, 0.0, 0.1], DOWN_AXIS, DT)
    assert beside.distance_m == pytest.approx(0.1)                  # block top under the tip


def test_the_insertion_force_grows_with_depth():
    model = ContactModel(HOLE)
    results = descend(model, HOLE[:2], HOLE[2] + 0.005, HOLE[2] - 0.025)
    inside = [r for r in results if r.mode == INSIDE]
    assert len(inside) > 0.8 * len(results) and results[0].mode == FREE
    depth = np.array([r.depth_m for r in inside])
    fz = np.array([r.force_n[2] for r in inside])
    assert depth[-1] == pytest.approx(0.025, abs=1e-4)
    assert (fz > 0).all()                                            # pushes back, upward
    assert fz[-1] > fz[len(fz) // 4] > fz[5]                         # more with depth
    expected = PARAMS.friction_base_n + PARAMS.friction_per_m * 0.025
    assert fz[-1] == pytest.approx(expected, rel=0.1)
    assert inside[-1].distance_m == pytest.approx(HOLE_DEPTH_M - 0.025, abs=1e-6)


def test_a_misaligned_peg_is_pushed_by_the_wall():
    model = ContactModel(HOLE)
    offset = np.array([0.0009, 0.0])                                 # inside the jam limit
    results = descend(model, HOLE[:2] + offset, HOLE[2] + 0.002, HOLE[2] - 0.01)
    last = results[-1]
    assert last.mode == INSIDE
    assert last.tip_m[0] - HOLE[0] == pytest.approx(CLEARANCE_M)    # held at the wall
    assert last.force_n[0] == pytest.approx(
        -PARAMS.lateral_stiffness_n_m * (offset[0] - CLEARANCE_M), rel=1e-6)
    assert last.torque_nm[1] != 0.0                                  # about the flange


@pytest.mark.parametrize('offset,tilt', [(0.0013, 0.0), (0.0, 3.0)])
def test_a_bad_approach_jams_and_the_force_rises_steeply(offset, tilt):
    model = ContactModel(HOLE)
    push = HOLE[2] - 0.006                                           # servo aims 6 mm deep
    results = descend(model, HOLE[:2] + [offset, 0.0], HOLE[2] + 0.002, push, tilted(tilt))
    assert results[-1].mode == JAMMED
    assert model.entry_lateral_m == pytest.approx(offset, abs=1e-5)
    assert model.entry_tilt_deg == pytest.approx(tilt, abs=1e-6)
    depth = max(r.depth_m for r in results)
    assert depth <= PARAMS.jam_depth_m + 1e-9                        # stops going deeper
    clean = ContactModel(HOLE)
    good = descend(clean, HOLE[:2], HOLE[2] + 0.002, push)[-1]
    assert good.mode == INSIDE and good.depth_m == pytest.approx(0.006, abs=1e-6)
    jam_force = results[-1].force_n[2]
    assert jam_force > 10 * good.force_n[2]                          # steep
    assert jam_force == pytest.approx(PARAMS.jam_stiffness_n_m * (0.006 - PARAMS.jam_depth_m),
                                      rel=0.05)


def test_tilting_in_the_hole_wedges_the_peg_and_pulling_out_frees_it():
    model = ContactModel(HOLE)
    descend(model, HOLE[:2], HOLE[2] + 0.002, HOLE[2] - 0.01)
    assert model.mode == INSIDE
    wedged = model.update(HOLE - [0.0, 0.0, 0.012], tilted(3.0), DT)
    assert wedged.mode == JAMMED
    assert wedged.depth_m == pytest.approx(0.01, abs=1e-4)           # stuck where it was
    out = model.update(HOLE + [0.0, 0.0, 0.001], DOWN_AXIS, DT)
    assert out.mode == FREE
    again = descend(model, HOLE[:2], HOLE[2] + 0.001, HOLE[2] - 0.01)[-1]
    assert again.mode == INSIDE and again.depth_m == pytest.approx(0.01, abs=1e-6)


def test_the_tip_cannot_pass_through_the_block_or_the_hole_bottom():
    model = ContactModel(HOLE)
    beside = HOLE[:2] + [0.02, 0.01]
    results = descend(model, beside, HOLE[2] + 0.003, HOLE[2] - 0.005, speed=0.005)
    last = results[-1]
    assert last.mode == SURFACE and min(r.tip_m[2] for r in results) == HOLE[2]
    assert last.force_n[2] == pytest.approx(PARAMS.axial_stiffness_n_m * 0.005)
    # sliding while pressed on the top: friction opposes the motion
    slide = model.update(np.r_[beside + [0.0005, 0.0], HOLE[2] - 0.005], DOWN_AXIS, DT)
    assert slide.force_n[0] < 0.0
    bottom = ContactModel(HOLE)
    deep = descend(bottom, HOLE[:2], HOLE[2] + 0.002, HOLE[2] - HOLE_DEPTH_M - 0.002)[-1]
    assert deep.tip_m[2] == pytest.approx(HOLE[2] - HOLE_DEPTH_M)
    assert deep.force_n[2] > PARAMS.axial_stiffness_n_m * 0.002 - 1.0


def test_the_side_faces_stop_a_tip_coming_in_below_the_top():
    model = ContactModel(HOLE)
    face = HOLE[0] + BLOCK_SIZE_M[0] / 2
    model.update(np.array([face + 0.01, HOLE[1], HOLE[2] - 0.01]), DOWN_AXIS, DT)
    results = [model.update(np.array([face + 0.01 - 0.0001 * k, HOLE[1], HOLE[2] - 0.01]),
                            DOWN_AXIS, DT) for k in range(150)]
    assert results[-1].mode == SIDE
    assert min(r.tip_m[0] for r in results) == pytest.approx(face)
    assert results[-1].force_n[0] == pytest.approx(PARAMS.lateral_stiffness_n_m * 0.0049,
                                                   rel=0.01)
    up = model.update(np.array([face - 0.005, HOLE[1], HOLE[2] + 0.001]), DOWN_AXIS, DT)
    assert up.mode == FREE                                           # over the top: free


def _inside_block(tip, hole) -> bool:
    """Return True if the tip is in the block's material (not in free air, not in the hole)."""
    rel = tip - hole
    in_hole = np.hypot(rel[0], rel[1]) <= HOLE_RADIUS_M and rel[2] >= -HOLE_DEPTH_M
    return bool(np.all(np.abs(rel[:2]) < np.array(BLOCK_SIZE_M[:2]) / 2 - 1e-9)
                and -BLOCK_SIZE_M[2] < rel[2] < -1e-9 and not in_hole)


def test_the_arm_is_held_on_the_block_top_through_the_joints():
    cell = SimCell(seed=0)
    hole = cell.spec.hole_top_m
    # to 2 cm above a point beside the hole, then straight down to 1 mm into the block top
    above = hole + [0.025, 0.0, 0.02]
    down = above + np.linspace(0.0, 1.0, 151)[:, None] * np.array([0.0, 0.0, -0.021])
    q_above = solve_ik(above[None], cell.state().joints_rad)[0]
    q_down = solve_ik(down, q_above)                                 # (151, 6), 10 ms apart
    modes = set()
    for k in range(4000):
        if k % 10 == 0:
            q = q_above if k < 2000 else q_down[min((k - 2000) // 10, 150)]
            cell.command(ServoCommand(q, np.zeros(6), lead_s=0.01, timeout_s=0.2), cell.t_s)
        cell.step()
        state = cell.state()
        modes.add(state.contact)
        assert not _inside_block(state.tip_m, hole), (k, state.tip_m - hole, state.contact)
    assert modes == {FREE, SURFACE} and state.contact == SURFACE
    assert state.tip_m[2] == pytest.approx(hole[2])
    assert state.force_n[2] == pytest.approx(20.0, rel=0.05)         # 1 mm at 20 N/mm
    frames = forward_kinematics(state.joints_rad)                   # measured joints agree
    np.testing.assert_allclose(frames[7, :3, 3], state.tip_m, atol=2e-6)
    np.testing.assert_allclose(frames[7, :3, :3], DOWN, atol=1e-6)
    assert not cell.records                                          # 20 N < the 50 N limit
