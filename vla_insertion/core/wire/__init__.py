"""Versioned wire formats of the cell's streams (byte layouts in docs/wire.md).

Decoders raise only `WireError` for bad input; its `cause` names the kind of damage. Pick a
codec by name with `make_codec('sensor_v1', stream='sensor', channels=7)`.
"""
from vla_insertion.core.wire.base import (
    BAD_COUNT, BAD_MAGIC, BAD_VALUE, BAD_VERSION, CAUSES, Codec, codec_names, make_codec,
    NON_FINITE, OVERSIZED, register, seq_delta, TRUNCATED, WireError)
from vla_insertion.core.wire.camera import camera_frame, CameraCodecV1, CameraMessage
from vla_insertion.core.wire.command import (
    CommandCodecV1, CommandMessage, FLAG_ARMED, FLAG_HOLD)
from vla_insertion.core.wire.episode import EpisodeCodecV1, EpisodeMessage
from vla_insertion.core.wire.robot import (
    quaternion_from_euler_xyz, robot_state, RobotCodecMsgpackV1, RobotCodecV1, RobotMessage)
from vla_insertion.core.wire.sensor import SensorBatch, SensorCodecV1

__all__ = [
    'BAD_COUNT', 'BAD_MAGIC', 'BAD_VALUE', 'BAD_VERSION', 'CAUSES', 'Codec', 'codec_names',
    'make_codec', 'NON_FINITE', 'OVERSIZED', 'register', 'seq_delta', 'TRUNCATED', 'WireError',
    'camera_frame', 'CameraCodecV1', 'CameraMessage', 'CommandCodecV1', 'CommandMessage',
    'EpisodeCodecV1', 'EpisodeMessage', 'FLAG_ARMED', 'FLAG_HOLD', 'quaternion_from_euler_xyz',
    'robot_state', 'RobotCodecMsgpackV1', 'RobotCodecV1', 'RobotMessage', 'SensorBatch',
    'SensorCodecV1',
]
