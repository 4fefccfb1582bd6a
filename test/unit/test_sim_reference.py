"""The closed-loop demonstrator in the in-process loop, the chunk follower, pluggable sources."""
import numpy as np
import pytest

from vla_insertion.core.data import ActionChunkData, RobotState, SensorWindowData
from vla_insertion.core.sim.cell import CellParams, SimCell
from vla_insertion.core.sim.closed_loop import (
    ChunkFollower, ClosedLoop, LoopParams, reference_observation)
from vla_insertion.core.sim.episode import EpisodeParams, SUCCESS, TIMEOUT
from vla_insertion.core.sim.geometry import INSERT_DEPTH_M
from vla_insertion.core.sim.kinematics import forward_kinematics, HOME_RAD
from vla_insertion.core.sim.reference import APPROACH, DESCEND, HOLD, INSERT, ReferencePolicy
from vla_insertion.core.sim.servo import HOLD_UNARMED


def test_the_reference_inserts_reliably_through_a_command_path_with_latency():
    cell = SimCell(CellParams(), seed=11)
    # observation -> chunk 50..150 ms, commands at 100 Hz with 5 ms of network delay
    loop = ClosedLoop(cell, ReferencePolicy(), ChunkFollower(lead_s=0.05),
                      LoopParams(latency_s=0.1, latency_jitter_s=0.05, command_delay_s=0.005,
                                 seed=3))
    records = loop.run_episodes(20)
    assert len(records) == 20
    assert len({r.hole_top_m for r in records}) == 20                # randomised holes
    successes = [r for r in records if r.success]
    assert len(successes) >= 19, [(r.index, r.reason) for r in records]
    for r in successes:
        assert r.reason == SUCCESS and r.max_depth_m >= INSERT_DEPTH_M - 0.001
        assert 0.0 < r.peak_force_n <= EpisodeParams().max_contact_force_n
        assert 2.0 < r.time_to_insert_s < EpisodeParams().timeout_s
        assert 0.0 < r.mean_force_n <= r.peak_force_n


def test_the_loop_is_deterministic():
    def run():
        cell = SimCell(CellParams(), seed=2)
        loop = ClosedLoop(cell, ReferencePolicy(), params=LoopParams(latency_jitter_s=0.05))
        return [(r.reason, r.duration_s, r.peak_force_n) for r in loop.run_episodes(2)]
    assert run() == run()


def test_chunks_have_the_action_expert_form():
    cell = SimCell(seed=0)
    policy = ReferencePolicy()
    obs = reference_observation(cell)
    chunk = policy.infer(obs)
    assert isinstance(chunk, ActionChunkData)
    assert chunk.actions.shape == (8, 7) and chunk.actions.dtype == np.float32
    assert chunk.dt_s == 0.1 and chunk.stamp_s == obs.robot.stamp_s
    np.testing.assert_array_equal(chunk.actions[:, 6], 1.0)          # gripper closed
    tips = forward_kinematics(chunk.actions[:, :6].astype(np.float64))[:, 7, :3, 3]
    np.testing.assert_allclose(tips[0], obs.robot.tool_position_m, atol=1e-4)
    # heading for the approach point over the hole, i.e. down and toward it
    goal = obs.hole_top_m + np.r_[obs.approach_offset_m, 0.06]
    distances = np.linalg.norm(tips - goal, axis=1)
    assert (np.diff(distances) < 0).all()


def test_the_demonstrator_is_a_function_of_what_it_sees():
    cell = SimCell(seed=0)
    policy = ReferencePolicy()
    obs = reference_observation(cell)
    first = policy.infer(obs)
    # 10 s later with the arm held where it was: the same chunk (no plan ran away meanwhile)
    late = RobotState(stamp_s=10.0, joint_positions_rad=obs.robot.joint_positions_rad,
                      tool_position_m=obs.robot.tool_position_m,
                      tool_orientation_xyzw=obs.robot.tool_orientation_xyzw, gripper=1.0)
    again = policy.infer(type(obs)(late, obs.hole_top_m, obs.approach_offset_m))
    np.testing.assert_array_equal(first.actions, again.actions)
    assert again.stamp_s == 10.0
    tips = forward_kinematics(again.actions[:, :6].astype(np.float64))[:, 7, :3, 3]
    steps = np.linalg.norm(np.diff(tips, axis=0), axis=1)
    assert steps.max() < 0.25 * 0.1 * 1.01                           # at most its peak speed
    assert steps.min() > 0.01                                        # and moving at once


def test_the_funnel_decides_from_the_geometry():
    policy = ReferencePolicy()
    p = policy.params
    hole = np.array([-0.42, -0.27, 0.05])
    offset = np.array([0.001, -0.001])
    # far and high: approach the funnel's top, aiming off by the approach offset
    phase, goal = policy.goal(hole + [0.05, 0.0, 0.2], hole, offset)
    assert phase == APPROACH
    np.testing.assert_allclose(goal, hole + np.r_[offset, p.above_m])
    # 1 mm off the axis at 10 mm: the allowed height is 3 mm per mm of lateral error
    phase, goal = policy.goal(hole + [0.001, 0.0, 0.010], hole, np.zeros(2))
    assert phase == DESCEND
    np.testing.assert_allclose(goal, hole + [0.0, 0.0, p.pre_contact_m + 3.0 * 0.001])
    # on the axis at the funnel's bottom: insert, down the axis
    phase, goal = policy.goal(hole + [0.0002, 0.0, p.pre_contact_m], hole, offset)
    assert phase == INSERT
    np.testing.assert_allclose(goal, hole - [0.0, 0.0, INSERT_DEPTH_M])
    # in the hole, and inserted
    assert policy.goal(hole - [0.0, 0.0, 0.01], hole, offset)[0] == INSERT
    assert policy.goal(hole - [0.0, 0.0, INSERT_DEPTH_M], hole, offset)[0] == HOLD
    # below the rim beside the hole (the block's side): straight up first
    phase, goal = policy.goal(hole + [0.07, 0.0, -0.01], hole, offset)
    assert phase == APPROACH
    np.testing.assert_allclose(goal, np.r_[hole[:2] + [0.07, 0.0], hole[2] + p.above_m])


