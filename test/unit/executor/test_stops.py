"""Stops: every transition into hold brakes to rest at once, on both outputs, within the limits.

`Node` plays the chunk_executor node on simulated time: each control period it calls step(),
then trajectory_update() (what goes out on robot/joint_trajectory) and, for a command that goes
to the robot, command_message() (command_v1); the robot follows the commands exactly. Every
trajectory is checked against joint_trajectory_controller's rules.
"""
import math

from hypothesis import given, HealthCheck, Phase, settings
from hypothesis import strategies as st
import numpy as np
import pytest

from vla_insertion.core.config import ExecutorConfig
from vla_insertion.core.data import ActionChunkData, RobotState, SensorWindowData
from vla_insertion.core.executor import ChunkExecutor, command_message, stops
from vla_insertion.core.executor.trajectory_rules import check_trajectory
from vla_insertion.core.wire.command import FLAG_ARMED, FLAG_HOLD

T = 0.01
DT = 0.1
CHANNELS = ('fx', 'fy', 'fz', 'tx', 'ty', 'tz', 'distance')
START = np.array([0.1, -0.4, 0.6, -0.2, 0.3, 0.0])


class Node:
    """The node's calls on simulated time; records what leaves for the robot and ROS."""

    def __init__(self, **overrides) -> None:
        self.config = ExecutorConfig(**{'max_distance_from_measured_rad': 10.0, **overrides})
        self.ex = ChunkExecutor(self.config)
        self.t, self.q, self.gripper = 0.0, START.copy(), 0.5
        self.force, self.robot_fresh, self.last_state_s = 0.0, True, 0.0
        self.heartbeat, self.last_heartbeat_s = True, 0.0      # deadman_timeout_s > 0 only
        self.steps = []            # (JointCommand, JointTrajectoryData | None, CommandMessage)
        self.seq = 0
        self.feed()
        assert self.ex.arm(self.t) == (True, 'armed')

    def feed(self) -> None:
        if self.robot_fresh:
            self.ex.on_robot_state(RobotState(self.t, self.q.copy(), np.zeros(3),
                                              np.array([0, 0, 0, 1.0]), self.gripper))
            self.last_state_s = self.t
        if self.config.deadman_timeout_s > 0 and self.heartbeat:
            self.ex.on_heartbeat(True, self.t)
            self.last_heartbeat_s = self.t
        samples = np.zeros((65, 7), np.float32)
        samples[:, 2] = self.force
        self.ex.on_sensor_window(SensorWindowData(self.t, samples, 65, 650.0, CHANNELS))

    def chunk(self, actions: np.ndarray, delay: float = 0.02) -> bool:
        self.seq += 1
        return self.ex.on_chunk(ActionChunkData(self.t - delay, np.asarray(actions, np.float32),
                                                DT, sequence=self.seq), self.t)

    def step(self):
        self.t = round(self.t + T, 9)
        command = self.ex.step(self.t)
        trajectory = self.ex.trajectory_update()
        message = (command_message(command, self.config, session=1, sequence=len(self.steps),
                                   sender_time_s=self.t) if command.to_robot else None)
        self.steps.append((command, trajectory, message))
        if command.valid and command.armed:
            self.q, self.gripper = command.positions.copy(), command.gripper
        self.feed()
        return command, trajectory, message

    def run(self, seconds: float, policy=None) -> None:
        """Step for `seconds`; policy(t) -> (8, 7) actions, sent every 0.1 s."""
        for i in range(int(round(seconds / T))):
            if policy is not None and round(self.t / T) % 10 == 0:
                self.chunk(policy(self.t - 0.02))
            self.step()


def ramp(speed: float = 0.8):
    """Return a plan moving every joint at `speed` [rad/s] from START, the gripper closing."""
    def policy(t0: float) -> np.ndarray:
        times = t0 + DT * np.arange(8)
        joints = START + speed * np.minimum(times, 1.0)[:, None] * np.array([1, -1, 1, 1, -1, 1])
        return np.column_stack([joints, np.clip(0.5 + 0.5 * times, 0, 1)])
    return policy


