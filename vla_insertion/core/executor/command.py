"""JointCommand -> `command_v1` message for the robot PC (docs/wire.md), and its sender."""
from __future__ import annotations

import numpy as np
import zmq

from vla_insertion.core.config import ExecutorConfig
from vla_insertion.core.data import NUM_JOINTS
from vla_insertion.core.executor.executor import JointCommand
from vla_insertion.core.wire.command import (
    CommandCodecV1, CommandMessage, FLAG_ARMED, FLAG_HOLD)
from vla_insertion.core.wire.curve import CurveLink, link_keys


def command_message(command: JointCommand, config: ExecutorConfig, *, session: int,
                    sequence: int, sender_time_s: float) -> CommandMessage | None:
    """Build the wire message for one command; None when there is nothing valid to send.

    ARMED only when the executor is armed (a disarmed executor's preview reaches the robot
    without it, and the robot holds); HOLD whenever the executor holds or a stop is in force.
    During a stop the message says where the executor's braking ends, at rest (docs/wire.md:
    HOLD's positions are where the executor expects the robot to stop), not the preview.
    """
    if not command.valid:
        return None
    hold = command.hold or bool(command.stop)
    flags = (FLAG_ARMED if command.armed else 0) | (FLAG_HOLD if hold else 0)
    if command.stop:
        positions, velocities = command.rest[:NUM_JOINTS], np.zeros(NUM_JOINTS)
        gripper = float(min(max(command.rest[NUM_JOINTS], 0.0), 1.0))
    else:
        positions, velocities, gripper = command.positions, command.velocities, command.gripper
    return CommandMessage(
        sender_time_s=float(sender_time_s),
        positions_rad=tuple(float(p) for p in positions),
        velocities_rad_s=tuple(float(v) for v in velocities),
        gripper=float(gripper), lead_s=float(config.actuator_lead_s),
        timeout_s=float(config.command_timeout_s), flags=flags,
        session=int(session) & 0xFFFFFFFF, sequence=int(sequence) & 0xFFFFFFFF)


class CommandSender:
    """A ZMQ PUSH to the robot PC's command_v1 PULL that never queues a stale command."""

    def __init__(self, config: ExecutorConfig, session: int) -> None:
        self._config, self._session = config, session
        self._codec = CommandCodecV1()
        self._context = zmq.Context(1)
        self._push = self._context.socket(zmq.PUSH)
        self._push.setsockopt(zmq.LINGER, 0)
        self._push.setsockopt(zmq.SNDHWM, 2)       # a command is stale within a period
        self._push.setsockopt(zmq.IMMEDIATE, 1)    # queue nothing while no robot listens
        # CURVE when a keys folder is set (docs/wire.md); None keys: plain TCP
        CurveLink(link_keys(config.curve_keys_dir, 'command', 'chunk_executor')).secure(
            self._push)
        self.endpoint = f'tcp://{config.robot_ip}:{config.command_port}'
        self._push.connect(self.endpoint)
        self.sent = 0

    def send(self, command: JointCommand, *, sequence: int, now_s: float) -> bool:
        """Send one command now; False when no robot takes it (not connected, not reading)."""
        message = command_message(command, self._config, session=self._session,
                                  sequence=sequence, sender_time_s=now_s)
        try:
            self._push.send(self._codec.encode(message), zmq.NOBLOCK)
        except zmq.Again:
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        self._push.close(linger=0)
        self._context.term()
