"""The arming rules and the cell's safety inputs: each rule triggers, is named and counted.

`Arm` runs the executor at 100 Hz on simulated time; the robot follows the commands exactly,
and its tool sits at TOOL_M + 0.1 m per rad of joint_1 along x (a made-up but smooth map, so
that the workspace box has a tool that moves with the joints).
"""
import numpy as np
import pytest

from vla_insertion.core.config import ConfigError, ExecutorConfig
from vla_insertion.core.data import ActionChunkData, RobotState, SensorWindowData, ToolPose
from vla_insertion.core.executor import ChunkExecutor
from vla_insertion.core.executor.executor import ARM_REFUSALS
from vla_insertion.core.executor.safety import SafetyInputs, SafetySettings

T = 0.01
DT = 0.1
CHANNELS = ('fx', 'fy', 'fz', 'tx', 'ty', 'tz', 'distance')
QUAT = np.array([0.0, 0.0, 0.0, 1.0])
TOOL_M = np.array([-0.4, -0.2, 0.2])
BOX = {'workspace_min_m': (-0.6, -0.4, 0.0), 'workspace_max_m': (-0.3, 0.0, 0.5)}


class Arm:
    def __init__(self, **overrides) -> None:
        self.config = ExecutorConfig(**{'max_distance_from_measured_rad': 10.0, **overrides})
        self.ex = ChunkExecutor(self.config)
        self.t, self.q = 0.0, np.zeros(6)
        self.heartbeat = self.config.deadman_timeout_s > 0
        self.pose = True
        self.commands = []
        self.seq = 0
        self.feed()

    def tool(self) -> np.ndarray:
        return TOOL_M + np.array([0.1 * self.q[0], 0.0, 0.0])

    def feed(self) -> None:
        self.ex.on_robot_state(RobotState(self.t, self.q.copy(), self.tool(), QUAT, 0.0))
        if self.pose:
            self.ex.on_tool_pose(ToolPose(self.t, self.tool(), QUAT))
        self.ex.on_sensor_window(SensorWindowData(self.t, np.zeros((65, 7), np.float32), 65,
                                                  650.0, CHANNELS))
        if self.heartbeat:
            self.ex.on_heartbeat(True, self.t)

    def chunk(self, joint_1: float = 0.0, **flags) -> bool:
        self.seq += 1
        actions = np.zeros((8, 7), np.float32)
        actions[:, 0] = joint_1
        return self.ex.on_chunk(ActionChunkData(self.t - 0.02, actions, DT, sequence=self.seq,
                                                **flags), self.t)

    def run(self, seconds: float, joint_1: float | None = 0.0, **flags) -> None:
        for i in range(int(round(seconds / T))):
            if joint_1 is not None and i % 10 == 0:
                self.chunk(joint_1, **flags)
            self.t = round(self.t + T, 9)
            command = self.ex.step(self.t)
            self.commands.append(command)
            if command.valid and command.armed:
                self.q = command.positions.copy()
            self.feed()

    def arm(self) -> tuple[bool, str]:
        return self.ex.arm(self.t)

    def refused(self, reason: str) -> int:
        return self.ex.stats()[f'arming.refused.{reason}']


def ready(**overrides) -> Arm:
    arm = Arm(**overrides)
    arm.run(0.1)                       # a fresh chunk, state, window: everything may arm
    return arm


# --- untrained policies -------------------------------------------------------------------

@pytest.mark.parametrize('allow_untrained_vlm', [False, True])
def test_an_untrained_expert_is_never_armed(allow_untrained_vlm):
    arm = Arm(allow_untrained_vlm=allow_untrained_vlm)
    arm.run(0.1, untrained=True, features_untrained=True)
    ok, message = arm.arm()
    assert not ok and 'untrained' in message and 'never armed' in message
    assert arm.refused('untrained_expert') == 1
    assert arm.ex.stats()['untrained'] == 'untrained_expert'
    arm.run(0.3, joint_1=0.3, untrained=True)               # previewed, never sent
    assert not any(c.to_robot for c in arm.commands)
    assert arm.commands[-1].positions[0] > 0.0              # the preview follows it


