"""JointCommand -> `command_v1` message for the robot PC (docs/wire.md)."""
from __future__ import annotations

from vla_insertion.core.config import ExecutorConfig
from vla_insertion.core.executor.executor import JointCommand
from vla_insertion.core.wire.command import CommandMessage, FLAG_ARMED, FLAG_HOLD


def command_message(command: JointCommand, config: ExecutorConfig, *, session: int,
                    sequence: int, sender_time_s: float) -> CommandMessage | None:
    """Build the wire message for one command; None when there is nothing valid to send.

    ARMED only when the executor is armed (a disarmed executor's preview reaches the robot
    without it, and the robot holds); HOLD whenever the executor holds.
    """
    if not command.valid:
        return None
    flags = (FLAG_ARMED if command.armed else 0) | (FLAG_HOLD if command.hold else 0)
    return CommandMessage(
        sender_time_s=float(sender_time_s),
        positions_rad=tuple(float(p) for p in command.positions),
        velocities_rad_s=tuple(float(v) for v in command.velocities),
        gripper=float(command.gripper), lead_s=float(config.actuator_lead_s),
        timeout_s=float(config.command_timeout_s), flags=flags,
        session=int(session) & 0xFFFFFFFF, sequence=int(sequence) & 0xFFFFFFFF)
