"""The closed-loop demonstrator, and PipelineLoop stepping the cell with it through the executor.

The loop's mechanics as the demonstrator sees them: one step grid for run_episode and
advance_to (LiveCell's), the executor fed states and sensor windows at its rate, chunks after
the modelled latency, the arm held until the first chunk, an unarmed executor moving nothing.
"""
import numpy as np
import pytest

from vla_insertion.core.config import ExecutorConfig
from vla_insertion.core.data import ActionChunkData, RobotState, SensorWindowData
from vla_insertion.core.executor import ChunkExecutor
from vla_insertion.core.sim.cell import CellParams, SimCell
from vla_insertion.core.sim.episode import EpisodeParams, TIMEOUT
from vla_insertion.core.sim.geometry import INSERT_DEPTH_M
from vla_insertion.core.sim.kinematics import forward_kinematics, HOME_RAD
from vla_insertion.core.sim.loop import PipelineLoop, PipelineTiming
from vla_insertion.core.sim.reference import (
    APPROACH, DESCEND, HOLD, INSERT, reference_observation, ReferencePolicy)
from vla_insertion.core.sim.servo import HOLD_UNARMED


def reference_loop(seed: int, timing: PipelineTiming = PipelineTiming(),
                   executor: ChunkExecutor | None = None,
                   params: CellParams = CellParams()) -> PipelineLoop:
    executor = executor if executor is not None else ChunkExecutor(
        ExecutorConfig(start_armed=True))
    return PipelineLoop(SimCell(params, seed=seed), executor, timing,
                        reference=ReferencePolicy(), seed=seed)


def outcome(record) -> tuple:
    return (record.index, record.reason, record.duration_s, record.peak_force_n,
            record.max_depth_m)


@pytest.mark.slow
def test_the_loop_is_deterministic():
    def run():
        return [outcome(m.record) for m in reference_loop(2).run_episodes(2)]
    assert run() == run()


@pytest.mark.slow
def test_advance_to_takes_the_same_steps_as_run_episode():
    # LiveCell drives the loop in slices of wall-clock time; the episodes must come out as
    # run_episode's, settling between them included (one grid, not two)
    episodes = reference_loop(4).run_episodes(2)
    loop = reference_loop(4)
    decided = []
    while len(decided) < 2 and loop.cell.t_s < 30.0:
        decided += loop.advance_to(loop.cell.t_s + 0.37)
    assert [outcome(r) for r in decided] == [outcome(m.record) for m in episodes]
    assert decided[0].success and decided[1].index == 1
    assert loop.metrics.record == decided[1]
    assert loop.metrics.chunks == episodes[1].chunks > 0


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
    # 1 mm off the axis at 10 mm: within the search radius the funnel is flat at its bottom
    phase, goal = policy.goal(hole + [0.001, 0.0, 0.010], hole, np.zeros(2))
    assert phase == DESCEND
    np.testing.assert_allclose(goal, hole + [0.0, 0.0, p.pre_contact_m])
    # 4.5 mm off: beyond it the allowed height grows by 3 mm per mm of lateral error
    phase, goal = policy.goal(hole + [0.0045, 0.0, 0.010], hole, np.zeros(2))
    assert phase == DESCEND
    np.testing.assert_allclose(goal, hole + [0.0, 0.0, p.pre_contact_m + 3.0 * 0.0005])
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


@pytest.mark.slow
def test_phases_advance_on_the_measured_state():
    loop = reference_loop(5)
    cell, policy = loop.cell, loop.reference
    seen = []
    while not cell.records and cell.t_s < 30.0:
        loop.advance_to(cell.t_s + 0.1)
        if not seen or seen[-1] != policy.phase:
            seen.append(policy.phase)
    assert seen[:3] == [APPROACH, DESCEND, INSERT] and cell.records[0].success
    assert set(seen) <= {APPROACH, DESCEND, INSERT, HOLD}


class _RecordingExecutor(ChunkExecutor):
    """The real executor, keeping what the loop hands it."""

    def __init__(self, config: ExecutorConfig) -> None:
        super().__init__(config)
        self.states, self.windows = [], []

    def on_robot_state(self, state: RobotState) -> None:
        self.states.append(state)
        super().on_robot_state(state)

    def on_sensor_window(self, window: SensorWindowData) -> None:
        self.windows.append(window)
        super().on_sensor_window(window)


def test_the_executor_gets_states_windows_and_chunks_after_the_latency():
    executor = _RecordingExecutor(ExecutorConfig(start_armed=True))
    loop = reference_loop(1, PipelineTiming(expert_latency_s=0.08, transport_s=0.0), executor)
    loop.advance_to(1.0)
    # the executor's 100 Hz in 1 s of cell time, each with the window of that moment
    assert len(executor.states) == len(executor.windows) == 100
    assert [w.stamp_s for w in executor.windows] == [s.stamp_s for s in executor.states]
    window = executor.windows[-1]
    assert window.samples.shape == (65, 7) and window.sample_rate_hz == 650.0
    assert window.complete and np.isfinite(window.samples).all()
    assert window.channel_names[-1] == 'distance'
    assert min(w.samples[:, 6].min() for w in executor.windows) >= 0.0   # a laser's distance
    # a chunk every 0.1 s tick, at the executor 80 ms after its observation
    assert loop.metrics.chunks == 10
    np.testing.assert_allclose(loop.metrics.chunk_delay_s, 0.08)
    assert np.linalg.norm(loop.cell.state().joints_rad - HOME_RAD) > 0.05   # it moves the arm


def test_the_arm_holds_still_until_the_first_chunk_arrives():
    loop = reference_loop(1, PipelineTiming(expert_latency_s=0.5, transport_s=0.0))
    loop.advance_to(0.45)
    assert loop.metrics.chunks == 0
    np.testing.assert_allclose(loop.cell.state().joints_rad, HOME_RAD, atol=1e-9)
    loop.advance_to(1.5)
    assert loop.metrics.chunks > 0
    assert np.linalg.norm(loop.cell.state().joints_rad - HOME_RAD) > 0.05


@pytest.mark.slow
def test_an_unarmed_executor_moves_nothing_and_the_episode_times_out():
    loop = reference_loop(1, executor=ChunkExecutor(ExecutorConfig(start_armed=False)),
                          params=CellParams(episode=EpisodeParams(timeout_s=2.0)))
    loop.advance_to(1.0)
    assert loop.cell.servo.hold_reason == HOLD_UNARMED
    np.testing.assert_allclose(loop.cell.state().joints_rad, HOME_RAD)
    metrics = loop.run_episode()
    assert metrics.record.reason == TIMEOUT and metrics.record.peak_force_n == 0.0
    assert metrics.chunks > 0                       # the chunks came; nothing was let through
