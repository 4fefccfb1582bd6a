"""Episode reports of the simulated cell: `episode_v1`, one msgpack map (docs/wire.md).

sim_cell publishes one at the start and at the end of every episode and one every
`episode_period_s` in between (ZMQ PUB, port 5558 by default), so an evaluation can follow the
episodes and collect their outcomes without sharing memory with the cell.
"""
from __future__ import annotations

from dataclasses import dataclass

import msgpack

from vla_insertion.core.wire.base import (
    BAD_COUNT, BAD_VALUE, Codec, register, require_finite, WireError)
from vla_insertion.core.wire.msgpack_map import (
    number, numbers, optional_bool, text, uint32, unpack_map)

EVENTS = ('start', 'status', 'end')
STATES = ('running', 'settling')
CONTROLS = ('commands', 'reference', 'scripted')
# outcome reasons of core.sim.episode, and 'scripted' for an episode nobody judged
REASONS = ('success', 'timeout', 'over_force', 'dropped', 'scripted')


@dataclass(frozen=True, slots=True)
class EpisodeMessage:
    """One episode report: what the episode is, how it goes, and (at its end) how it ended."""

    sender_time_s: float                    # sim_cell's clock (wall time + offset) [s]
    event: str                              # 'start', 'status' or 'end'
    episode: int                            # episode index in the run (uint32)
    seed: int                               # the run's seed (uint32)
    hole_m: tuple[float, float, float]      # centre of the hole's opening, base frame [m]
    control: str                            # 'commands', 'reference' or 'scripted'
    state: str                              # 'running' or 'settling' (decided, arm held)
    elapsed_s: float                        # since the episode started [s]
    depth_m: float = 0.0                    # peg tip in the hole now [m]
    force_n: float = 0.0                    # contact force magnitude now [N]
    peak_force_n: float = 0.0               # largest contact force so far [N]
    mean_force_n: float = 0.0               # mean contact force while in contact so far [N]
    max_depth_m: float = 0.0                # deepest so far [m]
    success: bool | None = None             # the outcome; None until decided or if unjudged
    reason: str | None = None               # one of REASONS once decided
    time_to_insert_s: float | None = None   # start to success [s]; None without success
    session: int = 0                        # random per sim_cell start
    sequence: int = 0                       # per message (uint32, wraps)


def _validate(msg: EpisodeMessage) -> EpisodeMessage:
    if msg.event not in EVENTS:
        raise WireError(BAD_VALUE, f'event {msg.event!r} not one of {EVENTS}')
    if msg.state not in STATES:
        raise WireError(BAD_VALUE, f'state {msg.state!r} not one of {STATES}')
    if msg.control not in CONTROLS:
        raise WireError(BAD_VALUE, f'control {msg.control!r} not one of {CONTROLS}')
    if len(msg.hole_m) != 3:
        raise WireError(BAD_COUNT, f'{len(msg.hole_m)} hole coordinates, expected 3')
    require_finite('episode value', msg.sender_time_s, *msg.hole_m, msg.elapsed_s, msg.depth_m,
                   msg.force_n, msg.peak_force_n, msg.mean_force_n, msg.max_depth_m)
    if msg.time_to_insert_s is not None:
        require_finite('time_to_insert_s', msg.time_to_insert_s)
    if msg.reason is not None and msg.reason not in REASONS:
        raise WireError(BAD_VALUE, f'reason {msg.reason!r} not one of {REASONS}')
    if (msg.event == 'end') != (msg.reason is not None):
        raise WireError(BAD_VALUE, f'event {msg.event!r} with reason {msg.reason!r}: '
                                   f'an end has a reason, nothing else has')
    if msg.success is not None and not isinstance(msg.success, bool):
        raise WireError(BAD_VALUE, f'success must be a bool or nil, got {msg.success!r}')
    return msg


@register
class EpisodeCodecV1(Codec[EpisodeMessage]):
    """`episode_v1`: a msgpack map with named fields (see docs/wire.md)."""

    name = 'episode_v1'
    stream = 'episode'
    default_max_bytes = 4096
    MAGIC = 'VLAE'
    VERSION = 1

    def encode(self, record: EpisodeMessage) -> bytes:
        return msgpack.packb({
            'magic': self.MAGIC, 'v': self.VERSION, 'session': record.session,
            'seq': record.sequence, 't': record.sender_time_s, 'event': record.event,
            'episode': record.episode, 'seed': record.seed, 'hole_m': list(record.hole_m),
            'control': record.control, 'state': record.state, 'elapsed_s': record.elapsed_s,
            'depth_m': record.depth_m, 'force_n': record.force_n,
            'peak_force_n': record.peak_force_n, 'mean_force_n': record.mean_force_n,
            'max_depth_m': record.max_depth_m, 'success': record.success,
            'reason': record.reason, 'time_to_insert_s': record.time_to_insert_s})

    def decode(self, data: bytes | bytearray | memoryview) -> EpisodeMessage:
        self.check_size(data, 1)
        doc = unpack_map(data, self.MAGIC, self.VERSION, 'an episode map')
        try:
            msg = EpisodeMessage(
                sender_time_s=number(doc['t']), event=text(doc['event']),
                episode=uint32(doc['episode']), seed=uint32(doc['seed']),
                hole_m=numbers(doc['hole_m'], 3), control=text(doc['control']),
                state=text(doc['state']), elapsed_s=number(doc['elapsed_s']),
                depth_m=number(doc['depth_m']), force_n=number(doc['force_n']),
                peak_force_n=number(doc['peak_force_n']),
                mean_force_n=number(doc['mean_force_n']),
                max_depth_m=number(doc['max_depth_m']), success=optional_bool(doc['success']),
                reason=None if doc['reason'] is None else text(doc['reason']),
                time_to_insert_s=None if doc['time_to_insert_s'] is None
                else number(doc['time_to_insert_s']),
                session=uint32(doc['session']), sequence=uint32(doc['seq']))
        except KeyError as exc:
            raise WireError(BAD_COUNT, f'missing field {exc}') from None
        return _validate(msg)
