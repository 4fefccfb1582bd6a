"""What the receiver hands accepted commands and holds to: the robot, simulated or logged.

A backend implements three calls, made from the receiver's threads under its lock (one at a
time), with times on the receiver's monotonic clock [s]:

    follow(command, arrival_s)  an accepted ARMED command without HOLD: reach its positions
                                (and velocities) lead_s after arrival_s; its timeout_s is the
                                one the receiver applies
    hold(reason, now_s)         decelerate within the robot's limits to a stop and stay there
                                until the next follow(); reason: hold, unarmed, timeout, refused
    position(now_s)             where the arm is, (7,) joints [rad] then the gripper, or None

The receiver calls hold() only when the reason changes, not for every HOLD command. A vendor
backend (docs/wire.md, "A reference robot side") streams its servo call from its own control
loop and takes these as its setpoints; the two here are a simulated servo and a dry run.
"""
from __future__ import annotations

import logging
import math
from typing import Protocol

import numpy as np

from vla_insertion.core.data import NUM_JOINTS
from vla_insertion.core.sim.servo import HOLD_TIMEOUT, HOLD_UNARMED, ServoCommand
from vla_insertion.core.wire.command import CommandMessage

_LOG = logging.getLogger(__name__)


class Backend(Protocol):
    """The robot behind the receiver (see the module docstring)."""

    def follow(self, command: CommandMessage, arrival_s: float) -> None: ...

    def hold(self, reason: str, now_s: float) -> None: ...

    def position(self, now_s: float) -> np.ndarray | None: ...


class ServoTarget(Protocol):
    """A simulated arm on the wall clock: core/sim/live.py's LiveServo or sim_cell's LiveCell."""

    def command(self, cmd: ServoCommand, arrival_s: float) -> None: ...

    def joints_at(self, t_s: float) -> np.ndarray: ...


class ServoBackend:
    """Commands into the sim's JointServo (core/sim/servo.py) through a LiveServo or LiveCell.

    `t0_s`: the receiver clock's time at the target's time 0 (target time = now - t0).
    """

    def __init__(self, target: ServoTarget, t0_s: float) -> None:
        self.target = target
        self._t0 = t0_s

    def follow(self, command: CommandMessage, arrival_s: float) -> None:
        self.target.command(ServoCommand.from_message(command), arrival_s - self._t0)

    def hold(self, reason: str, now_s: float) -> None:
        if reason == HOLD_TIMEOUT:
            # The servo holds by itself at the same deadline (the timeout_s it was given, which
            # is the receiver's); a HOLD now would only rename its reason.
            return
        zeros = np.zeros(NUM_JOINTS)
        self.target.command(ServoCommand(positions=zeros, velocities=zeros,
                                         armed=reason != HOLD_UNARMED, hold=True),
                            now_s - self._t0)

    def position(self, now_s: float) -> np.ndarray:
        return self.target.joints_at(now_s - self._t0)


class DryRunBackend:
    """Moves nothing: logs what it would command.

    Every hold, and the command being followed at most every `log_period_s` (INFO; every
    command at DEBUG). It does not know where the arm is, so a session's first command is not
    checked against it.
    """

    def __init__(self, log_period_s: float = 1.0, logger: logging.Logger = _LOG) -> None:
        self.log_period_s = log_period_s
        self.followed = 0
        self.holds = 0
        self.last: CommandMessage | None = None    # the last command followed
        self._log = logger
        self._next_info_s = -math.inf

    def follow(self, command: CommandMessage, arrival_s: float) -> None:
        self.followed += 1
        self.last = command
        text = (f'would servo to q {_rad(command.positions_rad)} rad, dq '
                f'{_rad(command.velocities_rad_s)} rad/s, gripper {command.gripper:.3f} in '
                f'{command.lead_s * 1e3:.1f} ms (command {command.sequence}, hold after '
                f'{command.timeout_s:.3f} s without a newer one)')
        if arrival_s >= self._next_info_s:
            self._next_info_s = arrival_s + self.log_period_s
            self._log.info(text)
        else:
            self._log.debug(text)

    def hold(self, reason: str, now_s: float) -> None:
        self.holds += 1
        self._next_info_s = -math.inf       # the next command followed is logged
        self._log.info(f'would stop and hold ({reason})')

    def position(self, now_s: float) -> None:
        return None


def _rad(values) -> str:
    return '[' + ' '.join(f'{v:+.4f}' for v in values) + ']'
