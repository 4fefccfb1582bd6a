"""The gripper's gate (range, rate: counted apart) and its two ros2_control outputs."""
import numpy as np
import pytest

from vla_insertion.core.config import ConfigError, ExecutorConfig
from vla_insertion.core.data import ActionChunkData, RobotState, SensorWindowData
from vla_insertion.core.executor import ChunkExecutor, gate
from vla_insertion.core.executor.gripper import GripperOutput, GripperScale, split_causes
from vla_insertion.core.executor.trajectory_rules import check_trajectory

T, DT = 0.01, 0.1
CHANNELS = ('fx', 'fy', 'fz', 'tx', 'ty', 'tz', 'distance')
START = np.array([0.1, -0.4, 0.6, -0.2, 0.3, 0.0])
KNUCKLE = 'robotiq_85_left_knuckle_joint'
ROBOTIQ = {'gripper_joint': KNUCKLE, 'gripper_closed_position': 0.8}


class Cell:
    """The node's calls on simulated time; the arm and the gripper follow the commands."""

    def __init__(self, gripper=0.2, **overrides) -> None:
        self.config = ExecutorConfig(**{'max_distance_from_measured_rad': 10.0, **overrides})
        self.ex = ChunkExecutor(self.config)
        self.t, self.q, self.gripper, self.seq = 0.0, START.copy(), gripper, 0
        self.steps = []                        # (JointCommand, JointTrajectoryData | None)
        self.feed()
        assert self.ex.arm(self.t) == (True, 'armed')

    def feed(self) -> None:
        self.ex.on_robot_state(RobotState(self.t, self.q.copy(), np.zeros(3),
                                          np.array([0, 0, 0, 1.0]), self.gripper))
        self.ex.on_sensor_window(SensorWindowData(self.t, np.zeros((65, 7), np.float32), 65,
                                                  650.0, CHANNELS))

    def run(self, seconds: float, gripper=None, joints=START) -> None:
        """Step for `seconds`, sending every 0.1 s a plan that holds the joints, gripper(t)."""
        for _ in range(int(round(seconds / T))):
            if gripper is not None and round(self.t / T) % 10 == 0:
                self.seq += 1
                times = self.t - 0.02 + DT * np.arange(8)
                actions = np.column_stack([np.tile(joints, (8, 1)), [gripper(t) for t in times]])
                self.ex.on_chunk(ActionChunkData(self.t - 0.02, actions.astype(np.float32), DT,
                                                 sequence=self.seq), self.t)
            self.t = round(self.t + T, 9)
            command = self.ex.step(self.t)
            self.steps.append((command, self.ex.trajectory_update()))
            if command.valid and command.armed:
                self.q, self.gripper = command.positions.copy(), command.gripper
            self.feed()

    def grippers(self) -> np.ndarray:
        return np.array([c.gripper for c, _ in self.steps])


def test_the_scale_maps_both_ways_and_never_leaves_the_range():
    scale = GripperScale('finger', 0.04, 0.0)                   # metres; closing decreases
    assert scale.to_controller(0.0) == pytest.approx(0.04)
    assert scale.to_controller(1.0) == pytest.approx(0.0)
    assert scale.to_controller(1.7) == pytest.approx(0.0)
    assert scale.to_controller(-0.5) == pytest.approx(0.04)
    assert scale.from_controller(0.01) == pytest.approx(0.75)
    with pytest.raises(ConfigError):
        GripperScale('finger', 0.5, 0.5)


@pytest.mark.parametrize('flags,cause,expected', [
    ([0, 0, 0, 0, 0, 0, 1], gate.POSITION_LIMIT, {gate.GRIPPER_RANGE}),
    ([1, 0, 0, 0, 0, 0, 1], gate.VELOCITY_LIMIT, {gate.VELOCITY_LIMIT, gate.GRIPPER_RATE}),
    ([0, 0, 1, 0, 0, 0, 0], gate.VELOCITY_LIMIT, {gate.VELOCITY_LIMIT}),
    ([0, 0, 0, 0, 0, 0, 1], gate.JERK_LIMIT, {gate.JERK_LIMIT}),     # no gripper cause of its own
    ([0] * 7, gate.POSITION_LIMIT, set()),
])
def test_split_causes(flags, cause, expected):
    assert split_causes(np.array(flags, dtype=bool), cause) == expected


def test_a_gripper_target_out_of_range_is_clipped_and_counted_as_gripper_range():
    cell = Cell()
    cell.run(1.5, gripper=lambda t: 1.6)
    stats = cell.ex.stats()
    assert stats['gate.gripper_range'] > 0 and stats['gate.position_limit'] == 0
    assert cell.grippers().max() == pytest.approx(1.0) and cell.grippers().min() >= 0.0
    assert gate.GRIPPER_RANGE in cell.steps[20][0].interventions


