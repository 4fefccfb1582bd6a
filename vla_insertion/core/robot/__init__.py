"""The robot side of the executor's `command_v1` stream, free of ROS (docs/wire.md).

Modules:
    checks     what every command must pass: session and sequence, age, the joint limits
    receiver   CommandReceiver: the PULL socket, the checks, the hold watchdog, a backend
    backends   what accepted commands go to: the sim's joint servo, or a logging dry run

tools/robot_receiver.py is the reference program; sim_cell receives its commands through the
same CommandReceiver. A vendor's robot is one more backend (docs/wire.md shows the shape).
"""
from vla_insertion.core.robot.backends import Backend, DryRunBackend, ServoBackend
from vla_insertion.core.robot.checks import CHECK_CAUSES, CommandChecks, CommandLimits
from vla_insertion.core.robot.receiver import (
    CommandReceiver, HOLD_REASONS, HOLD_REFUSED, RECEIVER_CAUSES, ReceiverConfig)

__all__ = [
    'Backend', 'DryRunBackend', 'ServoBackend', 'CHECK_CAUSES', 'CommandChecks',
    'CommandLimits', 'CommandReceiver', 'HOLD_REASONS', 'HOLD_REFUSED', 'RECEIVER_CAUSES',
    'ReceiverConfig',
]
