"""The force-guided demonstrator: it feels the block top and a wedge, and recovers from both.

Each episode starts with a misled demonstrator (it believes the hole a few millimetres off, as
a learned policy with a wrong estimate would) that presses the peg onto the block top beside
the hole, or wedges it in the rim; then the real demonstrator takes over from that state. It
must find the hole by its search, or lift the peg out of the wedge, and insert without
reaching the executor's force limit.
"""
import numpy as np
import pytest

from vla_insertion.core.config import ExecutorConfig
from vla_insertion.core.data import SensorWindowData
from vla_insertion.core.executor import ChunkExecutor
from vla_insertion.core.sim.cell import SimCell
from vla_insertion.core.sim.contact import JAMMED, SURFACE
from vla_insertion.core.sim.loop import PipelineLoop
from vla_insertion.core.sim.reference import (
    felt_force, INSERT, LIFT, reference_observation, ReferenceObservation, ReferenceParams,
    ReferencePolicy, SEARCH)


class Handover:
    """A demonstrator told a wrong hole until `taken(cell)`, then the real one, unaware."""

    def __init__(self, cell: SimCell, shift_m: np.ndarray, taken) -> None:
        self.cell, self.shift, self.taken = cell, np.r_[shift_m, 0.0], taken
        # it centres on its wrong hole precisely, so that it enters as far off as it is misled
        self.misled = ReferencePolicy(ReferenceParams(align_m=0.0002))
        self.real = ReferencePolicy()
        self.handed_over_at: float | None = None
        self.phases: list[str] = []

    def reset(self) -> None:
        self.misled.reset()
        self.real.reset()

    def infer(self, obs: ReferenceObservation):
        if self.handed_over_at is None and self.taken(self.cell):
            self.handed_over_at = obs.robot.stamp_s
        if self.handed_over_at is None:
            return self.misled.infer(ReferenceObservation(
                obs.robot, obs.hole_top_m + self.shift, np.zeros(2), obs.window))
        chunk = self.real.infer(obs)
        self.phases.append(self.real.phase)
        return chunk


def run(shift_m, taken, seed: int = 3):
    cell = SimCell(seed=seed)
    policy = Handover(cell, np.asarray(shift_m), taken)
    config = ExecutorConfig(start_armed=True)
    loop = PipelineLoop(cell, ChunkExecutor(config), reference=policy, seed=seed)
    return loop.run_episode().record, policy, config


def pressed_on_the_block(cell: SimCell) -> bool:
    state = cell.state()
    return state.contact == SURFACE and state.force_n[2] > 5.0


def wedged(cell: SimCell) -> bool:
    state = cell.state()
    return state.contact == JAMMED and state.force_n[2] > 2.0


@pytest.mark.slow
@pytest.mark.parametrize('shift_m', [(0.0025, 0.0), (-0.0015, 0.002)])
def test_on_the_block_top_beside_the_hole_it_searches_and_finds_the_hole(shift_m):
    record, policy, config = run(shift_m, pressed_on_the_block)
    assert policy.handed_over_at is not None, 'the misled demonstrator never touched the block'
    assert policy.phases[0] == SEARCH                 # it felt the block: lift off, hover over
    assert SEARCH in policy.phases and INSERT in policy.phases
    assert record.success, record
    assert record.peak_force_n < config.force_hard_n  # never near the fault


@pytest.mark.slow
@pytest.mark.parametrize('shift_m', [(0.0013, 0.0), (0.0, -0.0014)])
def test_a_wedged_peg_is_lifted_out_and_inserted(shift_m):
    record, policy, config = run(shift_m, wedged)
    assert policy.handed_over_at is not None, 'the misled demonstrator never wedged the peg'
    assert policy.phases[0] == LIFT
    assert record.success, record
    assert record.peak_force_n < config.force_hard_n


def window_pressing(fz: float, stamp_s: float = 0.0) -> SensorWindowData:
    samples = np.zeros((65, 7), np.float32)
    samples[:, 2] = fz
    samples[:, 6] = 0.0
    return SensorWindowData(stamp_s=stamp_s, samples=samples, valid_samples=65,
                            sample_rate_hz=650.0,
                            channel_names=('fx', 'fy', 'fz', 'tx', 'ty', 'tz', 'distance'))


def test_the_same_observation_gives_the_same_chunk():
    cell = SimCell(seed=0)
    hole = cell.spec.hole_top_m
    for fz in (0.0, 6.0, 20.0):
        obs = reference_observation(cell, window_pressing(fz))
        first, other = ReferencePolicy(), ReferencePolicy()
        a = first.infer(obs)
        first.infer(reference_observation(cell, window_pressing(30.0 - fz)))  # in between
        np.testing.assert_array_equal(a.actions, first.infer(obs).actions)
        np.testing.assert_array_equal(a.actions, other.infer(obs).actions)
    # the force decides: on the block top beside the hole, pressed -> straight up; hovering
    # with nothing felt -> over the hole
    policy = ReferencePolicy()
    tip = hole + np.array([0.0025, 0.0, 0.0005])
    phase, goal = policy.goal(tip, hole, np.zeros(2), np.array([0.0, 0.0, 6.0]))
    assert phase == SEARCH
    np.testing.assert_allclose(goal[:2], tip[:2])
    phase, goal = policy.goal(tip, hole, np.zeros(2), np.zeros(3))
    assert phase == SEARCH
    np.testing.assert_allclose(goal[:2], hole[:2])
    # in the hole, 2 mm deep on the axis: pushing up hard is a wedge, a little is friction
    tip = hole + np.array([0.0002, 0.0, -0.002])
    assert policy.goal(tip, hole, np.zeros(2), np.array([0.0, 0.0, 15.0]))[0] == LIFT
    assert policy.goal(tip, hole, np.zeros(2), np.array([0.0, 0.0, 3.0]))[0] == INSERT


def test_the_felt_force_is_the_mean_of_the_newest_valid_samples():
    window = window_pressing(1.0)
    window.samples[-10:, 2] = 11.0
    np.testing.assert_allclose(felt_force(window, 10), [0.0, 0.0, 11.0])
    np.testing.assert_allclose(felt_force(window, 20), [0.0, 0.0, 6.0])
    assert not felt_force(None, 10).any()
    nan_rows = window_pressing(4.0)
    nan_rows.samples[-3:] = np.nan
    np.testing.assert_allclose(felt_force(nan_rows, 10), [0.0, 0.0, 4.0])
