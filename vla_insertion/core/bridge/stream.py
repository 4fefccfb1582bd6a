"""What a bridge checks before it publishes: the sender's session, sequence order and clock.

Every stream carries a session id, a sequence number and a sender time per message.
`StreamTracker.admit` applies the same rules to each of them, per key (a camera view; the
robot and sensor streams have one key), in this order (docs/wire.md, "Order of checks"):

1. Session. An unknown id is a sender (re)start, counted in `restarts`: it gets fresh sequence
   and clock state, so nothing the previous sender left (its last stamps, sequence, offset)
   applies to it. A message of an older session is a straggler (`stale_session`) when its time
   is not newer than the newest stamp published for its key; a newer one means that sender is
   still alive, and it is served again (`session_switches`).
2. Sequence, per session and key. A number not newer than the last one accepted is `late` (a
   repeat or a reordering; a batch skips only its leading items already taken). A jump forward
   counts the items missed in `gaps`. A jump of more than `max_jump` either way is a sequence
   reset, counted as a restart. Sequences start at 0 with each session, so the first number
   seen is the count missed before it (up to `max_jump`; beyond, the bridge joined a sender
   that was already running and counts nothing).
3. Clock, per session and key (`core.clock.SenderClock`): the local stamp, or `future_stamp` /
   `past_stamp` when the time cannot be right.

The `remember` sessions heard most recently are kept, so a sender that comes back keeps its
clock; one forgotten counts as a new session when it is heard again.
"""
from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
import math
import statistics
import threading

from vla_insertion.core.bridge.clock import ClockReport, SenderClock
from vla_insertion.core.wire.base import seq_delta

LATE = 'late'                    # not newer by sequence than what was already accepted
STALE_SESSION = 'stale_session'  # sent by a sender instance that has since been replaced
MAX_SEQUENCE_JUMP = 65536        # a larger jump is a reset by the sender, not loss [items]
REMEMBER_SESSIONS = 16           # sessions whose state is kept, newest first
_MASK = 0xFFFFFFFF