def test_an_untrained_vlm_arms_only_where_the_parameter_allows_it():
    arm = Arm()
    arm.run(0.1, features_untrained=True)
    ok, message = arm.arm()
    assert not ok and 'allow_untrained_vlm' in message
    assert arm.refused('untrained_vlm') == 1
    allowed = Arm(allow_untrained_vlm=True)
    allowed.run(0.1, features_untrained=True)
    ok, message = allowed.arm()
    assert ok and 'UNTRAINED VLM' in message               # armed, and it says why
    assert allowed.ex.stats()['arming.allow_untrained_vlm'] is True
    trained = ready()
    assert trained.arm() == (True, 'armed')


def test_an_untrained_chunk_stops_an_executor_armed_before_it():
    arm = Arm()
    assert arm.arm() == (True, 'armed')                      # armed before any chunk
    arm.run(0.3, joint_1=0.3, untrained=True)
    assert not arm.ex.armed and arm.ex.stats()['stops.untrained_expert'] == 1
    assert not any(c.armed and not c.hold for c in arm.commands)   # it never followed


def test_start_armed_never_arms_an_untrained_policy():
    arm = Arm(start_armed=True)
    arm.run(0.5, untrained=True)
    assert not arm.ex.armed and arm.ex.stats()['stops.untrained_expert'] == 0
    trained = Arm(start_armed=True)
    trained.run(0.5)
    assert trained.ex.armed


# --- stale inputs -------------------------------------------------------------------------

def test_arming_is_refused_while_an_input_is_stale():
    arm = ready()
    arm.ex.on_robot_state(RobotState(arm.t, arm.q, TOOL_M, QUAT, 0.0))
    assert arm.ex.arm(arm.t + 0.5)[0] is False and arm.refused('robot_state_too_old') == 1
    arm = Arm()
    arm.run(0.1)
    arm.t += 0.8                                               # chunks stop for 0.8 s
    arm.feed()
    ok, message = arm.arm()
    assert not ok and 'chunk_timeout_s' in message and arm.refused('chunks_stale') == 1
    fresh = Arm(require_sensor=True)
    fresh.ex = ChunkExecutor(fresh.config)                    # no window yet
    fresh.ex.on_robot_state(RobotState(0.0, np.zeros(6), TOOL_M, QUAT, 0.0))
    assert not fresh.ex.arm(0.0)[0] and fresh.ex.stats()['arming.refused.sensor_too_old'] == 1
    empty = ChunkExecutor(ExecutorConfig())
    assert empty.arm(0.0) == (False, 'no robot state received yet')
    assert empty.stats()['arming.refused.no_robot_state'] == 1


def test_every_refusal_reason_is_reported():
    stats = ChunkExecutor(ExecutorConfig()).stats()
    assert {k for k in stats if k.startswith('arming.refused.')} == \
        {f'arming.refused.{r}' for r in ARM_REFUSALS}
    arm = Arm()
    arm.run(0.1, features_untrained=True)
    ok, message = arm.arm()
    stats = arm.ex.stats()
    assert stats['arming.refusal'] == message and 'arming refused' in stats['message']
    arm.run(0.1)
    assert arm.arm() == (True, 'armed') and arm.ex.stats()['arming.refusal'] == ''


# --- e-stop -------------------------------------------------------------------------------

def test_an_estop_stops_at_once_latches_and_forbids_arming_until_released_and_reset():
    arm = ready(estop_input=True)
    ok, message = arm.arm()
    assert not ok and 'e-stop' in message and arm.refused('estop_unknown') == 1
    arm.ex.on_estop(False)
    assert arm.arm() == (True, 'armed')
    arm.run(0.5, joint_1=0.5)
    mark = len(arm.commands)
    arm.ex.on_estop(True)
    arm.run(0.5, joint_1=0.5)
    assert arm.commands[mark].stop == 'estop'                 # the next step
    assert arm.ex.fault == 'estop' and not arm.ex.armed
    stats = arm.ex.stats()
    assert stats['stops.estop'] == 1 and stats['estop'] == 'active' and stats['gate.estop'] > 0
    assert arm.arm()[0] is False and arm.refused('estop_active') == 1
    assert arm.ex.reset_fault() == (False, 'the e-stop is still active: release it first')
    arm.ex.on_estop(False)
    assert arm.arm()[0] is False and arm.refused('fault') == 1   # released, not yet reset
    assert arm.ex.reset_fault()[0]
    arm.run(0.1, joint_1=0.5)
    assert arm.arm() == (True, 'armed')


