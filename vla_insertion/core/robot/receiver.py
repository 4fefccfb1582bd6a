"""The robot side of `command_v1`: a PULL socket, the checks, a hold watchdog, a backend.

    executor PUSH ──command_v1──> PULL (binds :5557) ──> CommandCodecV1 ──> CommandChecks ──┐
                                   core/bridge/receive.py                  checks.py        │
        backend.follow(command) <── ARMED, no HOLD ──────────────────────── accepted <──────┘
        backend.hold(reason)    <── HOLD, not ARMED, a refused limit, no command in timeout_s

What docs/wire.md asks of a robot side, once, for every program that plays one: robot_receiver
(the reference receiver, with a simulated servo or a dry run behind it) and sim_cell (its
simulated cell behind it, the age and limit checks off: it is the sim's robot, and follows
whatever the executor sends, as the closed-loop evaluations assume).

Refusals (the decoder's causes, then checks.py's) are counted by cause in `loop.drops` and
logged, throttled per cause. A command refused for its limits also holds the arm; one refused
for its order or age does not (the last accepted command stays in force until its timeout).
The watchdog holds when no command was accepted for the last accepted command's `timeout_s`
(or the configured `timeout_s` instead), and the arm stays held until the next ARMED command.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
import logging
import math
import threading
import time

import zmq

from vla_insertion.core.bridge.receive import ReceiveLoop, SOCKET_ERROR, ZmqSource
from vla_insertion.core.bridge.stream import Drop
from vla_insertion.core.config import (
    ConfigError, require, require_host, require_keys_dir, require_port, require_positive)
from vla_insertion.core.robot.backends import Backend
from vla_insertion.core.robot.checks import (
    CHECK_CAUSES, CommandChecks, CommandLimits, LIMIT_CAUSES)
from vla_insertion.core.sim.servo import HOLD_FLAG, HOLD_NO_COMMAND, HOLD_TIMEOUT, HOLD_UNARMED
from vla_insertion.core.wire import CAUSES, CommandCodecV1, CommandMessage
from vla_insertion.core.wire.curve import CurveLink, link_keys

_LOG = logging.getLogger(__name__)
HOLD_REFUSED = 'refused'     # a command broke a limit: hold until an acceptable one
# Why the arm holds (None while it follows): the servo's reasons and the receiver's own.
HOLD_REASONS = (HOLD_NO_COMMAND, HOLD_UNARMED, HOLD_FLAG, HOLD_TIMEOUT, HOLD_REFUSED)
# Every cause a refused command is counted under, reported from the start with 0.
RECEIVER_CAUSES = CAUSES + CHECK_CAUSES + (SOCKET_ERROR,)


@dataclass(frozen=True)
class ReceiverConfig:
    """The receiver's socket, age check and watchdog; the limits are CommandLimits."""

    bind_address: str = '127.0.0.1'  # interface the PULL socket binds (the robot PC's address)
    port: int = 5557                 # TCP port the executor pushes command_v1 to
    max_message_bytes: int = 4096    # longer messages are refused (oversized) [bytes]
    receive_timeout_s: float = 0.1   # socket poll period: bounds the shutdown latency [s]
    max_age_s: float | None = 0.05   # refuse commands older than this on arrival; None: off [s]
    # None: the clocks are not shared, the offset is estimated (checks.py); a number: they are
    # synchronised (PTP, chrony) and the sender's reads this much ahead of ours.
    clock_offset_s: float | None = None  # executor clock - receiver clock [s]
    timeout_s: float | None = None   # hold without a newer command; None: each command's [s]
    name: str = 'robot_receiver'     # thread names and log prefix
    # The robot PC's keys: admit only the chunk executor's (core/wire/curve.py).
    curve_keys_dir: str = ''         # CURVE keys folder (cell_keys), '' = plain TCP

    def __post_init__(self) -> None:
        require_host('bind_address', self.bind_address)
        require_port('port', self.port)
        require_keys_dir('curve_keys_dir', self.curve_keys_dir)
        require(isinstance(self.max_message_bytes, int)
                and CommandCodecV1.LAYOUT.size <= self.max_message_bytes <= 1 << 20,
                f'max_message_bytes must be an integer in {CommandCodecV1.LAYOUT.size}..'
                f'{1 << 20}, got {self.max_message_bytes!r}')
        require_positive('receive_timeout_s', self.receive_timeout_s)
        if self.max_age_s is not None:
            require_positive('max_age_s', self.max_age_s)
        if self.clock_offset_s is not None:
            require(isinstance(self.clock_offset_s, (int, float))
                    and math.isfinite(self.clock_offset_s),
                    f'clock_offset_s must be a finite number, got {self.clock_offset_s!r}')
        if self.timeout_s is not None:      # command_v1's own range
            require(isinstance(self.timeout_s, (int, float)) and 0.0 < self.timeout_s <= 10.0,
                    f'timeout_s must be in (0, 10] s, got {self.timeout_s!r}')


class ThrottledLog:
    """A warning per cause at most every `period_s`: a broken sender must not flood the log."""

    def __init__(self, what: str, period_s: float = 2.0) -> None:
        self._what = what
        self._period_s = period_s
        self._last: dict[str, float] = {}

    def __call__(self, cause: str, text: str) -> None:
        now = time.monotonic()
        if now - self._last.get(cause, -math.inf) >= self._period_s:
            self._last[cause] = now
            _LOG.warning(f'{self._what} dropped ({cause}): {text}')