class Drop(Exception):
    """A well-formed message the bridge cannot use; counted under `cause`."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause


@dataclass(frozen=True)
class Admission:
    """What to do with one message that was not dropped outright."""

    stamp_s: float           # its time on the local clock [s]; nan when `drop` is set
    drop: str = ''           # '' or the clock's cause: its content is good, its time is not
    late: int = 0            # leading items (samples) already taken: skip them
    gap: int = 0             # items missing before it (same session and key)
    restarted: bool = False  # the key follows a new session or a reset sequence: start over
    # (level, text) for the node's log: 'info', 'warning', or 'frequent' (a warning that may
    # repeat at the message rate, to be throttled)
    events: tuple[tuple[str, str], ...] = ()

    @property
    def contiguous(self) -> bool:
        """True when the message directly continues the previous one of its key."""
        return not self.restarted and self.gap == 0


@dataclass
class _KeyState:
    clock: SenderClock
    next_sequence: int | None = None


@dataclass
class _Session:
    ordinal: int                      # order of first appearance
    keys: dict[str, _KeyState] = field(default_factory=dict)


class StreamTracker:
    """Sessions, sequences and sender clocks of one stream; thread-safe."""

    def __init__(self, keys: tuple[str, ...] = ('',), calibration_batches: int = 50,
                 max_jump: int = MAX_SEQUENCE_JUMP, remember: int = REMEMBER_SESSIONS,
                 **clock_options) -> None:
        self.keys = tuple(keys)
        self._clock_options = {'calibration_batches': calibration_batches, **clock_options}
        SenderClock(**self._clock_options)              # invalid settings fail here
        self._max_jump = max_jump
        self._remember = remember
        self._sessions: OrderedDict[int, _Session] = OrderedDict()
        self._followed: dict[str, int] = {}              # key -> session id it follows
        self._newest: dict[str, float] = {}              # key -> newest stamp published [s]
        self._lock = threading.Lock()
        self.restarts = 0
        self.session_switches = 0
        self.clock_steps = 0
        self.gaps: Counter[str] = Counter(dict.fromkeys(self.keys, 0))  # items missed, per key
        self.late: Counter[str] = Counter(dict.fromkeys(self.keys, 0))  # items late, per key

    def admit(self, key: str, session: int, sequence: int, sender_s: float, local_s: float,
              count: int = 1) -> Admission:
        """Check one message of `count` items (the first numbered `sequence`).

        Raises Drop (LATE, STALE_SESSION, or a clock cause for an older session); returns an
        Admission otherwise, whose `drop` is set when only the time is unusable.
        """
        with self._lock:
            events: list[tuple[str, str]] = []
            state = self._session(session, events)
            keystate = state.keys.get(key)
            if keystate is None:
                keystate = state.keys[key] = _KeyState(SenderClock(**self._clock_options))
            followed = self._followed.get(key)
            follows = followed == session
            newer = followed is None or state.ordinal > self._ordinal(followed)
            late, gap, reset = self._sequence(key, keystate, sequence, count, events)
            odd_time = keystate.clock.judge(sender_s, local_s) if gap or reset else ''
            if odd_time:
                # neither its sequence nor its time continues the stream: not this sender's
                # (e.g. a second sender using the same session id); it must not move either
                raise Drop(odd_time, f'{self._name(key)}sequence {sequence} and time '
                                     f'{sender_s:.6f} both off the stream')
            self._commit(key, keystate, sequence, count, gap, reset)
            mapping = keystate.clock.stamp(sender_s, local_s)
            if reset:
                events.append(('warning', f'{self._name(key)}sequence jumped to {sequence}: '
                                          f'counted as a sender restart'))
            if mapping.step_s:
                self.clock_steps += 1
                events.append(('warning', f'{self._name(key)}sender clock stepped by '
                                          f'{mapping.step_s:+.3f} s: re-based on the newest '
                                          f'messages'))
            if mapping.calibrated:
                events.append(('info', f'{self._name(key)}clock offset calibrated: '
                                       f'{keystate.clock.offset_s * 1e3:.3f} ms'))
            if not (follows or newer):
                if mapping.cause:
                    raise Drop(mapping.cause, f'{self._name(key)}bad time from the older '
                                              f'session {session:#010x}')
                if mapping.stamp_s <= self._newest.get(key, -math.inf):
                    raise Drop(STALE_SESSION, f'{self._name(key)}message from the sender '
                                              f'session {session:#010x} that was replaced')
                self.session_switches += 1
                events.append(('frequent', f'{self._name(key)}session {session:#010x} is '
                                           f'sending again: following it'))
            self._followed[key] = session
            if not mapping.cause:
                self._newest[key] = max(self._newest.get(key, -math.inf), mapping.stamp_s)
            return Admission(stamp_s=mapping.stamp_s, drop=mapping.cause, late=late, gap=gap,
                             restarted=not follows or reset, events=tuple(events))

    def _session(self, session: int, events: list[tuple[str, str]]) -> _Session:
        state = self._sessions.get(session)
        if state is not None:
            self._sessions.move_to_end(session)     # forget the least recently heard first
            return state
        if self._sessions:
            self.restarts += 1
            events.append(('warning', f'sender restarted: new session {session:#010x}'))
        ordinal = max((s.ordinal for s in self._sessions.values()), default=0) + 1
        state = self._sessions[session] = _Session(ordinal)
        while len(self._sessions) > self._remember:
            forgotten, _ = self._sessions.popitem(last=False)
            for key in [k for k, s in self._followed.items() if s == forgotten]:
                del self._followed[key]
        return state

    def _ordinal(self, session: int) -> int:
        return self._sessions[session].ordinal

    def _sequence(self, key: str, keystate: _KeyState, sequence: int, count: int,
                  events: list[tuple[str, str]]) -> tuple[int, int, bool]:
        """Return (late items, missed items, reset); Drop if wholly late. Changes nothing."""
        late = gap = 0
        reset = False
        expected = keystate.next_sequence
        if expected is None:              # the session's first message of this key
            if sequence <= self._max_jump:
                gap = sequence
            else:
                events.append(('info', f'{self._name(key)}joined a running sender at '
                                       f'sequence {sequence}'))
        else:
            delta = seq_delta(sequence, expected)
            if abs(delta) > self._max_jump:
                reset = True
            elif delta > 0:
                gap = delta
            elif delta < 0:
                late = min(-delta, count)
                self.late[key] += late
                if late == count:
                    raise Drop(LATE, f'{self._name(key)}sequence {sequence} is not newer than '
                                     f'the last one accepted ({(expected - 1) & _MASK})')
        return late, gap, reset

    def _commit(self, key: str, keystate: _KeyState, sequence: int, count: int, gap: int,
                reset: bool) -> None:
        if reset:
            self.restarts += 1
        keystate.next_sequence = (sequence + count) & _MASK
        self.gaps[key] += gap

    @staticmethod
    def _name(key: str) -> str:
        return f'{key}: ' if key else ''

    def clock_reports(self) -> dict[str, ClockReport]:
        """Return the clock report of the session each key follows, per key that has one."""
        with self._lock:
            return {key: self._sessions[s].keys[key].clock.report()
                    for key, s in self._followed.items()
                    if s in self._sessions and key in self._sessions[s].keys}

    def clock_summary(self) -> tuple[float, bool]:
        """Return (median offset [s] of the followed clocks, whether all are calibrated)."""
        reports = self.clock_reports()
        offsets = [r.offset_s for r in reports.values() if not math.isnan(r.offset_s)]
        return (statistics.median(offsets) if offsets else math.nan,
                bool(reports) and all(r.calibrated for r in reports.values()))
