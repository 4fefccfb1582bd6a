"""Stops in the closed loop: what the executor would publish for ros2_control, checked.

The reference policy drives the simulated cell through the real ChunkExecutor (PipelineLoop, as
test_loop_executor.py). After every control step the executor's trajectory_update() is called,
as the chunk_executor node does, and every trajectory it would publish on robot/joint_trajectory
is checked against joint_trajectory_controller's rules at the time it would arrive. Scenarios:
a whole episode, and a disarm, a force fault and the chunk stream stopping while the arm moves.
"""
from dataclasses import replace
import math

import numpy as np
import pytest

from vla_insertion.core.config import ExecutorConfig
from vla_insertion.core.executor import check_trajectory, ChunkExecutor
from vla_insertion.core.sim.cell import CellParams, SimCell
from vla_insertion.core.sim.loop import PipelineLoop, PipelineTiming
from vla_insertion.core.sim.reference import ReferencePolicy

pytestmark = pytest.mark.slow         # sim episodes
TIMING = PipelineTiming(expert_latency_s=0.1, transport_s=0.0, command_delay_s=0.005)
EVENT_S = 0.5                          # the reference policy moves at ~0.7 rad/s then
T = 0.01


class Published:
    """The executor as the node drives it, with one scenario's event injected at event_s."""

    def __init__(self, executor: ChunkExecutor, event: str = '', event_s: float = math.inf):
        self.ex, self.event, self.event_s = executor, event, event_s
        self.trajectories = []       # (step time [s], JointTrajectoryData)
        self.commands = []           # every JointCommand
        self.done = False

    def __getattr__(self, name):
        return getattr(self.ex, name)

    def on_chunk(self, chunk, arrival_s: float) -> bool:
        if self.event == 'chunks_stop' and arrival_s >= self.event_s:
            return False                                     # the policy went silent
        return self.ex.on_chunk(chunk, arrival_s)

    def on_sensor_window(self, window) -> bool:
        if self.event == 'fault' and window.stamp_s >= self.event_s and not self.done:
            samples = window.samples.copy()
            samples[:, :3] = 60.0                            # |F| 104 N, hard limit 40 N
            window, self.done = replace(window, samples=samples), True
        return self.ex.on_sensor_window(window)

    def step(self, now_s: float):
        if self.event == 'disarm' and now_s >= self.event_s and not self.done:
            self.ex.disarm()                                 # ~/enable false, between steps
            self.done = True
        command = self.ex.step(now_s)
        trajectory = self.ex.trajectory_update()
        self.commands.append(command)
        if trajectory is not None:
            self.trajectories.append((now_s, trajectory))
        return command


def loop_with(event: str = '', event_s: float = math.inf):
    executor = Published(ChunkExecutor(ExecutorConfig(start_armed=True)), event, event_s)
    loop = PipelineLoop(SimCell(CellParams(), seed=11), executor, TIMING,
                        reference=ReferencePolicy(), seed=3)
    return loop, executor


def assert_all_accepted(published: Published) -> None:
    joints = published.ex.config.joint_names
    for t, trajectory in published.trajectories:
        arrival = t + TIMING.command_delay_s                  # at the controller
        check = check_trajectory(trajectory, joints, arrival)
        assert check.accepted, (t, trajectory.stop, check)


def test_every_trajectory_of_a_whole_episode_is_accepted():
    loop, published = loop_with()
    metrics = loop.run_episode()
    assert metrics.record.success
    assert len(published.trajectories) >= metrics.chunks // 2     # the plan, as chunks come
    assert all(not trajectory.stop for _, trajectory in published.trajectories)
    assert_all_accepted(published)


@pytest.mark.parametrize('event, trigger', [('disarm', 'disarm'), ('fault', 'force_limit'),
                                            ('chunks_stop', 'watchdog')])
def test_a_stop_goes_out_at_once_is_accepted_and_is_the_last_trajectory(event, trigger):
    loop, published = loop_with(event, EVENT_S)
    loop.advance_to(EVENT_S + 1.5)
    assert_all_accepted(published)
    stops = [(i, t, tr) for i, (t, tr) in enumerate(published.trajectories) if tr.stop]
    assert [tr.stop for _, _, tr in stops] == [trigger]
    index, t_stop, stop = stops[0]
    assert index == len(published.trajectories) - 1, 'a trajectory after the stop'
    config = published.ex.config
    if event == 'chunks_stop':                                # the watchdog's deadline
        assert t_stop <= published.ex._last_accept_s + config.chunk_timeout_s + T + 1e-9
    else:                                                     # the first step after the event
        assert EVENT_S <= t_stop < EVENT_S + T + 1e-9
    assert np.abs(stop.points[0].velocities).max() > 0.2     # it brakes a moving arm
    np.testing.assert_array_equal(stop.points[-1].velocities, 0.0)
    # On HOLD (and unarmed) the sim's servo brakes by itself, at 8 rad/s^2 from where it lags
    # the commands: the arm comes to rest short of where the executor's braking ends, never past
    servo = loop.cell.servo
    direction = np.sign(stop.points[0].velocities)
    assert np.abs(servo.v).max() == 0.0 and servo.hold_reason in ('hold', 'unarmed')
    assert (direction * (servo.q - stop.points[-1].positions) <= 1e-9).all()
    assert np.abs(servo.q - stop.points[-1].positions).max() < 0.1
    after = [c for c in published.commands if c.stamp_s >= t_stop]
    assert after and all(c.stop == trigger for c in after)
