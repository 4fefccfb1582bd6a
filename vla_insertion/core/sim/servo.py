"""The arm's joint servo: follows position commands within velocity and acceleration limits.

A command (docs/wire.md, `command_v1`) asks for joint positions and velocities `lead_s` after it
arrives. On arrival the servo plans a cubic (Hermite) reference from where its reference is now
to the commanded point at arrival + lead; after that point the reference stays at the commanded
position with zero velocity (the last velocity is never extrapolated). The joints track the
reference as a first-order lag with velocity feed-forward,

    v_des = v_ref + (q_ref - q) / time_constant_s

whose correction term is capped by the braking velocity sqrt(2 a_max |q_ref - q|) (so a large
step stops on the target instead of overshooting it), then clipped to the joint's velocity limit,
and the velocity changes by at most a_max * dt per step. `step(now_s, dt_s)` integrates one fixed
period (semi-implicit Euler), deterministic for a given sequence of commands and times.

The servo holds - decelerates within its acceleration limits to zero velocity and stays there -
when a command has HOLD set, when a command is not ARMED (it is otherwise ignored), when no
command arrived within the last command's `timeout_s`, before the first command, and while the
cell settles between episodes. The gripper moves at a constant rate (`gripper_move_s` from
open to closed) toward the target of the last followed command and stops where it is on hold.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import math

import numpy as np

from vla_insertion.core.config import require, require_positive
from vla_insertion.core.data import NUM_JOINTS
from vla_insertion.core.wire.command import CommandMessage

# Why the servo is holding (None while it follows a command).
HOLD_NO_COMMAND = 'no_command'   # nothing received since the start or the last reset
HOLD_UNARMED = 'unarmed'         # the newest command did not have ARMED set
HOLD_FLAG = 'hold'               # the newest command had HOLD set
HOLD_TIMEOUT = 'timeout'         # no command within the last command's timeout_s
HOLD_FORCED = 'forced'           # the cell holds the arm (between episodes)


@dataclass(frozen=True)
class ServoParams:
    """Limits and dynamics of the joint servo (UR5e-like, a little conservative)."""

    max_velocity_rad_s: tuple[float, ...] = (2.0, 2.0, 3.0, 3.0, 3.0, 3.0)  # per joint [rad/s]
    max_acceleration_rad_s2: tuple[float, ...] = (8.0,) * 6  # per joint [rad/s^2]
    time_constant_s: float = 0.02   # first-order lag of the tracking [s]
    gripper_move_s: float = 0.2     # gripper travel time from open to closed [s]

    def __post_init__(self) -> None:
        for name in ('max_velocity_rad_s', 'max_acceleration_rad_s2'):
            values = getattr(self, name)
            require(len(values) == NUM_JOINTS, f'{name} needs {NUM_JOINTS} values, got {values}')
            for v in values:
                require_positive(name, v)
        require_positive('time_constant_s', self.time_constant_s)
        require_positive('gripper_move_s', self.gripper_move_s)


@dataclass(frozen=True)
class ServoCommand:
    """One joint command as the servo takes it: SI units, times relative to arrival."""

    positions: np.ndarray          # (6,) joint targets [rad]
    velocities: np.ndarray         # (6,) joint velocities at the target [rad/s]
    gripper: float = 1.0           # gripper target, 0 open .. 1 closed
    lead_s: float = 0.0            # reach the target this long after arrival [s]
    timeout_s: float = 0.1         # hold if no newer command arrives within [s]
    armed: bool = True             # without it the servo holds
    hold: bool = False             # decelerate within limits and hold

    @classmethod
    def from_message(cls, msg: CommandMessage) -> ServoCommand:
        return cls(positions=np.asarray(msg.positions_rad, dtype=np.float64),
                   velocities=np.asarray(msg.velocities_rad_s, dtype=np.float64),
                   gripper=msg.gripper, lead_s=msg.lead_s, timeout_s=msg.timeout_s,
                   armed=msg.armed, hold=msg.hold)

    @classmethod
    def from_any(cls, command, lead_s: float = 0.0, timeout_s: float = 0.1) -> ServoCommand:
        """Adapt any command-like object (positions, velocities, gripper, armed, hold)."""
        if isinstance(command, cls):
            return command
        return cls(positions=np.asarray(command.positions, dtype=np.float64),
                   velocities=np.asarray(command.velocities, dtype=np.float64),
                   gripper=float(command.gripper),
                   lead_s=float(getattr(command, 'lead_s', lead_s)),
                   timeout_s=float(getattr(command, 'timeout_s', timeout_s)),
                   armed=bool(command.armed), hold=bool(command.hold))


@dataclass
class _Reference:
    """Cubic q(t) = c0 + c1 u + c2 u^2 + c3 u^3, u = t - start_s, until end_s; then c_end."""

    start_s: float
    end_s: float
    coeffs: np.ndarray             # (4, 6)
    end: np.ndarray                # (6,) position after end_s [rad]

    def at(self, t_s: float) -> tuple[np.ndarray, np.ndarray]:
        if t_s >= self.end_s:
            return self.end, np.zeros(NUM_JOINTS)
        u = max(0.0, t_s - self.start_s)
        c0, c1, c2, c3 = self.coeffs
        return c0 + u * (c1 + u * (c2 + u * c3)), c1 + u * (2.0 * c2 + u * 3.0 * c3)


def hermite(start_s: float, q0: np.ndarray, v0: np.ndarray, duration_s: float,
            q1: np.ndarray, v1: np.ndarray) -> _Reference:
    """Cubic from (q0, v0) at start_s to (q1, v1) duration_s later."""
    if duration_s <= 0.0:
        return _Reference(start_s, start_s, np.zeros((4, NUM_JOINTS)), q1.copy())
    t = duration_s
    dq = q1 - q0
    c2 = (3.0 * dq - (2.0 * v0 + v1) * t) / t ** 2
    c3 = (-2.0 * dq + (v0 + v1) * t) / t ** 3
    return _Reference(start_s, start_s + t, np.stack([q0, v0, c2, c3]), q1.copy())


@dataclass
class JointServo:
    """Joint positions and velocities of the arm plus the gripper, integrated step by step."""

    params: ServoParams = field(default_factory=ServoParams)

    def __post_init__(self) -> None:
        self._v_max = np.asarray(self.params.max_velocity_rad_s)
        self._a_max = np.asarray(self.params.max_acceleration_rad_s2)
        self.reset(np.zeros(NUM_JOINTS), gripper=1.0)

    def reset(self, q: np.ndarray, gripper: float) -> None:
        """Place the arm at rest at q (6,) [rad], gripper 0..1, holding until a command comes."""
        self.q = np.array(q, dtype=np.float64)
        self.v = np.zeros(NUM_JOINTS)
        self.gripper = float(gripper)
        self.gripper_target = float(gripper)
        self.hold_reason: str | None = HOLD_NO_COMMAND
        self._reference: _Reference | None = None
        self._deadline_s = math.inf
        self._forced = False

    @property
    def holding(self) -> bool:
        return self.hold_reason is not None

    def force_hold(self, on: bool) -> None:
        """Hold and ignore commands while `on` (the cell between episodes)."""
        self._forced = on
        if on:
            self._start_hold(HOLD_FORCED)

    def command(self, cmd: ServoCommand, arrival_s: float) -> None:
        """Take a command that arrived at arrival_s (the servo's time base) [s]."""
        if self._forced:
            return
        if not cmd.armed:
            self._start_hold(HOLD_UNARMED)
            return
        if cmd.hold:
            self._start_hold(HOLD_FLAG)
            return
        if self._reference is not None and self.hold_reason is None:
            q0, v0 = self._reference.at(arrival_s)
        else:       # leaving a hold: start the reference where the arm is
            q0, v0 = self.q, self.v
        self._reference = hermite(arrival_s, q0, v0, cmd.lead_s, cmd.positions, cmd.velocities)
        self._deadline_s = arrival_s + cmd.timeout_s
        self.gripper_target = min(1.0, max(0.0, float(cmd.gripper)))
        self.hold_reason = None

    def _start_hold(self, reason: str) -> None:
        self.hold_reason = reason
        self._reference = None
        self._deadline_s = math.inf
        self.gripper_target = self.gripper

    def step(self, now_s: float, dt_s: float) -> None:
        """Integrate from now_s to now_s + dt_s."""
        t = now_s + dt_s
        if self.hold_reason is None and t > self._deadline_s:
            self._start_hold(HOLD_TIMEOUT)
        if self.hold_reason is not None:
            v_des = np.zeros(NUM_JOINTS)
        else:
            q_ref, v_ref = self._reference.at(t)
            err = q_ref - self.q
            correction = err / self.params.time_constant_s
            brake = np.sqrt(2.0 * self._a_max * np.abs(err))
            # np.minimum/maximum: np.clip's dispatch costs more than the arithmetic here
            v_des = v_ref + np.maximum(np.minimum(correction, brake), -brake)
            v_des = np.maximum(np.minimum(v_des, self._v_max), -self._v_max)
        dv_max = self._a_max * dt_s
        self.v += np.maximum(np.minimum(v_des - self.v, dv_max), -dv_max)
        self.q += self.v * dt_s
        step = dt_s / self.params.gripper_move_s
        self.gripper += min(step, max(-step, self.gripper_target - self.gripper))
