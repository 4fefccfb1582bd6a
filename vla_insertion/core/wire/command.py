"""Joint commands from the chunk executor to the robot PC: `command_v1` (docs/wire.md).

The executor (ZMQ PUSH, connects) sends one command per control period to the robot PC (ZMQ
PULL, binds port 5557). A command says where each joint should be, and how fast it should be
moving, `lead_s` after the robot receives it: a relative time, so the robot needs no clock shared
with the executor. SI units (rad, rad/s), unlike the robot's state messages.

Flags: ARMED (the robot may move: without it the robot holds where it is), HOLD (the executor
asks for a controlled stop at the current position: watchdog, fault, no chunk). A robot side must
also hold by itself when no command arrives for `timeout_s` (docs/wire.md, "When commands stop").
"""
from __future__ import annotations

from dataclasses import dataclass
import struct

from vla_insertion.core.data import NUM_JOINTS
from vla_insertion.core.wire.base import (
    BAD_COUNT, BAD_MAGIC, BAD_VALUE, BAD_VERSION, Codec, OVERSIZED, register, require_finite,
    TRUNCATED, WireError)

FLAG_ARMED = 0x01              # the robot may follow the positions
FLAG_HOLD = 0x02               # decelerate within limits and hold; positions are where to stop
KNOWN_FLAGS = FLAG_ARMED | FLAG_HOLD


@dataclass(frozen=True, slots=True)
class CommandMessage:
    """One joint command as sent: SI units, times relative to arrival."""

    sender_time_s: float                    # send time on the executor's clock [s] (logging)
    positions_rad: tuple[float, ...]        # (6,) joint targets [rad]
    velocities_rad_s: tuple[float, ...]     # (6,) joint velocities at the target [rad/s]
    gripper: float = 0.0                    # gripper target, 0 open .. 1 closed
    lead_s: float = 0.0                     # reach the target this long after arrival [s]
    timeout_s: float = 0.1                  # hold if no newer command arrives within [s]
    flags: int = 0                          # FLAG_ARMED | FLAG_HOLD
    session: int = 0                        # random per executor start
    sequence: int = 0                       # per command (uint32, wraps)

    @property
    def armed(self) -> bool:
        return bool(self.flags & FLAG_ARMED)

    @property
    def hold(self) -> bool:
        return bool(self.flags & FLAG_HOLD)


def _validate(msg: CommandMessage) -> CommandMessage:
    if len(msg.positions_rad) != NUM_JOINTS or len(msg.velocities_rad_s) != NUM_JOINTS:
        raise WireError(BAD_COUNT, f'{len(msg.positions_rad)} positions and '
                        f'{len(msg.velocities_rad_s)} velocities, expected {NUM_JOINTS}')
    require_finite('command value', msg.sender_time_s, *msg.positions_rad,
                   *msg.velocities_rad_s, msg.gripper, msg.lead_s, msg.timeout_s)
    if not 0.0 <= msg.gripper <= 1.0:
        raise WireError(BAD_VALUE, f'gripper {msg.gripper} not in 0..1')
    if not 0.0 <= msg.lead_s <= 1.0:
        raise WireError(BAD_VALUE, f'lead_s {msg.lead_s} not in 0..1 s')
    if not 0.0 < msg.timeout_s <= 10.0:
        raise WireError(BAD_VALUE, f'timeout_s {msg.timeout_s} not in (0, 10] s')
    if msg.flags & ~KNOWN_FLAGS:
        raise WireError(BAD_VALUE, f'unknown flag bits 0x{msg.flags & ~KNOWN_FLAGS:02x}')
    return msg


@register
class CommandCodecV1(Codec[CommandMessage]):
    """`command_v1`: one little-endian struct of 144 bytes."""

    name = 'command_v1'
    stream = 'command'
    default_max_bytes = 4096
    MAGIC = b'VLCM'
    VERSION = 1
    # magic, version, flags, 2 reserved, session, sequence, sender time, lead, timeout,
    # 6 positions, 6 velocities, gripper
    LAYOUT = struct.Struct('<4sBB2xIIddd6d6dd')

    def encode(self, record: CommandMessage) -> bytes:
        return self.LAYOUT.pack(self.MAGIC, self.VERSION, record.flags, record.session,
                                record.sequence, record.sender_time_s, record.lead_s,
                                record.timeout_s, *record.positions_rad,
                                *record.velocities_rad_s, record.gripper)

    def decode(self, data: bytes | bytearray | memoryview) -> CommandMessage:
        self.check_size(data, 5)
        magic, version = bytes(data[:4]), data[4]
        if magic != self.MAGIC:
            raise WireError(BAD_MAGIC, f'magic {magic!r} != {self.MAGIC!r}')
        if version != self.VERSION:
            raise WireError(BAD_VERSION, f'version {version}, this decoder speaks {self.VERSION}')
        if len(data) != self.LAYOUT.size:
            cause = TRUNCATED if len(data) < self.LAYOUT.size else OVERSIZED
            raise WireError(cause, f'{len(data)} bytes, command_v1 is {self.LAYOUT.size}')
        v = self.LAYOUT.unpack(data)
        return _validate(CommandMessage(
            flags=v[2], session=v[3], sequence=v[4], sender_time_s=v[5], lead_s=v[6],
            timeout_s=v[7], positions_rad=v[8:14], velocities_rad_s=v[14:20], gripper=v[20]))
