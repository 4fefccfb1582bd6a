"""The error type, the codec interface and the registry shared by every wire format.

A codec turns one wire message (a ZMQ frame or a UDP datagram) into a record in the sender's
units and back. Bridges pick their codec by name from config (`wire_format`), so a cell whose
senders speak differently needs a new registered codec, not a fork of the bridge.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Generic, TypeVar

RecordT = TypeVar('RecordT')

# Drop causes: the `cause` of every WireError is one of these, so bridges count drops by cause
# with no string parsing.
TRUNCATED = 'truncated'        # fewer bytes than the header or the declared lengths need
OVERSIZED = 'oversized'        # more bytes than the configured cap, or than declared
BAD_MAGIC = 'bad_magic'        # not one of our messages at all
BAD_VERSION = 'bad_version'    # our magic, a version this decoder does not speak
NON_FINITE = 'non_finite'      # NaN or inf in a time or a value
BAD_COUNT = 'bad_count'        # counts or lengths out of range or not what config expects
BAD_VALUE = 'bad_value'        # a field out of its documented range (encoding, gripper, ...)
CAUSES = (TRUNCATED, OVERSIZED, BAD_MAGIC, BAD_VERSION, NON_FINITE, BAD_COUNT, BAD_VALUE)


class WireError(ValueError):
    """A wire message is malformed; `cause` is one of the CAUSES constants.

    This is the only exception a decoder raises for bad input, whatever the bytes.
    """

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(f'{cause}: {message}')
        self.cause = cause


class Codec(Generic[RecordT]):
    """Encoder and decoder of one stream's wire format; subclasses register by `name`."""

    name: ClassVar[str] = ''
    stream: ClassVar[str] = ''        # one of STREAMS
    default_max_bytes: ClassVar[int] = 1 << 20

    def __init__(self, max_bytes: int | None = None) -> None:
        self.max_bytes = int(max_bytes or self.default_max_bytes)

    def encode(self, record: RecordT) -> bytes:
        raise NotImplementedError

    def decode(self, data: bytes | bytearray | memoryview) -> RecordT:
        raise NotImplementedError

    def check_size(self, data: bytes | bytearray | memoryview, minimum: int) -> None:
        """Raise WireError unless `minimum <= len(data) <= max_bytes`."""
        if len(data) > self.max_bytes:
            raise WireError(OVERSIZED, f'{len(data)} bytes > cap {self.max_bytes}')
        if len(data) < minimum:
            raise WireError(TRUNCATED, f'{len(data)} bytes < header {minimum}')


_REGISTRY: dict[str, type[Codec]] = {}
# command: executor -> robot PC; episode: sim_cell -> evaluation
STREAMS = ('camera', 'robot', 'sensor', 'command', 'episode')


def register(cls: type[Codec]) -> type[Codec]:
    """Class decorator: make a codec selectable by its `name`."""
    if not cls.name or cls.stream not in STREAMS:
        raise TypeError(f'{cls.__name__} needs a name and a stream')
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise TypeError(f'wire format {cls.name!r} registered twice')
    _REGISTRY[cls.name] = cls
    return cls


def codec_names(stream: str | None = None) -> list[str]:
    """Names of the registered codecs, optionally only those of one stream."""
    return sorted(n for n, c in _REGISTRY.items() if stream is None or c.stream == stream)


def make_codec(name: str, stream: str | None = None, **options: Any) -> Codec:
    """Build the codec registered as `name`; KeyError if unknown or of another stream."""
    cls = _REGISTRY.get(name)
    if cls is None or (stream is not None and cls.stream != stream):
        raise KeyError(f'unknown {stream or ""} wire format {name!r}; '
                       f'known: {codec_names(stream)}')
    return cls(**options)


def require_finite(what: str, *values: float) -> None:
    for v in values:
        if not math.isfinite(v):
            raise WireError(NON_FINITE, f'{what} is {v}')


def seq_delta(seq: int, expected: int) -> int:
    """Signed distance between two uint32 sequence numbers, correct across the wrap."""
    return ((seq - expected + (1 << 31)) % (1 << 32)) - (1 << 31)