def check_limits(positions: np.ndarray, ex: ChunkExecutor, tol: float = 1e-9) -> None:
    """Positions and finite-difference velocity, acceleration, jerk within the limits table."""
    table, margin = ex.limits, np.r_[[ex.config.position_margin_rad] * 6, 0.0]
    lower, upper = table.array('min_position') + margin, table.array('max_position') - margin
    v = np.diff(positions, axis=0) / T
    a = np.diff(v, axis=0) / T
    j = np.diff(a, axis=0) / T
    assert (positions >= lower - tol).all() and (positions <= upper + tol).all(), 'position'
    assert (np.abs(v) <= table.array('max_velocity') * (1 + 1e-9) + tol).all(), 'velocity'
    accel = np.array([limit.acceleration for limit in table.joints])
    jerk = np.array([limit.jerk for limit in table.joints])
    assert (np.abs(a) <= accel * (1 + 1e-7) + 1e-7).all(), np.abs(a).max(axis=0)
    assert (np.abs(j) <= jerk * (1 + 1e-6) + 1e-5).all(), np.abs(j).max(axis=0)


def stop_steps(node: Node) -> list[int]:
    return [i for i, (_, trajectory, _) in enumerate(node.steps)
            if trajectory is not None and trajectory.stop]


def assert_stop_then_holds(node: Node, index: int, trigger: str) -> None:
    """Step `index` sends the stop of `trigger`; after it only HOLD at its end leaves."""
    command, trajectory, message = node.steps[index]
    assert command.stop == trigger and trajectory.stop == trigger
    check = check_trajectory(trajectory, node.config.joint_names, command.stamp_s)
    assert check.accepted, check
    assert trajectory.stamp_s == 0.0                           # on arrival: never too late
    assert trajectory.points[0].time_from_start_s == pytest.approx(node.config.actuator_lead_s)
    np.testing.assert_array_equal(trajectory.points[-1].velocities, 0.0)
    rest = trajectory.points[-1].positions
    for command, trajectory, message in node.steps[index:]:
        assert trajectory is None or trajectory is node.steps[index][1], 'a second trajectory'
        assert message is not None and message.flags & FLAG_HOLD, 'no HOLD'
        assert bool(message.flags & FLAG_ARMED) == command.armed
        np.testing.assert_array_equal(message.positions_rad, rest)
        assert message.velocities_rad_s == (0.0,) * 6
    assert node.ex.stats()[f'stops.{trigger}'] == 1


def stop_stream(node: Node, index: int) -> np.ndarray:
    """Return the armed commands sent before the stop at step `index`, then its braking."""
    stop = node.ex._stop
    assert stop is not None and stop.stamp_s == node.steps[index][0].stamp_s
    np.testing.assert_array_equal([p.positions for p in node.steps[index][1].points],
                                  stop.positions[:, :6])
    before = [np.append(c.positions, c.gripper) for c, _, m in node.steps[:index]
              if m is not None and m.flags & FLAG_ARMED]
    return np.vstack(before + [stop.positions])


# --- each trigger -------------------------------------------------------------------------

def moving_node(**overrides) -> Node:
    node = Node(chunk_timeout_s=0.3, **overrides)
    node.run(0.6, ramp())
    velocity = node.steps[-1][0].velocities
    assert np.abs(velocity).min() > 0.5, velocity           # every joint moves
    assert stop_steps(node) == []
    return node


def test_disarm_sends_the_braking_at_the_next_step_and_then_only_holds():
    node = moving_node()
    mark = len(node.steps)
    assert node.ex.disarm() == (True, 'disarmed')
    node.run(1.0, ramp())                                    # the policy keeps sending
    assert stop_steps(node) == [mark]
    assert_stop_then_holds(node, mark, 'disarm')
    assert not node.steps[mark][0].armed
    check_limits(stop_stream(node, mark), node.ex)
    # re-armed: following resumes from where the arm stopped, and the plan goes out again
    assert node.ex.arm(node.t) == (True, 'armed')
    mark = len(node.steps)
    node.run(0.2, ramp())
    assert node.steps[mark][1] is not None and not node.steps[mark][1].stop
    assert node.ex.stats()['stop'] == ''


