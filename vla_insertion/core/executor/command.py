"""JointCommand -> `command_v1` message for the robot PC (docs/wire.md)."""
from __future__ import annotations

import numpy as np

from vla_insertion.core.config import ExecutorConfig
from vla_insertion.core.data import NUM_JOINTS
from vla_insertion.core.executor.executor import JointCommand
from vla_insertion.core.wire.command import CommandMessage, FLAG_ARMED, FLAG_HOLD


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
