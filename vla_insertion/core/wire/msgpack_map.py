"""Decoding helpers of the msgpack-map wire formats (robot_msgpack_v1, episode_v1).

Every failure is a WireError with its cause, as for the binary formats: a map that is not
complete msgpack, not ours (magic), of another version, or whose fields have the wrong type.
"""
from __future__ import annotations

import msgpack

from vla_insertion.core.wire.base import (
    BAD_COUNT, BAD_MAGIC, BAD_VALUE, BAD_VERSION, OVERSIZED, TRUNCATED, WireError)


def unpack_map(data: bytes | bytearray | memoryview, magic: str, version: int,
               what: str) -> dict:
    """Return the map of one message; `what` names the format in errors ('an episode map')."""
    try:
        doc = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True,
                              max_bin_len=0, max_ext_len=0)
    except msgpack.ExtraData:
        raise WireError(OVERSIZED, 'bytes after the msgpack map') from None
    except (ValueError, msgpack.UnpackException) as exc:
        # msgpack raises ValueError subclasses for short and corrupt input alike
        raise WireError(TRUNCATED, f'not a complete msgpack message: {exc}') from None
    if not isinstance(doc, dict) or doc.get('magic') != magic:
        raise WireError(BAD_MAGIC, f'not {what}')
    if doc.get('v') != version:
        raise WireError(BAD_VERSION, f'version {doc.get("v")!r}, this decoder speaks {version}')
    return doc


def number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WireError(BAD_VALUE, f'expected a number, got {type(value).__name__}')
    return float(value)


def numbers(value, n: int | None = None) -> tuple[float, ...]:
    """Return a list of numbers as a tuple, of exactly n when n is given."""
    if not isinstance(value, list) or (n is not None and len(value) != n):
        raise WireError(BAD_COUNT, f'expected a list of {n or "some"} numbers, got {value!r:.60}')
    return tuple(number(v) for v in value)


def text(value) -> str:
    if not isinstance(value, str) or len(value) > 32:
        raise WireError(BAD_VALUE, f'expected a short string, got {value!r:.40}')
    return value


def optional_bool(value) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise WireError(BAD_VALUE, f'expected a bool or nil, got {value!r:.40}')
    return value


def uint32(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 32:
        raise WireError(BAD_VALUE, f'expected a uint32, got {value!r:.40}')
    return value
