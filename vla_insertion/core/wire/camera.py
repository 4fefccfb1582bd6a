"""Camera frames: one ZMQ message per frame, header + view id + encoded image (docs/wire.md)."""
from __future__ import annotations

from dataclasses import dataclass
import struct

from vla_insertion.core.data import CameraFrame
from vla_insertion.core.wire.base import (
    BAD_COUNT, BAD_MAGIC, BAD_VALUE, BAD_VERSION, Codec, OVERSIZED, register, require_finite,
    TRUNCATED, WireError)

ENCODINGS = {1: 'jpeg', 2: 'png'}
_ENCODING_IDS = {v: k for k, v in ENCODINGS.items()}
# The first bytes of each format: a frame whose payload does not start like one is corrupt.
_SIGNATURES = {'jpeg': b'\xff\xd8', 'png': b'\x89PNG\r\n\x1a\n'}
MAX_VIEW_ID_BYTES = 64


@dataclass(frozen=True, slots=True)
class CameraMessage:
    """One camera frame as sent: sender clock, sender units."""

    view: str                   # view id, e.g. "zed_1"
    capture_time_s: float       # capture time on the sender's clock [s]
    width: int                  # [px]
    height: int                 # [px]
    data: bytes                 # encoded image
    encoding: str = 'jpeg'      # 'jpeg' or 'png'
    session: int = 0            # random per sender start: a change means the sender restarted
    sequence: int = 0           # per-view frame counter (uint32, wraps)


@register
class CameraCodecV1(Codec[CameraMessage]):
    """`camera_v1`: 32-byte little-endian header, view id, payload."""

    name = 'camera_v1'
    stream = 'camera'
    default_max_bytes = 4_000_000
    MAGIC = b'VLAC'
    VERSION = 1
    # magic, version, encoding, view id length, reserved, session, sequence, capture time,
    # width, height, payload length
    HEADER = struct.Struct('<4sBBBxIIdHHI')

    def encode(self, record: CameraMessage) -> bytes:
        view = record.view.encode('utf-8')
        header = self.HEADER.pack(self.MAGIC, self.VERSION, _ENCODING_IDS[record.encoding],
                                  len(view), record.session, record.sequence,
                                  record.capture_time_s, record.width, record.height,
                                  len(record.data))
        return b''.join((header, view, record.data))

    def decode(self, data: bytes | bytearray | memoryview) -> CameraMessage:
        self.check_size(data, self.HEADER.size)
        (magic, version, encoding_id, view_len, session, sequence, capture_s, width, height,
         payload_len) = self.HEADER.unpack_from(data)
        if magic != self.MAGIC:
            raise WireError(BAD_MAGIC, f'magic {bytes(magic)!r} != {self.MAGIC!r}')
        if version != self.VERSION:
            raise WireError(BAD_VERSION, f'version {version}, this decoder speaks {self.VERSION}')
        if not 1 <= view_len <= MAX_VIEW_ID_BYTES:
            raise WireError(BAD_COUNT, f'view id length {view_len} not in 1..{MAX_VIEW_ID_BYTES}')
        expected = self.HEADER.size + view_len + payload_len
        if len(data) < expected:
            raise WireError(TRUNCATED, f'{len(data)} bytes, header declares {expected}')
        if len(data) > expected:
            raise WireError(OVERSIZED, f'{len(data)} bytes, header declares {expected}')
        require_finite('capture time', capture_s)
        encoding = ENCODINGS.get(encoding_id)
        if encoding is None:
            raise WireError(BAD_VALUE, f'unknown encoding id {encoding_id}')
        if capture_s <= 0.0 or width == 0 or height == 0 or payload_len == 0:
            raise WireError(BAD_VALUE, f'capture time {capture_s}, size {width}x{height}, '
                                       f'{payload_len} payload bytes: all must be > 0')
        start = self.HEADER.size
        try:
            view = bytes(data[start:start + view_len]).decode('utf-8')
        except UnicodeDecodeError as exc:
            raise WireError(BAD_VALUE, f'view id is not UTF-8: {exc}') from None
        payload = bytes(data[start + view_len:])
        if not payload.startswith(_SIGNATURES[encoding]):
            raise WireError(BAD_VALUE, f'payload does not start like {encoding}')
        return CameraMessage(view=view, capture_time_s=capture_s, width=width, height=height,
                             data=payload, encoding=encoding, session=session,
                             sequence=sequence)


def camera_frame(message: CameraMessage, stamp_s: float) -> CameraFrame:
    """Return the pipeline's CameraFrame, stamped with the capture time on the local clock."""
    return CameraFrame(view=message.view, stamp_s=stamp_s, data=message.data,
                       encoding=message.encoding, width=message.width, height=message.height)
