"""What the robot side checks in every `command_v1` before the arm may move (docs/wire.md).

The chunk executor already limits what it sends (core/executor/limiter.py guarantees position,
velocity, acceleration and jerk); these checks are the robot's second line of defence against a
sender that is broken, late or not the one it should be. `CommandChecks.check` applies the rules
in this order and raises `Drop(cause)` at the first that fails, so every refused command is
counted under exactly one cause:

1. session and sequence: `stale_session` for a sender instance that was replaced (a new session
   id is an executor restart and starts over), `late` for a sequence number not newer than the
   last one received in the session (a repeat or a reordering; an equal number is late).
2. age, from the send time (the executor's clock) and the arrival time (ours):
   - `clock_offset_s` None (the default): the clocks are not shared. The bridges' clock model
     (core/bridge/clock.py, docs/wire.md "Clocks") maps the send time to our clock from the
     least delayed recent commands, so a command's age is its delay in excess of theirs: a
     command held up in a stalled network, a queue or a paused executor is `stale`. One-way
     timing cannot see a delay that every command has, and absorbs one that lasts (the offset
     follows it within seconds, as in the bridges); an executor clock that steps is re-based
     after 3 commands agree on it (the first 2: `future_stamp` / `past_stamp`).
   - `clock_offset_s` a number: the clocks are synchronised (PTP, chrony) and differ by this
     (sender minus receiver). The age is absolute, constant delays included; a send time more
     than 50 ms after its own arrival is `future_stamp`.
   Either way a command older than `max_age_s` on arrival is `stale`. `max_age_s` None turns
   the whole rule off: no send time is judged (sim_cell, whose servo follows what arrives).
3. limits, on ARMED commands only (the others hold the arm wherever it is, their positions are
   not followed): `position_limit` for a target outside a joint's [min_position, max_position]
   (the gripper's too), `velocity_limit` for a velocity above max_velocity, `step_limit` for a
   target further from the last accepted ARMED command of the session than the executor could
   have moved it: max_velocity x control period x the sequence numbers between them (the
   executor numbers every control period, sent or not). A session's first ARMED command has no
   such base; it is checked against where the arm is, when the backend knows it, with the
   executor's own rule (max_distance_from_measured_rad). The limits are the chunk_executor's
   joint_limits, not narrowed by its position_margin_rad: a second line, not the plan.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
import math
from typing import TYPE_CHECKING

import numpy as np

from vla_insertion.core.bridge.clock import FUTURE_STAMP, PAST_STAMP, SenderClock, TOLERANCE_S
from vla_insertion.core.bridge.receive import SessionTracker
from vla_insertion.core.bridge.stream import Drop, LATE, STALE_SESSION
from vla_insertion.core.config import require, require_non_negative, require_positive
from vla_insertion.core.data import NUM_JOINTS
from vla_insertion.core.wire.base import seq_delta
from vla_insertion.core.wire.command import CommandMessage

if TYPE_CHECKING:
    from vla_insertion.core.orchestration.builders import ExecutorSettings

STALE = 'stale'                     # older than max_age_s on arrival
POSITION_LIMIT = 'position_limit'   # a target outside a joint's position limits
VELOCITY_LIMIT = 'velocity_limit'   # a velocity above a joint's limit
STEP_LIMIT = 'step_limit'           # further from the last accepted target than allowed
LIMIT_CAUSES = (POSITION_LIMIT, VELOCITY_LIMIT, STEP_LIMIT)
# What the checks refuse, in the order they are applied (the decoder's causes come first).
CHECK_CAUSES = (STALE_SESSION, LATE, FUTURE_STAMP, PAST_STAMP, STALE) + LIMIT_CAUSES
# A velocity exactly at its limit passes: the executor's limiter produces exactly that.
_VELOCITY_SLACK = 1e-9              # relative [1]


@dataclass(frozen=True)
class CommandLimits:
    """The limits a command is re-checked against: 6 joints, then the gripper."""

    min_position: tuple[float, ...]   # (7,) lowest target [rad] per joint, gripper [0..1]
    max_position: tuple[float, ...]   # (7,) highest target [rad], gripper [0..1]
    max_velocity: tuple[float, ...]   # (7,) joint speeds [rad/s], gripper [1/s]
    period_s: float = 0.01            # the executor's control period: one sequence number [s]
    max_distance_rad: float = 0.15    # a session's first target: at most this far from the arm
    tolerance_rad: float = 1e-3       # slack of the step and distance checks (rounding) [rad]

    def __post_init__(self) -> None:
        n = NUM_JOINTS + 1
        for name in ('min_position', 'max_position', 'max_velocity'):
            values = getattr(self, name)
            require(len(values) == n and all(isinstance(v, (int, float)) and math.isfinite(v)
                                             for v in values),
                    f'{name} needs {n} finite numbers (6 joints, the gripper), got {values!r}')
        for name, lo, hi in zip(('joint_1', 'joint_2', 'joint_3', 'joint_4', 'joint_5',
                                 'joint_6', 'gripper'), self.min_position, self.max_position):
            require(lo < hi, f'min_position must be below max_position, got {lo} >= {hi} '
                             f'for {name}')
        for v in self.max_velocity:
            require_positive('max_velocity', v)
        require_positive('period_s', self.period_s)
        require_positive('max_distance_rad', self.max_distance_rad)
        require_non_negative('tolerance_rad', self.tolerance_rad)

    @classmethod
    def from_settings(cls, settings: ExecutorSettings, **changes) -> CommandLimits:
        """Return the chunk_executor's joint limits and period (builders.executor_settings).

        `changes`: fields to replace (None entries are left out: an unset flag).
        """
        limits, config = settings.limits, settings.config

        def row(attribute: str) -> tuple[float, ...]:
            return tuple(float(v) for v in limits.array(attribute))

        values = {'min_position': row('min_position'), 'max_position': row('max_position'),
                  'max_velocity': row('max_velocity'), 'period_s': config.period_s,
                  'max_distance_rad': config.max_distance_from_measured_rad}
        values.update({k: v for k, v in changes.items() if v is not None})
        return cls(**values)


@dataclass
class _Session:
    """What the checks remember of the current sender session."""

    sequence: int | None = None            # the last sequence number received
    base: np.ndarray | None = None         # (7,) targets of the last accepted ARMED command
    base_sequence: int = 0                 # its sequence number
    clock: SenderClock | None = None       # the session's clock model (estimated offset)


class CommandChecks:
    """The ordered rules of the module docstring; one instance per receiver, one thread."""

    def __init__(self, limits: CommandLimits | None, max_age_s: float | None = 0.05,
                 clock_offset_s: float | None = None) -> None:
        if max_age_s is not None:
            require_positive('max_age_s', max_age_s)
        if clock_offset_s is not None:
            require(isinstance(clock_offset_s, (int, float)) and math.isfinite(clock_offset_s),
                    f'clock_offset_s must be a finite number, got {clock_offset_s!r}')
        self.limits = limits
        self.max_age_s = max_age_s
        self.clock_offset_s = clock_offset_s
        self.sessions = SessionTracker()
        self._session = _Session()
        if limits is not None:
            self._lo = np.asarray(limits.min_position)
            self._hi = np.asarray(limits.max_position)
            self._v_max = np.asarray(limits.max_velocity)
        self.last_age_s = math.nan          # age of the newest command that had one [s]

    def check(self, msg: CommandMessage, received_s: float,
              position: Callable[[], np.ndarray | None] = lambda: None) -> None:
        """Return if `msg` may be handed on; raise Drop(cause) if not.

        `received_s`: its arrival on our clock [s] (wall time when `clock_offset_s` is set);
        `position()`: where the arm is now, (7,) joints [rad] and gripper, or None if unknown
        (asked only for a session's first ARMED command).
        """
        self._check_sequence(msg)
        self._check_age(msg, received_s)
        if msg.armed and self.limits is not None:
            self._check_limits(msg, position)

    def _check_sequence(self, msg: CommandMessage) -> None:
        if msg.session != self.sessions.current:
            self.sessions.check(msg.session)        # Drop(stale_session) for a replaced one
            self._session = _Session()
        session = self._session
        if session.sequence is not None and seq_delta(msg.sequence, session.sequence) <= 0:
            raise Drop(LATE, f'command {msg.sequence} after {session.sequence}')
        session.sequence = msg.sequence

    def _check_age(self, msg: CommandMessage, received_s: float) -> None:
        if self.max_age_s is None:          # off: no send time is judged either
            return
        if self.clock_offset_s is not None:
            age = received_s - (msg.sender_time_s - self.clock_offset_s)
            if age < -TOLERANCE_S:
                raise Drop(FUTURE_STAMP, f'command {msg.sequence} sent {-age:.3f} s after it '
                                         'arrived (clock_offset_s wrong, or the clocks '
                                         'are not synchronised)')
        else:
            if self._session.clock is None:
                # never re-based on delays alone: a delay that lasts is the robot's risk, a
                # receiver clock step cannot happen (the caller's clock is its own)
                self._session.clock = SenderClock(lag_confirm_s=math.inf)
            mapping = self._session.clock.stamp(msg.sender_time_s, received_s)
            if mapping.cause:
                raise Drop(mapping.cause, f'command {msg.sequence}: send time '
                                          f'{msg.sender_time_s:.3f} s fits no delay')
            age = received_s - mapping.stamp_s
        self.last_age_s = age
        if age > self.max_age_s:
            raise Drop(STALE, f'command {msg.sequence} is {age:.3f} s old on arrival '
                              f'(max_age_s {self.max_age_s})')

    def _check_limits(self, msg: CommandMessage,
                      position: Callable[[], np.ndarray | None]) -> None:
        limits = self.limits
        target = np.array([*msg.positions_rad, msg.gripper])        # (7,)
        outside = (target < self._lo) | (target > self._hi)
        if outside.any():
            j = int(np.argmax(outside))
            raise Drop(POSITION_LIMIT, f'command {msg.sequence}: {_axis(j)} target '
                                       f'{target[j]:.4f} outside {self._lo[j]:.4f}..'
                                       f'{self._hi[j]:.4f}')
        speed = np.abs(np.asarray(msg.velocities_rad_s))                 # (6,)
        fast = speed > self._v_max[:NUM_JOINTS] * (1.0 + _VELOCITY_SLACK)
        if fast.any():
            j = int(np.argmax(fast))
            raise Drop(VELOCITY_LIMIT, f'command {msg.sequence}: {_axis(j)} velocity '
                                       f'{msg.velocities_rad_s[j]:.4f} rad/s over '
                                       f'{self._v_max[j]:.4f}')
        session = self._session
        if session.base is not None:
            periods = seq_delta(msg.sequence, session.base_sequence)      # > 0: checked above
            allowed = self._v_max * limits.period_s * periods + limits.tolerance_rad
            step = np.abs(target - session.base)
            what = f'from command {session.base_sequence}, {periods} periods before'
        else:
            measured = position()
            if measured is None:
                allowed = step = np.zeros(NUM_JOINTS + 1)
            else:
                allowed = np.full(NUM_JOINTS + 1, limits.max_distance_rad + limits.tolerance_rad)
                allowed[NUM_JOINTS] = math.inf       # the executor does not check the gripper
                step = np.abs(target - np.asarray(measured, dtype=np.float64))
            what = "from where the arm is (the session's first command)"
        over = step > allowed
        if over.any():
            j = int(np.argmax(over))
            raise Drop(STEP_LIMIT, f'command {msg.sequence}: {_axis(j)} moves {step[j]:.4f} '
                                   f'{what}, at most {allowed[j]:.4f}')
        session.base = target
        session.base_sequence = msg.sequence


def _axis(index: int) -> str:
    return 'gripper' if index == NUM_JOINTS else f'J{index + 1}'
