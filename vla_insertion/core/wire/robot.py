"""Robot state: joints [deg], tool pose [mm, deg], gripper, sender time (docs/wire.md).

Two registered formats carry the same record: `robot_v1` (fixed 128-byte struct) and
`robot_msgpack_v1` (a msgpack map, for senders that prefer self-describing messages). The
conversion to SI units (rad, m, unit quaternion; REP 103) happens here, once.
"""
from __future__ import annotations

from dataclasses import dataclass
import math
import struct

import msgpack
import numpy as np

from vla_insertion.core.data import NUM_JOINTS, RobotState
from vla_insertion.core.wire.base import (
    BAD_COUNT, BAD_MAGIC, BAD_VALUE, BAD_VERSION, Codec, OVERSIZED, register, require_finite,
    TRUNCATED, WireError)
from vla_insertion.core.wire.msgpack_map import number, numbers, uint32, unpack_map


@dataclass(frozen=True, slots=True)
class RobotMessage:
    """One robot state as sent: sender clock, degrees and millimetres."""

    sender_time_s: float                    # sample time on the robot PC's clock [s]
    joints_deg: tuple[float, ...]           # (6,) joint angles [deg]
    position_mm: tuple[float, float, float]  # tool x y z in the base frame [mm]
    rotation_deg: tuple[float, float, float]  # tool rx ry rz, fixed axes: R = Rz Ry Rx [deg]
    gripper: float = 0.0                    # 0 open .. 1 closed
    session: int = 0                        # random per sender start
    sequence: int = 0                       # per message (uint32, wraps)


def _validate(msg: RobotMessage) -> RobotMessage:
    if len(msg.joints_deg) != NUM_JOINTS:
        raise WireError(BAD_COUNT, f'{len(msg.joints_deg)} joints, expected {NUM_JOINTS}')
    require_finite('robot value', msg.sender_time_s, *msg.joints_deg, *msg.position_mm,
                   *msg.rotation_deg, msg.gripper)
    if msg.sender_time_s <= 0.0:
        raise WireError(BAD_VALUE, f'sender time {msg.sender_time_s} <= 0')
    if not 0.0 <= msg.gripper <= 1.0:
        raise WireError(BAD_VALUE, f'gripper {msg.gripper} not in 0..1')
    return msg


@register
class RobotCodecV1(Codec[RobotMessage]):
    """`robot_v1`: one little-endian struct of 128 bytes."""

    name = 'robot_v1'
    stream = 'robot'
    default_max_bytes = 4096
    MAGIC = b'VLAR'
    VERSION = 1
    # magic, version, 3 reserved, session, sequence, sender time, 6 joints, xyz, rx ry rz, gripper
    LAYOUT = struct.Struct('<4sB3xIId6d3d3dd')

    def encode(self, record: RobotMessage) -> bytes:
        return self.LAYOUT.pack(self.MAGIC, self.VERSION, record.session, record.sequence,
                                record.sender_time_s, *record.joints_deg, *record.position_mm,
                                *record.rotation_deg, record.gripper)

    def decode(self, data: bytes | bytearray | memoryview) -> RobotMessage:
        self.check_size(data, 5)
        magic, version = bytes(data[:4]), data[4]
        if magic != self.MAGIC:
            raise WireError(BAD_MAGIC, f'magic {magic!r} != {self.MAGIC!r}')
        if version != self.VERSION:
            raise WireError(BAD_VERSION, f'version {version}, this decoder speaks {self.VERSION}')
        if len(data) != self.LAYOUT.size:
            cause = TRUNCATED if len(data) < self.LAYOUT.size else OVERSIZED
            raise WireError(cause, f'{len(data)} bytes, robot_v1 is {self.LAYOUT.size}')
        v = self.LAYOUT.unpack(data)
        return _validate(RobotMessage(sender_time_s=v[4], joints_deg=v[5:11],
                                      position_mm=v[11:14], rotation_deg=v[14:17],
                                      gripper=v[17], session=v[2], sequence=v[3]))


@register
class RobotCodecMsgpackV1(Codec[RobotMessage]):
    """`robot_msgpack_v1`: a msgpack map with named fields (see docs/wire.md)."""

    name = 'robot_msgpack_v1'
    stream = 'robot'
    default_max_bytes = 4096
    MAGIC = 'VLAR'
    VERSION = 1

    def encode(self, record: RobotMessage) -> bytes:
        return msgpack.packb({
            'magic': self.MAGIC, 'v': self.VERSION, 'session': record.session,
            'seq': record.sequence, 't': record.sender_time_s,
            'joints_deg': list(record.joints_deg), 'pos_mm': list(record.position_mm),
            'rot_deg': list(record.rotation_deg), 'gripper': record.gripper})

    def decode(self, data: bytes | bytearray | memoryview) -> RobotMessage:
        self.check_size(data, 1)
        doc = unpack_map(data, self.MAGIC, self.VERSION, 'a robot_msgpack map')
        try:
            msg = RobotMessage(
                sender_time_s=number(doc['t']), joints_deg=numbers(doc['joints_deg']),
                position_mm=numbers(doc['pos_mm'], 3), rotation_deg=numbers(doc['rot_deg'], 3),
                gripper=number(doc['gripper']), session=uint32(doc['session']),
                sequence=uint32(doc['seq']))
        except KeyError as exc:
            raise WireError(BAD_COUNT, f'missing field {exc}') from None
        return _validate(msg)


# --- SI conversion ------------------------------------------------------------------------

def quaternion_from_euler_xyz(rx: float, ry: float, rz: float) -> np.ndarray:
    """Fixed-axis XYZ angles [rad] (R = Rz Ry Rx) -> unit quaternion (4,) x y z w."""
    cx, sx = math.cos(rx / 2), math.sin(rx / 2)
    cy, sy = math.cos(ry / 2), math.sin(ry / 2)
    cz, sz = math.cos(rz / 2), math.sin(rz / 2)
    return np.array([sx * cy * cz - cx * sy * sz,
                     cx * sy * cz + sx * cy * sz,
                     cx * cy * sz - sx * sy * cz,
                     cx * cy * cz + sx * sy * sz])


def robot_state(message: RobotMessage, stamp_s: float,
                joint_names: tuple[str, ...] | None = None) -> RobotState:
    """Return the pipeline's RobotState in SI units, stamped on the local clock."""
    rx, ry, rz = (math.radians(a) for a in message.rotation_deg)
    kwargs = {'joint_names': tuple(joint_names)} if joint_names else {}
    return RobotState(
        stamp_s=stamp_s, joint_positions_rad=np.radians(np.asarray(message.joints_deg)),
        tool_position_m=np.asarray(message.position_mm) * 1e-3,
        tool_orientation_xyzw=quaternion_from_euler_xyz(rx, ry, rz), gripper=message.gripper,
        **kwargs)