def test_an_active_estop_survives_an_episode_reset():
    arm = ready()
    arm.ex.on_estop(True)
    arm.ex.reset()
    assert arm.ex.fault == 'estop'
    arm.run(0.1)
    assert not arm.arm()[0]


# --- deadman ------------------------------------------------------------------------------

def test_the_deadman_stops_on_release_and_on_silence_and_must_be_held_to_arm():
    arm = Arm(deadman_timeout_s=0.2)
    arm.heartbeat = False
    arm.run(0.3)
    ok, message = arm.arm()
    assert not ok and 'deadman' in message and arm.refused('deadman') == 1
    arm.heartbeat = True
    arm.run(0.1)
    assert arm.arm() == (True, 'armed')
    arm.run(0.3, joint_1=0.3)
    mark = len(arm.commands)
    arm.ex.on_heartbeat(False, arm.t)                          # released
    arm.heartbeat = False
    arm.run(0.1, joint_1=0.3)
    assert arm.commands[mark].stop == 'deadman' and not arm.ex.armed
    assert arm.ex.stats()['deadman'] == 'released'
    arm.heartbeat = True
    arm.run(0.1, joint_1=0.3)
    assert arm.arm() == (True, 'armed')                        # held again: may re-arm
    arm.run(0.3, joint_1=0.3)
    last = arm.t
    arm.heartbeat = False                                      # the console goes silent
    arm.run(0.5, joint_1=0.3)
    stopped = [c for c in arm.commands if c.stop == 'deadman' and c.stamp_s > last]
    assert stopped and stopped[0].stamp_s <= last + 0.2 + T + 1e-9
    assert arm.ex.stats()['stops.deadman'] == 2


def test_no_deadman_by_default():
    arm = ready()
    arm.ex.on_heartbeat(False, arm.t)
    assert arm.arm() == (True, 'armed') and arm.ex.stats()['deadman'] == 'off'


# --- workspace box ------------------------------------------------------------------------

def test_the_tool_stops_inside_the_box_with_its_stopping_distance():
    # joint_1 towards +1 rad moves the tool +0.1 m in x: the box ends at x = -0.3, i.e. 1 rad.
    # The executor brakes joint_1 at 4 rad/s^2, the tool at 0.4 m/s^2: assume less.
    arm = ready(workspace_decel_mps2=0.2, **BOX)
    assert arm.arm() == (True, 'armed')
    arm.run(3.0, joint_1=3.0)
    stats = arm.ex.stats()
    assert arm.ex.fault == 'workspace' and stats['stops.workspace'] == 1
    assert stats['gate.workspace'] > 0 and not arm.ex.armed
    assert arm.tool()[0] < BOX['workspace_max_m'][0]           # it came to rest inside
    assert arm.q[0] > 0.5                                      # after moving most of the way
    ok, message = arm.arm()
    assert not ok and arm.refused('fault') == 1
    assert arm.ex.reset_fault()[0]
    arm.run(0.1, joint_1=0.0)
    assert arm.arm() == (True, 'armed')                        # inside: may re-arm


def test_arming_needs_the_tool_inside_the_box_and_a_fresh_pose():
    arm = ready(**BOX)
    arm.q[0] = 2.0                                             # the tool at x = -0.2
    arm.feed()
    ok, message = arm.arm()
    assert not ok and 'outside the workspace box' in message
    assert arm.refused('outside_workspace') == 1
    blind = Arm(**BOX)
    blind.pose = False
    blind.run(0.2)
    ok, message = blind.arm()
    assert not ok and 'robot/pose' in message and blind.refused('no_tool_pose') == 1


def test_a_stale_pose_holds_when_a_box_is_set():
    arm = ready(**BOX)
    assert arm.arm()[0]
    arm.run(0.2, joint_1=0.2)
    arm.pose = False
    arm.run(0.3, joint_1=0.2)
    assert arm.ex.stats()['stops.tool_pose_too_old'] == 1 and not arm.ex.armed