def test_phases_advance_on_the_measured_state():
    cell = SimCell(seed=5)
    policy = ReferencePolicy()
    loop = ClosedLoop(cell, policy, params=LoopParams(latency_s=0.1))
    seen = []
    while not cell.records:
        loop.advance_to(cell.t_s + 0.1)
        if not seen or seen[-1] != policy.phase:
            seen.append(policy.phase)
    assert seen[:3] == ['approach', 'descend', INSERT] and cell.records[0].success
    assert set(seen) <= {'approach', 'descend', INSERT, HOLD}


def test_the_follower_interpolates_at_now_plus_lead_and_holds_without_chunks():
    follower = ChunkFollower(lead_s=0.05, timeout_s=0.2, max_extrapolation_s=0.2)
    state = RobotState(stamp_s=0.0, joint_positions_rad=HOME_RAD.copy(),
                       tool_position_m=np.zeros(3), tool_orientation_xyzw=np.r_[0, 0, 0, 1.0],
                       gripper=0.7)
    follower.on_robot_state(state)
    idle = follower.step(1.0)
    assert idle.hold and idle.armed and idle.gripper == 0.7
    np.testing.assert_array_equal(idle.positions, HOME_RAD)
    actions = np.zeros((8, 7), np.float32)
    actions[:, 0] = np.arange(8) * 0.1                               # joint 1: 1 rad/s
    actions[:, 6] = 1.0
    follower.on_chunk(ActionChunkData(stamp_s=2.0, actions=actions, dt_s=0.1), arrival_s=2.1)
    cmd = follower.step(2.2)                                         # chunk time 2.25
    assert not cmd.hold and cmd.armed and (cmd.lead_s, cmd.timeout_s) == (0.05, 0.2)
    assert cmd.positions[0] == pytest.approx(0.25, abs=1e-6)
    assert cmd.velocities[0] == pytest.approx(1.0, abs=1e-5)
    end = follower.step(2.7)                                         # past the last action
    assert end.positions[0] == pytest.approx(0.7, abs=1e-6) and end.velocities[0] == 0.0
    assert not end.hold
    assert follower.step(3.0).hold                                   # too far past it
    old = ActionChunkData(stamp_s=1.0, actions=actions * 0, dt_s=0.1)
    follower.on_chunk(old, arrival_s=3.0)                            # older: ignored
    assert follower.step(2.2).positions[0] == pytest.approx(0.25, abs=1e-6)


class _Recording:
    """A command source wrapping another, counting what the loop hands it."""

    def __init__(self, inner, armed: bool = True) -> None:
        self.inner = inner
        self.armed = armed
        self.chunks, self.states, self.windows = [], [], []

    def on_chunk(self, chunk, arrival_s):
        self.chunks.append((chunk.stamp_s, arrival_s))
        self.inner.on_chunk(chunk, arrival_s)

    def on_robot_state(self, state):
        self.states.append(state)
        self.inner.on_robot_state(state)

    def on_sensor_window(self, window):
        self.windows.append(window)

    def step(self, now_s):
        cmd = self.inner.step(now_s)
        # the executor's kind of command: no lead_s/timeout_s, the loop's defaults apply
        return type('JointCommand', (), {
            'positions': cmd.positions, 'velocities': cmd.velocities, 'gripper': cmd.gripper,
            'armed': self.armed, 'hold': cmd.hold})()


def test_a_plugged_in_source_gets_chunks_states_and_sensor_windows():
    cell = SimCell(seed=1)
    source = _Recording(ChunkFollower())
    loop = ClosedLoop(cell, ReferencePolicy(), source, LoopParams(latency_s=0.08))
    loop.advance_to(1.0)
    assert len(source.states) == 100 and len(source.windows) == 100
    window = source.windows[-1]
    assert isinstance(window, SensorWindowData) and window.samples.shape == (65, 7)
    assert window.complete and np.isfinite(window.samples).all()
    assert window.channel_names[-1] == 'distance'
    stamps, arrivals = np.array(source.chunks).T
    np.testing.assert_allclose(arrivals - stamps, 0.08)              # the configured latency
    assert np.linalg.norm(cell.state().joints_rad - HOME_RAD) > 0.05  # it moves the arm


def test_an_unarmed_source_moves_nothing_and_the_episode_times_out():
    cell = SimCell(CellParams(episode=EpisodeParams(timeout_s=2.0)), seed=1)
    loop = ClosedLoop(cell, ReferencePolicy(), _Recording(ChunkFollower(), armed=False))
    loop.advance_to(1.0)
    assert cell.servo.hold_reason == HOLD_UNARMED
    np.testing.assert_allclose(cell.state().joints_rad, HOME_RAD)
    records = loop.run_episodes(1)
    assert [r.reason for r in records] == [TIMEOUT]
    assert records[0].peak_force_n == 0.0