def test_a_gripper_step_is_rate_limited_and_counted_as_gripper_rate():
    cell = Cell(gripper=0.0)
    cell.run(1.0, gripper=lambda t: 1.0)                        # close at once
    stats = cell.ex.stats()
    assert stats['gate.gripper_rate'] > 0 and stats['gate.velocity_limit'] == 0
    max_velocity = cell.ex.limits.array('max_velocity')[-1]     # 2 / s
    rate = np.abs(np.diff(cell.grippers())) / T
    assert rate.max() == pytest.approx(max_velocity)            # cruises at its limit
    assert cell.grippers()[-1] == pytest.approx(1.0)


def arm_and_gripper(trajectory):
    return np.array([p.positions for p in trajectory.points])


def test_as_a_trajectory_joint_every_trajectory_names_it_in_controller_units_and_is_valid():
    cell = Cell(outputs=('joint_trajectory',), gripper_output='trajectory_joint', **ROBOTIQ)
    joints = tuple(cell.config.joint_names) + (KNUCKLE,)
    cell.run(1.0, gripper=lambda t: min(1.0, 0.2 + 0.5 * t))   # closing at 0.5 / s
    plans = [(c, tr) for c, tr in cell.steps if tr is not None]
    assert len(plans) >= 5
    for command, trajectory in plans:
        assert trajectory.joint_names == joints
        check = check_trajectory(trajectory, joints, command.stamp_s)
        assert check.accepted, check
        first = trajectory.points[0]
        assert 0.0 <= first.positions[6] <= 0.8
    # the gripper closing at 0.5 / s is the knuckle closing at 0.4 rad/s
    command, trajectory = plans[-1]
    first = trajectory.points[0]
    ahead_s = first.time_from_start_s - cell.config.actuator_lead_s
    assert first.positions[6] == pytest.approx(0.8 * (command.gripper + 0.5 * ahead_s), abs=1e-3)
    assert first.velocities[6] == pytest.approx(0.8 * 0.5, abs=1e-3)

    cell.ex.disarm()
    cell.run(0.05)
    (command, stop), = [(c, tr) for c, tr in cell.steps[-5:] if tr is not None]
    assert stop.stop == 'disarm' and stop.joint_names == joints
    check = check_trajectory(stop, joints, command.stamp_s)
    assert check.accepted, check
    np.testing.assert_array_equal(stop.points[-1].velocities, 0.0)    # the gripper at rest too
    held = arm_and_gripper(stop)[:, 6]
    # braking, it stays where it was: moving on by less than its braking distance, never opening
    assert np.all(np.diff(held) >= -1e-12)
    assert held[-1] - held[0] < 0.8 * 0.5 ** 2 / (2 * 20.0) + 0.8 * 0.5 * 0.1


def test_without_a_gripper_output_the_trajectory_keeps_the_six_arm_joints():
    cell = Cell(outputs=('joint_trajectory',), **ROBOTIQ)
    cell.run(0.5, gripper=lambda t: 0.5)
    trajectories = [tr for _, tr in cell.steps if tr is not None]
    assert trajectories and all(tr.joint_names == cell.config.joint_names
                                for tr in trajectories)


def test_the_forward_command_goes_out_while_the_robot_may_move_and_holds_a_stop_s_rest():
    cell = Cell(gripper_output='forward_command', **ROBOTIQ)
    output = GripperOutput.from_config(cell.config)
    cell.run(0.5, gripper=lambda t: 0.2 + 0.5 * t)
    command = cell.steps[-1][0]
    assert output.forward_command(command) == pytest.approx(0.8 * command.gripper)
    cell.ex.disarm()
    cell.run(0.05)
    command = cell.steps[-1][0]
    assert command.stop == 'disarm' and not command.armed
    assert output.forward_command(command) == pytest.approx(0.8 * command.rest[6])
    assert abs(command.rest[6] - cell.steps[-6][0].gripper) < 0.05   # where it was
    fresh = ChunkExecutor(cell.config)                                # disarmed, no stop
    fresh.on_robot_state(RobotState(0.0, START, np.zeros(3), np.array([0, 0, 0, 1.0]), 0.2))
    assert output.forward_command(fresh.step(0.01)) is None
    other = GripperOutput.from_config(ExecutorConfig(**ROBOTIQ))      # gripper_output none
    assert other.forward_command(command) is None