def test_the_stopping_point_adds_reaction_and_braking_distance():
    safety = SafetyInputs(SafetySettings(False, 0.0, (-1.0,) * 3, (1.0,) * 3, 2.0, 0.03, 0.1))
    assert safety.on_tool_pose(ToolPose(0.0, np.zeros(3), QUAT))
    # a pose 1 ms later, 1 mm off (a burst, clock jitter): no velocity from it
    assert safety.on_tool_pose(ToolPose(0.001, np.array([0.001, 0.0, 0.0]), QUAT))
    np.testing.assert_allclose(safety.stopping_point(0.001), [0.001, 0.0, 0.0])
    assert safety.on_tool_pose(ToolPose(0.04, np.array([0.04, 0.0, -0.008]), QUAT))
    v = np.array([1.0, 0.0, -0.2])
    expected = np.array([0.04, 0.0, -0.008]) + v * 0.03 + v * np.abs(v) / 4.0
    np.testing.assert_allclose(safety.stopping_point(0.04), expected)
    assert not safety.on_tool_pose(ToolPose(0.035, np.zeros(3), QUAT))      # out of order
    assert not safety.on_tool_pose(ToolPose(0.05, np.array([np.nan, 0, 0]), QUAT))


def test_a_pose_jump_is_a_stop_of_its_own_not_a_workspace_fault():
    # the sim puts the arm at the next episode's start pose in no time (a robot re-homed by
    # another program looks the same): 0.15 m within a few control periods, no motion of an arm
    arm = ready(**BOX)
    assert arm.arm()[0]
    arm.run(0.2, joint_1=0.0)
    jumped = TOOL_M + np.array([0.0, -0.15, 0.0])

    def hold_there(seconds: float) -> None:
        for _ in range(int(round(seconds / T))):
            arm.t = round(arm.t + T, 9)
            arm.ex.on_robot_state(RobotState(arm.t, arm.q.copy(), jumped, QUAT, 0.0))
            arm.ex.on_tool_pose(ToolPose(arm.t, jumped, QUAT))
            arm.ex.on_sensor_window(SensorWindowData(arm.t, np.zeros((65, 7), np.float32), 65,
                                                     650.0, CHANNELS))
            arm.ex.step(arm.t)

    hold_there(0.1)
    stats = arm.ex.stats()
    assert stats['stops.pose_jump'] == 1 and stats['inputs.pose.jump'] == 1
    assert not arm.ex.armed and arm.ex.fault == '' and stats['stops.workspace'] == 0
    arm.chunk()
    hold_there(0.05)                   # the velocity restarted at the jump: it may be re-armed
    assert arm.arm() == (True, 'armed')


def test_fast_but_possible_motion_is_no_jump():
    safety = SafetyInputs(SafetySettings(False, 0.0, (-10.0,) * 3, (10.0,) * 3, 2.0, 0.03, 0.1))
    for i in range(5):                          # 1.5 m/s: fast, yet below max_tool_speed_mps
        assert safety.on_tool_pose(ToolPose(0.04 * i, np.array([0.06 * i, 0.0, 0.0]), QUAT))
        assert not safety.take_jump()
    assert safety.on_tool_pose(ToolPose(0.2, np.array([0.5, 0.0, 0.0]), QUAT))   # 6.5 m/s
    assert safety.take_jump() and not safety.take_jump()
    np.testing.assert_allclose(safety.stopping_point(0.2), [0.5, 0.0, 0.0])


def test_the_box_is_validated():
    with pytest.raises(ConfigError, match='workspace'):
        ExecutorConfig(workspace_min_m=(0.0, 0.0, 0.0), workspace_max_m=())
    with pytest.raises(ConfigError, match='workspace'):
        ExecutorConfig(workspace_min_m=(0.0, 0.0, 1.0), workspace_max_m=(1.0, 1.0, 0.5))
    with pytest.raises(ConfigError, match='deadman'):
        ExecutorConfig(deadman_timeout_s=-1.0)