class CommandReceiver:
    """Bind, check, hand on, hold; `start()` the threads, `close()` them and the socket.

    `limits` None: no limit checks. `clock`: the monotonic clock of the backend's times [s].
    Raises ConfigError if the socket cannot be bound (a busy port).
    """

    def __init__(self, config: ReceiverConfig, backend: Backend,
                 limits: CommandLimits | None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.backend = backend
        self.checks = CommandChecks(limits, config.max_age_s, config.clock_offset_s)
        self._codec = CommandCodecV1(config.max_message_bytes)
        self._clock = clock
        self._cond = threading.Condition()   # guards the state below; wakes the watchdog
        self._stop = threading.Event()
        self.hold_reason: str | None = HOLD_NO_COMMAND   # None while following
        self._deadline_s = math.inf          # hold at this time without a newer command
        self.accepted = 0                    # commands that passed every check
        self.followed = 0                    # of those, handed to backend.follow
        self.holds: Counter[str] = Counter(dict.fromkeys(HOLD_REASONS, 0))   # entered, by why
        self.context = zmq.Context(1)
        endpoint = f'tcp://{config.bind_address}:{config.port}'
        self.curve: CurveLink | None = None
        try:
            self.curve = CurveLink(link_keys(config.curve_keys_dir, 'command'), self.context)
            self.loop = ReceiveLoop(
                config.name, lambda: ZmqSource(self.context, zmq.PULL, endpoint, bind=True,
                                               timeout_s=config.receive_timeout_s,
                                               max_bytes=config.max_message_bytes,
                                               secure=self.curve.secure),
                self._handle, on_drop=ThrottledLog(f'{config.name}: command'),
                causes=RECEIVER_CAUSES)
        except ConfigError:              # a busy port, or a CURVE key missing
            if self.curve is not None:
                self.curve.close()
            self.context.destroy(linger=0)
            raise
        self._watchdog = threading.Thread(target=self._watch, name=f'{config.name}_watchdog',
                                          daemon=True)

    # --- the receive thread ---------------------------------------------------------------

    def _handle(self, data: bytes, t_recv: float) -> None:
        """One message: decode, check, then follow or hold; WireError and Drop are counted."""
        arrival = self._clock()
        msg = self._codec.decode(data)
        with self._cond:
            try:
                # t_recv is wall time: the clock a synchronised executor's send time is on
                self.checks.check(msg, t_recv, lambda: self.backend.position(arrival))
            except Drop as exc:
                if exc.cause in LIMIT_CAUSES:
                    self._hold(HOLD_REFUSED, arrival)
                raise
            self.accepted += 1
            if not msg.armed:
                self._hold(HOLD_UNARMED, arrival)
            elif msg.hold:
                self._hold(HOLD_FLAG, arrival)
            else:
                self._follow(msg, arrival)

    def _follow(self, msg: CommandMessage, arrival_s: float) -> None:
        timeout = msg.timeout_s if self.config.timeout_s is None else self.config.timeout_s
        if timeout != msg.timeout_s:       # the backend applies the receiver's timeout too
            msg = replace(msg, timeout_s=timeout)
        self.backend.follow(msg, arrival_s)
        self.followed += 1
        if self.hold_reason is not None:
            _LOG.debug(f'{self.config.name}: following command {msg.sequence} '
                       f'(was holding: {self.hold_reason})')
            self.hold_reason = None
        self._deadline_s = arrival_s + timeout
        self._cond.notify_all()

    def _hold(self, reason: str, now_s: float) -> None:
        """Hold for `reason` unless already holding for it (call with the lock held)."""
        self._deadline_s = math.inf
        if self.hold_reason == reason:
            return
        self.hold_reason = reason
        self.holds[reason] += 1
        # the executor's own HOLD and disarm are routine; the receiver's decisions are news
        level = logging.DEBUG if reason in (HOLD_FLAG, HOLD_UNARMED) else logging.INFO
        _LOG.log(level, f'{self.config.name}: holding ({reason})')
        self.backend.hold(reason, now_s)

    # --- the watchdog thread --------------------------------------------------------------

    def _watch(self) -> None:
        with self._cond:
            while not self._stop.is_set():
                now = self._clock()
                if now >= self._deadline_s:
                    self._hold(HOLD_TIMEOUT, now)
                    continue
                # woken early by a new deadline (notify) or the stop; the timeout is exact
                self._cond.wait(None if math.isinf(self._deadline_s)
                                else self._deadline_s - now)

    # --- life cycle and numbers -----------------------------------------------------------

    def start(self) -> None:
        self.loop.start()
        self._watchdog.start()

    def close(self) -> None:
        """Stop both threads, then close the socket's context; the backend stays as it is."""
        with self._cond:
            self._stop.set()
            self._cond.notify_all()
        if self._watchdog.is_alive():
            self._watchdog.join(2.0)
        self.loop.stop()
        self.curve.close()
        self.context.destroy(linger=0)

    @property
    def error(self) -> BaseException | None:
        """What killed the receive thread (a backend that raised), or None."""
        return self.loop.error

    def stats(self) -> dict:
        """Counters as flat keys: received, accepted, followed, holds.*, dropped, drops.*."""
        drops = self.loop.drops.as_dict()
        with self._cond:
            return {'received': self.loop.received, 'accepted': self.accepted,
                    'followed': self.followed, 'holding': self.hold_reason or '',
                    **{f'holds.{r}': n for r, n in sorted(self.holds.items())},
                    'dropped': sum(drops.values()),
                    **{f'drops.{c}': n for c, n in sorted(drops.items())}}

    def summary(self) -> str:
        s = self.stats()
        drops = {k[len('drops.'):]: v for k, v in s.items() if k.startswith('drops.') and v}
        return (f'commands {s["received"]} received, {s["accepted"]} accepted, '
                f'{s["followed"]} followed; ' + (f'holding ({s["holding"]})' if s['holding']
                                                 else 'following')
                + (f'; dropped {drops}' if drops else ''))