def test_a_latched_fault_stops_at_once_and_holds_until_reset():
    node = moving_node()
    node.force = 60.0                                        # N, hard limit 40 N
    node.feed()
    mark = len(node.steps)
    node.run(0.05, ramp())
    node.force = 0.0
    node.run(1.0, ramp())
    assert stop_steps(node) == [mark]
    assert_stop_then_holds(node, mark, 'force_limit')
    check_limits(stop_stream(node, mark), node.ex)
    # the braking is the commands: the first point is the command of that step
    command, trajectory, _ = node.steps[mark]
    np.testing.assert_array_equal(trajectory.points[0].positions, command.positions)
    assert node.ex.reset_fault()[0]
    node.run(0.2, ramp())
    assert not node.ex.armed and node.steps[-1][2].flags & FLAG_HOLD   # until re-armed
    assert node.ex.arm(node.t) == (True, 'armed')
    mark = len(node.steps)
    node.run(0.2, ramp())
    resumed = node.steps[mark]
    assert resumed[0].stop == '' and resumed[1] is not None and not resumed[1].stop
    assert not resumed[2].flags & FLAG_HOLD


def test_the_watchdog_stops_within_a_period_of_the_timeout():
    node = moving_node()
    node.run(1.0)                                            # the chunks stop
    (index,) = stop_steps(node)
    assert_stop_then_holds(node, index, 'watchdog')
    accepted = node.ex._last_accept_s
    stamp = node.steps[index][0].stamp_s
    assert accepted + 0.3 - 1e-9 < stamp <= accepted + 0.3 + T + 1e-9
    check_limits(stop_stream(node, index), node.ex)
    node.run(0.2, ramp())                                     # chunks again: still stopped
    assert not node.ex.armed and node.steps[-1][2].flags & FLAG_HOLD
    assert node.ex.arm(node.t) == (True, 'armed')            # until re-armed
    node.run(0.2, ramp())
    assert node.steps[-1][0].state == 'tracking' and node.ex.stats()['stop'] == ''


def test_a_stale_robot_state_stops_within_a_period_of_its_age_limit():
    node = moving_node()
    node.robot_fresh = False
    node.run(0.5, ramp())
    (index,) = stop_steps(node)
    assert_stop_then_holds(node, index, 'robot_state_too_old')
    stamp = node.steps[index][0].stamp_s
    assert node.last_state_s + 0.1 - 1e-9 < stamp <= node.last_state_s + 0.1 + T + 1e-9
    check_limits(stop_stream(node, index), node.ex)


def test_the_braking_is_as_short_as_the_acceleration_and_jerk_limits_allow():
    node = moving_node()
    v = np.abs(node.steps[-1][0].velocities).max()
    node.ex.disarm()
    node.step()
    stop = node.ex._stop
    limiter = node.ex._limiter
    # stage 1 sheds A T per period, then the jerk filter's m taps settle: not a period more
    periods = math.ceil(v / (4.0 * T) - 1e-9) + limiter.taps + 1
    assert len(stop.times_s) <= periods + 1
    assert stop.duration_s == pytest.approx(node.config.actuator_lead_s
                                            + T * (len(stop.times_s) - 1))


def test_stops_are_counted_by_trigger_and_events_are_named():
    node = Node()
    stats = node.ex.stats()
    assert {k: stats[f'stops.{k}'] for k in stops.TRIGGERS} == dict.fromkeys(stops.TRIGGERS, 0)
    with pytest.raises(ValueError, match='watchdog'):
        node.ex.stop_now('watchdog')                          # a condition, not an event
    node.ex.disarm()
    node.ex.disarm()
    node.run(0.1)
    assert node.ex.stats()['stops.disarm'] == 1                # one stop, one count
    never = Node()
    never.ex.disarm()
    assert never.ex.disarm() == (True, 'already disarmed')


