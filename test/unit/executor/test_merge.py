"""Merge strategies on synthetic chunk streams with known answers; timing and delay statistics."""
import math

import numpy as np
import pytest

from vla_insertion.core.config import ExecutorConfig
from vla_insertion.core.data import ActionChunkData, RobotState
from vla_insertion.core.executor import ChunkExecutor
from vla_insertion.core.executor.interpolation import ChunkTrajectory
from vla_insertion.core.executor.merge import (
    align_prefix, committed_steps, Merger, smoothstep5)

DT = 0.1
ACCEL = np.full(7, 4.0)


def _traj(values, stamp, seq=0):
    """Make a chunk of 8 actions from a constant, an (8,) ramp or an (8, 7) array."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 0:
        values = np.full((8, 7), float(values))
    elif values.ndim == 1:
        values = np.repeat(values[:, None], 7, axis=1)
    return ChunkTrajectory(stamp, values, DT, ACCEL, seq)


# --- the strategies on their own ----------------------------------------------------------

def test_latest_switches_to_the_newest_chunk_at_once():
    m = Merger('latest')
    assert m.sample(0.0) is None
    assert m.add(_traj(0.1, 0.0, seq=1), 0.05).mode == 'first'
    assert m.sample(0.2).position[0] == pytest.approx(0.1)
    assert m.add(_traj(0.3, 0.1, seq=2), 0.15).mode == 'latest'
    s = m.sample(0.15)
    assert s.position[0] == pytest.approx(0.3) and s.sequence == 2
    assert s.index == pytest.approx(0.5)


@pytest.mark.parametrize('k', [0.0, 0.01, 0.5, -0.5])
def test_temporal_ensemble_weights_the_oldest_chunk_most_for_positive_k(k):
    m = Merger('temporal_ensemble', ensemble_k=k)
    m.add(_traj(1.0, 0.0, seq=1), 0.05)
    m.add(_traj(2.0, 0.2, seq=2), 0.25)
    m.add(_traj(4.0, 0.4, seq=3), 0.45)
    w = np.exp(-k * np.arange(3))
    expected = (1.0 * w[0] + 2.0 * w[1] + 4.0 * w[2]) / w.sum()
    s = m.sample(0.5)                                   # all three cover t = 0.5
    assert s.position[3] == pytest.approx(expected)
    assert s.sequence == 3 and not s.underrun
    # the first chunk's last action is at 0.7: after it only two remain
    w2 = np.exp(-k * np.arange(2))
    assert m.sample(0.8).position[0] == pytest.approx((2.0 * w2[0] + 4.0 * w2[1]) / w2.sum())
    m.settle(0.8)
    assert [c.sequence for c in m.plan.chunks] == [2, 3]
    # past every chunk: the newest chunk's underrun (here at rest at its value)
    s = m.sample(2.0)
    assert s.underrun and s.position[0] == pytest.approx(4.0) and s.velocity[0] == 0.0


def test_temporal_ensemble_averages_velocities_too():
    m = Merger('temporal_ensemble', ensemble_k=0.0)
    m.add(_traj(np.linspace(0, 0.7, 8), 0.0), 0.0)        # 1 rad/s
    m.add(_traj(np.linspace(0, 2.1, 8) - 0.3, 0.1), 0.1)  # 3 rad/s
    s = m.sample(0.35)
    assert s.velocity[0] == pytest.approx(2.0)
    assert s.position[0] == pytest.approx((0.35 + (0.25 * 3.0 - 0.3)) / 2)


def test_blend_from_the_old_plan_into_the_new_chunk():
    m = Merger('blend', blend_s=0.2)
    m.add(_traj(np.linspace(0.0, 0.7, 8), 0.0, seq=1), 0.0)        # 1 rad/s
    assert m.add(_traj(0.5, 0.2, seq=2), 0.3).mode == 'blend'
    start = m.sample(0.3)
    assert start.position[0] == pytest.approx(0.3) and start.velocity[0] == pytest.approx(1.0)
    assert m.sample(0.4).position[0] == pytest.approx(0.5 * 0.4 + 0.5 * 0.5)   # w(0.5) = 0.5
    end = m.sample(0.5)
    assert end.position[0] == pytest.approx(0.5) and end.velocity[0] == pytest.approx(0.0)
    assert m.sample(0.29).sequence == 1 and m.sample(0.3).sequence == 2


def test_blend_after_a_hold_starts_at_the_commanded_state_and_ends_on_the_new_chunk():
    m = Merger('blend', blend_s=0.2)
    m.add(_traj(0.0, 0.0), 0.0)
    p0, v0 = np.full(7, 0.1), np.full(7, 1.0)
    assert m.add(_traj(0.5, 0.9, seq=2), 1.0, (p0, v0)).mode == 'restart'
    start = m.sample(1.0)
    np.testing.assert_allclose(start.position, p0)
    np.testing.assert_allclose(start.velocity, v0)                     # no velocity step
    mid = m.sample(1.1)                                                 # w(0.5) = 0.5
    assert mid.position[0] == pytest.approx(0.5 * (0.1 + 1.0 * 0.1) + 0.5 * 0.5)
    end = m.sample(1.2)
    assert end.position[0] == pytest.approx(0.5) and end.velocity[0] == pytest.approx(0.0)
    # velocity is the derivative of position through the blend
    eps = 1e-6
    for t in np.linspace(1.0, 1.2, 9):
        numeric = (m.sample(t + eps).position[0] - m.sample(t - eps).position[0]) / (2 * eps)
        assert m.sample(t).velocity[0] == pytest.approx(numeric, abs=1e-5)
    m.settle(1.25)
    assert m.plan.__class__.__name__ == 'ChunkPlan'


def test_smoothstep_is_flat_at_both_ends():
    assert smoothstep5(0.0) == (0.0, 0.0) and smoothstep5(1.0) == (1.0, 0.0)
    assert smoothstep5(0.5)[0] == pytest.approx(0.5)


def test_prefix_keeps_the_committed_actions_then_switches():
    m = Merger('prefix', blend_s=0.1, prefix_tolerance=0.01)
    old = np.linspace(0.0, 0.7, 8)                                     # 1 rad/s
    m.add(_traj(old, 0.0, seq=1), 0.0)
    # A chunk from the observation at 0.2 that continues the plan for 3 actions
    # (0.2, 0.3, 0.4), then turns back.
    new = np.array([0.2, 0.3, 0.4, 0.3, 0.2, 0.1, 0.0, 0.0])
    arrival = m.add(_traj(new, 0.2, seq=2), 0.25)
    assert arrival.mode == 'prefix' and arrival.matched_actions == 3
    assert arrival.switch_s == pytest.approx(0.4)
    for t in (0.25, 0.3, 0.35, 0.399):                                # the committed part
        s = m.sample(t)
        assert s.position[0] == pytest.approx(t) and s.sequence == 1
    assert m.sample(0.4).sequence == 2
    assert m.sample(0.55).position[0] == pytest.approx(_traj(new, 0.2).sample(0.55)[0][0])
    m.settle(0.41)
    assert m.plan.__class__.__name__ == 'BlendPlan'


def test_prefix_falls_back_to_a_blend_for_a_chunk_made_without_the_prefix():
    m = Merger('prefix', blend_s=0.1)
    m.add(_traj(np.linspace(0.0, 0.7, 8), 0.0, seq=1), 0.0)
    arrival = m.add(_traj(0.9, 0.2, seq=2), 0.26)
    assert arrival.mode == 'fallback' and arrival.matched_actions == 0
    assert arrival.switch_s == 0.26
    np.testing.assert_allclose(m.sample(0.26).position, 0.26)
    assert m.sample(0.26).velocity[0] == pytest.approx(1.0)
    assert m.sample(0.36).position[0] == pytest.approx(0.9)


@pytest.mark.parametrize('delays, ahead, expected', [
    ([], 0.0, 1), ([], 0.055, 2), ([0.05] * 10, 0.0, 2), ([0.1] * 10, 0.0, 2),
    ([0.25] * 10, 0.0, 4), ([0.25] * 10, 0.055, 5), ([0.05] * 8 + [0.35, 0.35], 0.0, 5),
    ([5.0], 0.0, 7)])
def test_committed_steps_cover_the_delay_quantile_and_the_lookahead(delays, ahead, expected):
    assert committed_steps(np.array(delays), 0.9, DT, 8, ahead) == expected


def test_align_prefix_resamples_to_the_experts_tick():
    published = 0.5 * (2.0 + DT * np.arange(4))[:, None] * np.ones(7)   # 0.5 rad/s from 2.0 s
    aligned = align_prefix(2.0, published, DT, 2.004)
    assert aligned.shape == (4, 7) and aligned.dtype == np.float32
    np.testing.assert_allclose(aligned[:, 0], 0.5 * (2.004 + DT * np.arange(4)), atol=1e-6)
    assert align_prefix(2.0, published, DT, 2.15).shape == (3, 7)        # one action has run
    np.testing.assert_allclose(align_prefix(2.0, published, DT, 2.0), published, atol=1e-6)
    assert align_prefix(2.0, published, DT, 2.5) is None
    assert align_prefix(2.0, published[:1], DT, 2.05).shape == (1, 7)
    bad = published.copy()
    bad[1, 2] = np.nan
    assert align_prefix(2.0, bad, DT, 2.0) is None


# --- through the executor -----------------------------------------------------------------

class Cell:
    """An executor driven at 100 Hz by a robot that follows its commands exactly."""

    def __init__(self, **overrides):
        self.config = ExecutorConfig(require_sensor=False, **overrides)
        self.ex = ChunkExecutor(self.config)
        self.t = 0.0
        self.q = np.zeros(6)
        self._robot()
        assert self.ex.arm(self.t)[0]
        self.commands = []

    def _robot(self):
        self.ex.on_robot_state(RobotState(self.t, self.q.copy(), np.zeros(3),
                                          np.array([0.0, 0.0, 0.0, 1.0])))

    def chunk(self, stamp, values, delay, seq=0):
        values = np.asarray(values, dtype=np.float32)
        if values.ndim == 0:
            values = np.full((8, 7), values, dtype=np.float32)
        elif values.ndim == 1:
            values = np.repeat(values[:, None], 7, axis=1)
        return self.ex.on_chunk(ActionChunkData(stamp, values, DT, sequence=seq), stamp + delay)

    def run(self, seconds):
        for _ in range(int(round(seconds * self.config.control_rate_hz))):
            self.t = round(self.t + self.config.period_s, 9)
            cmd = self.ex.step(self.t)
            self.commands.append(cmd)
            self.q = cmd.positions.copy()
            self._robot()
        return self.commands[-1]


def test_latest_stream_settles_on_the_newest_constant():
    cell = Cell(merge='latest')
    cell.chunk(0.0, 0.05, 0.0, seq=1)
    cell.run(0.1)
    cell.chunk(0.1, 0.1, 0.0, seq=2)
    cmd = cell.run(0.4)
    np.testing.assert_allclose(cmd.positions, 0.1, atol=1e-9)
    assert cmd.chunk_sequence == 2 and cmd.state == 'tracking'


def test_ensemble_stream_settles_on_the_weighted_mean():
    k = 0.7
    cell = Cell(merge='temporal_ensemble', ensemble_k=k)
    cell.chunk(0.0, 0.0, 0.0, seq=1)
    cell.chunk(0.0001, 0.1, 0.0, seq=2)                 # both cover 0.0001 .. 0.7
    cmd = cell.run(0.6)
    expected = 0.1 * math.exp(-k) / (1 + math.exp(-k))
    np.testing.assert_allclose(cmd.positions, expected, atol=1e-9)


def test_commands_are_for_future_times_only():
    cell = Cell(merge='latest', actuator_lead_s=0.03)
    ramp = np.linspace(0.0, 0.07, 8)                    # 0.1 rad/s, feasible
    cell.chunk(0.0, ramp, 0.15, seq=1)                  # arrives late: actions 0, 1 have passed
    cell.t = 0.15
    cell.run(0.3)
    lead_and_filter = 0.03 + cell.ex.filter_delay_s
    for cmd in cell.commands:
        assert cmd.action_index == pytest.approx((cmd.stamp_s + lead_and_filter) / DT)
        assert cmd.action_index > cmd.stamp_s / DT     # never an action whose time passed
        assert cmd.target_time_s == pytest.approx(cmd.stamp_s + 0.03)
    # a feasible ramp is tracked exactly once the limiter has caught up
    late = cell.commands[-1]
    assert late.positions[0] == pytest.approx(0.1 * late.target_time_s, abs=1e-9)


def test_delay_of_every_chunk_is_recorded():
    cell = Cell()
    for i, (stamp, delay) in enumerate([(0.0, 0.05), (0.1, 0.07), (0.2, 0.06), (0.3, 0.2)]):
        cell.chunk(stamp, 0.0, delay, seq=i)
    cell.chunk(0.3, 0.0, 0.5, seq=9)                    # a duplicate stamp still has a delay
    stats = cell.ex.stats()
    assert stats['delay_s.n'] == 5
    assert stats['delay_s.last'] == pytest.approx(0.5)
    assert stats['delay_s.p50'] == pytest.approx(0.07)
    assert stats['delay_s.p99'] == pytest.approx(np.percentile([0.05, 0.07, 0.06, 0.2, 0.5], 99))
    assert stats['chunks.accepted'] == 4 and stats['chunks.rejected.duplicate'] == 1


def test_blend_stream_has_no_jump_where_latest_has_one():
    results = {}
    for merge in ('latest', 'blend'):
        cell = Cell(merge=merge, blend_s=0.1)
        cell.chunk(0.0, np.linspace(0.0, 0.07, 8), 0.02, seq=1)       # 0.1 rad/s
        cell.run(0.3)
        # the next plan starts 5 mrad ahead and is three times as fast
        cell.chunk(0.28, 0.033 + 0.3 * DT * np.arange(8), 0.02, seq=2)
        cell.run(0.3)
        results[merge] = cell.ex.stats()
    latest, blend = results['latest'], results['blend']
    assert latest['boundary.velocity_jump.max'] == pytest.approx(0.2, abs=1e-6)
    t_query = 0.31 + 0.02 + Cell().ex.filter_delay_s    # first step after the arrival at 0.3
    jump = (0.033 + 0.3 * (t_query - 0.28)) - 0.1 * t_query
    assert latest['boundary.position_jump.max'] == pytest.approx(jump, abs=1e-6)
    assert blend['boundary.velocity_jump.max'] < 0.02       # one period's worth of blend
    assert blend['boundary.position_jump.max'] < 1e-3


def test_prefix_stream_commits_and_continues():
    cell = Cell(merge='prefix', chunk_timeout_s=2.0)
    cell.chunk(0.0, 0.2 * DT * np.arange(16), 0.25, seq=1)             # 0.2 rad/s for 1.5 s
    cell.t = 0.25
    cell.run(0.35)                                       # the blend in from rest is over
    stamp, prefix = cell.ex.committed_prefix(cell.t)
    assert stamp == cell.t and prefix.dtype == np.float32
    # 0.25 s delay + 0.055 s lead and filter -> 4 steps, + the action at the switch
    assert prefix.shape == (5, 7) and cell.ex.stats()['prefix.steps'] == 5
    np.testing.assert_allclose(prefix[:, 0], 0.2 * (cell.t + DT * np.arange(5)), atol=1e-6)
    # a policy that continues the prefix, then stops where it is; 0.25 s to compute it
    continued = np.concatenate([prefix, np.repeat(prefix[-1:], 3, axis=0)])
    cell.run(0.25)
    assert cell.ex.on_chunk(ActionChunkData(stamp, continued, DT, sequence=2), cell.t)
    cell.run(0.01)
    stats = cell.ex.stats()
    assert stats['inputs.merge.prefix'] == 1 and stats.get('inputs.merge.fallback', 0) == 0
    plan = cell.ex._merger
    assert plan.sample(stamp + 0.39).sequence == 1       # the committed part: the old plan
    assert plan.sample(stamp + 0.4 + 1e-9).sequence == 2
    cell.run(1.0)
    assert cell.commands[-1].positions[0] == pytest.approx(prefix[-1, 0], abs=1e-6)
