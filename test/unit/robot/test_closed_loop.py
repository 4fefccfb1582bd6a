"""The receiver follows the real ChunkExecutor in closed loop on the sim servo, over ZMQ.

    chunks (8 x 7, 10 Hz) ──> ChunkExecutor (params defaults, armed) ──> command_message
         ^                      ^ robot state, sensor window            │ CommandCodecV1
         │                      │ (as core/sim/loop.py feeds it)        v ZMQ PUSH 127.0.0.1
         └──────── LiveServo <── ServoBackend <── CommandReceiver (PULL, checks, watchdog)

On the wall clock at the executor's 100 Hz, with the receiver's default checks (age, limits).
The executor's commands obey the limits it was built with, so the receiver, checking the same
limits, refuses none of them; the servo converges on the commanded positions, and holds when
the commands stop. Waits are bounded and on conditions; nothing asserts a timing.
"""
from __future__ import annotations

import secrets
import threading
import time

import numpy as np
import pytest
from support import free_port, wait_for
import zmq

from vla_insertion.core.data import (
    ActionChunkData, DEFAULT_SENSOR_CHANNELS, RobotState, SensorWindowData)
from vla_insertion.core.executor import command_message
from vla_insertion.core.orchestration.builders import executor_settings, SIM_EXECUTOR
from vla_insertion.core.robot import (
    CommandLimits, CommandReceiver, ReceiverConfig, ServoBackend)
from vla_insertion.core.robot.checks import LIMIT_CAUSES
from vla_insertion.core.sim.kinematics import HOME_RAD
from vla_insertion.core.sim.live import LiveServo
from vla_insertion.core.sim.servo import HOLD_TIMEOUT
from vla_insertion.core.ticker import DeadlineTicker
from vla_insertion.core.wire import CommandCodecV1

pytestmark = pytest.mark.slow          # a few seconds of a closed loop on the wall clock
# Two goals in turn, 0.2 rad apart: several chunks each, and every joint turns round.
GOALS = (HOME_RAD + np.array([0.2, -0.15, 0.1, 0.12, -0.1, 0.2]),
         HOME_RAD + np.array([0.0, 0.05, -0.1, -0.05, 0.1, 0.0]))


class ExecutorSide:
    """What the chunk_executor node does each control period, fed as PipelineLoop feeds it."""

    def __init__(self, port: int, servo: LiveServo, t0: float) -> None:
        self.settings = executor_settings(None, overrides=SIM_EXECUTOR)
        self.executor = self.settings.build()
        self.servo, self.t0 = servo, t0
        self.codec = CommandCodecV1()
        self.session, self.sequence, self.chunks = secrets.randbits(32), 0, 0
        self.context = zmq.Context(1)
        self.push = self.context.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 0)
        self.push.connect(f'tcp://127.0.0.1:{port}')
        self.last = None                       # the last command sent
        self.goal = GOALS[0]                   # where the chunks lead

    def step(self) -> None:
        now = time.monotonic() - self.t0
        state = self.servo.state_at(now)         # the robot state a bridge would publish
        self.executor.on_robot_state(RobotState(
            stamp_s=now, joint_positions_rad=state.positions, tool_position_m=np.zeros(3),
            tool_orientation_xyzw=np.array([0.0, 0.0, 0.0, 1.0]), gripper=state.gripper))
        self.executor.on_sensor_window(SensorWindowData(   # no contact: zero forces
            stamp_s=now, samples=np.zeros((65, 7), np.float32), valid_samples=65,
            sample_rate_hz=650.0, channel_names=DEFAULT_SENSOR_CHANNELS))
        if self.sequence % 10 == 0:             # the expert's 10 Hz: the goal, 8 x 0.1 s
            actions = np.tile(np.append(self.goal, 1.0), (8, 1)).astype(np.float32)
            self.executor.on_chunk(ActionChunkData(stamp_s=now, actions=actions, dt_s=0.1,
                                                   sequence=self.chunks), now)
            self.chunks += 1
        command = self.executor.step(now)
        self.sequence += 1                      # every period, sent or not (as the node)
        message = command_message(command, self.settings.config, session=self.session,
                                  sequence=self.sequence, sender_time_s=now)
        if message is not None and command.armed:
            self.push.send(self.codec.encode(message))
            self.last = message

    def close(self) -> None:
        self.push.close(linger=0)
        self.context.term()


def test_the_sim_servo_follows_the_executor_through_the_receiver_and_holds_after():
    t0 = time.monotonic()
    servo = LiveServo()
    port = free_port()
    sender = ExecutorSide(port, servo, t0)
    receiver = CommandReceiver(ReceiverConfig(port=port), ServoBackend(servo, t0),
                               CommandLimits.from_settings(sender.settings))
    receiver.start()
    stop = threading.Event()

    def converged(goal: np.ndarray) -> bool:
        """Return whether the commands reached the goal and the servo the commands."""
        last = sender.last
        if last is None or np.abs(np.asarray(last.positions_rad) - goal).max() > 1e-4:
            return False
        where = servo.state_at(time.monotonic() - t0).positions
        return bool(np.abs(where - np.asarray(last.positions_rad)).max() < 1e-3)

    reached = []

    def control() -> None:
        ticker = DeadlineTicker(sender.settings.config.control_rate_hz, stop)
        while len(reached) < len(GOALS) and ticker.wait():
            sender.step()
            if converged(sender.goal):
                reached.append(sender.goal)
                sender.goal = GOALS[min(len(reached), len(GOALS) - 1)]
    thread = threading.Thread(target=control, daemon=True)
    try:
        thread.start()
        thread.join(30.0)
        assert not thread.is_alive(), f'the servo reached {len(reached)} goals in 30 s'
        stats = receiver.stats()
        assert stats['followed'] > 50, stats
        assert all(stats[f'drops.{c}'] == 0 for c in LIMIT_CAUSES), stats
        assert stats['drops.late'] == 0 and stats['drops.stale_session'] == 0, stats
        # the commands stopped: the receiver's watchdog and the servo hold where it got to
        assert wait_for(lambda: receiver.hold_reason == HOLD_TIMEOUT)
        assert wait_for(lambda: servo.state_at(time.monotonic() - t0).hold_reason
                        == HOLD_TIMEOUT)
        assert wait_for(lambda: not servo.state_at(time.monotonic() - t0).velocities.any())
        np.testing.assert_allclose(servo.state_at(time.monotonic() - t0).positions, GOALS[-1],
                                   atol=2e-3)
    finally:
        stop.set()
        thread.join(5.0)
        receiver.close()
        sender.close()