def test_nothing_is_sent_before_the_first_arming():
    ex = ChunkExecutor(ExecutorConfig())
    ex.on_robot_state(RobotState(0.0, START, np.zeros(3), np.array([0, 0, 0, 1.0]), 0.5))
    assert ex.disarm() == (True, 'already disarmed')          # nothing moved: nothing to stop
    for k in range(1, 30):
        command = ex.step(k * T)
        assert not command.to_robot and command.stop == ''
        assert ex.trajectory_update() is None
    assert ex.stats()['stops.disarm'] == 0


# --- property: after the event, nothing but the stop, then holds --------------------------

EVENTS = ('disarm', 'fault', 'watchdog', 'robot_stale', 'estop', 'deadman_release',
          'deadman_silence')
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)


# Delays under one chunk period: a chunk stamped before its predecessor is refused as
# out_of_order, and the stream starves into the watchdog before the event.
@given(chunks=st.lists(st.tuples(st.lists(st.floats(-0.6, 0.6), min_size=7, max_size=7),
                                 st.floats(0.0, 0.09)), min_size=3, max_size=12),
       event=st.sampled_from(EVENTS), after=st.integers(0, 9),
       merge=st.sampled_from(['latest', 'temporal_ensemble', 'blend', 'prefix']))
@settings(max_examples=40, deadline=None, phases=NO_SHRINK,
          suppress_health_check=[HealthCheck.too_slow])
def test_random_streams_after_an_event_send_only_the_stop_then_holds(chunks, event, after, merge):
    node = Node(merge=merge, chunk_timeout_s=0.25, deadman_timeout_s=0.2)
    for offsets, delay in chunks:
        target = np.append(START, 0.5) + np.array(offsets) * np.linspace(0.2, 1.0, 8)[:, None]
        target[:, 6] = np.clip(target[:, 6], 0.0, 1.0)
        node.chunk(target, delay)
        node.run(0.1)
    node.run(after * T)
    assert [node.steps[i][1].stop for i in stop_steps(node)] == []
    mark = len(node.steps)
    if event == 'disarm':
        node.ex.disarm()
    elif event == 'fault':
        node.force = 45.0
        node.feed()
    elif event == 'robot_stale':
        node.robot_fresh = False
    elif event == 'estop':
        node.ex.on_estop(True)
    elif event == 'deadman_release':
        node.heartbeat = False
        node.ex.on_heartbeat(False, node.t)
    elif event == 'deadman_silence':
        node.heartbeat = False                                # the console goes quiet
    rng = np.random.default_rng(len(chunks))
    for _ in range(10):                                       # 1 s more
        if event != 'watchdog':                                # the policy goes on
            node.chunk(np.append(START, 0.5) + rng.uniform(-0.3, 0.3, (8, 7)).clip(-0.5, 0.5))
        node.run(0.1)
    found = stop_steps(node)
    assert len(found) == 1, found
    index = found[0]
    trigger = {'disarm': 'disarm', 'fault': 'force_limit', 'watchdog': 'watchdog',
               'robot_stale': 'robot_state_too_old', 'estop': 'estop',
               'deadman_release': 'deadman', 'deadman_silence': 'deadman'}[event]
    if event in ('disarm', 'fault', 'estop', 'deadman_release'):
        assert index == mark                                  # within one control period
    elif event == 'watchdog':
        assert node.steps[index][0].stamp_s <= node.ex._last_accept_s + 0.25 + T + 1e-9
    elif event == 'deadman_silence':
        assert node.steps[index][0].stamp_s <= node.last_heartbeat_s + 0.2 + T + 1e-9
    else:
        assert node.steps[index][0].stamp_s <= node.last_state_s + 0.1 + T + 1e-9
    for command, trajectory, message in node.steps[mark:index]:   # before it: still following
        assert trajectory is None or not trajectory.stop
    assert_stop_then_holds(node, index, trigger)
    check_limits(stop_stream(node, index), node.ex)
