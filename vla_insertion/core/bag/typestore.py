"""Our message types in rosbags terms: the typestore, QoS profiles, messages, CDR stamps."""
from __future__ import annotations

import functools
import os
from pathlib import Path
import struct

import numpy as np
from rosbags.interfaces import (
    Nodetype, Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime)
from rosbags.rosbag2 import StoragePlugin
from rosbags.typesys import get_types_from_msg, Stores
from rosbags.typesys import get_typestore as _rosbags_typestore


PACKAGE = 'vla_insertion'


BAG_VERSION = 9                      # rosbag2 metadata version written (Jazzy and Kilted)


TYPESTORE_DISTRO = Stores.ROS2_KILTED


STORAGES = {'mcap': (StoragePlugin.MCAP, '.mcap'), 'sqlite3': (StoragePlugin.SQLITE3, '.db3')}


ACTIVE_PREFIX = '.active_'


METADATA = 'metadata.yaml'


MCAP_MAGIC = b'\x89MCAP0\r\n'


class BagError(RuntimeError):
    """A bag cannot be written, read or recovered."""


def find_msg_dir() -> Path:
    """Return the folder holding this package's .msg files (checkout first, then install)."""
    source = Path(__file__).resolve().parents[2] / 'msg'
    if source.is_dir() and any(source.glob('*.msg')):
        return source
    for prefix in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep):
        share = Path(prefix) / 'share' / PACKAGE / 'msg'
        if prefix and share.is_dir():
            return share
    raise BagError(f'no msg/ folder of {PACKAGE} found beside the sources ({source}) or in '
                   'AMENT_PREFIX_PATH; source install/setup.bash')


@functools.lru_cache(maxsize=4)
def get_typestore(msg_dir: str | None = None):
    """Kilted typestore with `vla_insertion/msg/*` registered under their ROS names.

    The CDR layout and RIHS01 hashes of the registered types equal what rosidl generates (the
    bag tests check the hashes against the installed type descriptions).
    """
    store = _rosbags_typestore(TYPESTORE_DISTRO)
    folder = Path(msg_dir) if msg_dir else find_msg_dir()
    types = {}
    for path in sorted(folder.glob('*.msg')):
        types.update(get_types_from_msg(path.read_text(encoding='utf-8'),
                                        f'{PACKAGE}/msg/{path.stem}'))
    store.register(types)
    return store


def qos(reliable: bool = True, depth: int = 10, transient_local: bool = False) -> Qos:
    """Describe an offered QoS profile as stored in the bag (what `ros2 bag play` offers).

    Depth 0 is a history discovery did not report (DDS does not send it): stored as unknown.
    """
    zero = QosTime(0, 0)
    return Qos(history=QosHistory.KEEP_LAST if depth else QosHistory.UNKNOWN, depth=depth,
               reliability=QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
               durability=(QosDurability.TRANSIENT_LOCAL if transient_local
                           else QosDurability.VOLATILE),
               deadline=zero, lifespan=zero, liveliness=QosLiveliness.AUTOMATIC,
               liveliness_lease_duration=zero, avoid_ros_namespace_conventions=False)


_NUMPY = {'bool': 'bool', 'byte': 'uint8', 'char': 'uint8', 'int8': 'int8', 'uint8': 'uint8',
          'int16': 'int16', 'uint16': 'uint16', 'int32': 'int32', 'uint32': 'uint32',
          'int64': 'int64', 'uint64': 'uint64', 'float32': 'float32', 'float64': 'float64'}


def make_message(msgtype: str, typestore=None, **fields):
    """Build a rosbags message object with ROS defaults (zeros, empty) for unset fields.

    Nested fields are given as already-built messages, e.g.
    `make_message('std_msgs/msg/Header', stamp=make_message('builtin_interfaces/msg/Time',
    sec=1))`. Numeric arrays are numpy arrays.
    """
    store = typestore if typestore is not None else get_typestore()
    _consts, defs = store.fielddefs[msgtype]
    values = {}
    for name, (nodetype, detail) in defs:
        if name in fields:
            values[name] = fields.pop(name)
        else:
            values[name] = _default(store, nodetype, detail)
    if fields:
        raise BagError(f'{msgtype} has no field(s) {sorted(fields)}')
    return store.types[msgtype](**values)


def _default(store, nodetype, detail):
    if nodetype == Nodetype.BASE:
        typename = detail[0]
        if typename in ('string', 'wstring'):
            return ''
        return False if typename == 'bool' else (0.0 if typename.startswith('float') else 0)
    if nodetype == Nodetype.NAME:
        return make_message(detail, store)
    (sub_type, sub_detail), count = detail
    if sub_type == Nodetype.BASE and sub_detail[0] in _NUMPY:
        size = count if nodetype == Nodetype.ARRAY else 0
        return np.zeros(size, dtype=_NUMPY[sub_detail[0]])
    if nodetype == Nodetype.ARRAY:
        return [_default(store, sub_type, sub_detail) for _ in range(count)]
    return []


def stamp(stamp_ns: int, typestore=None):
    """Return a builtin_interfaces/msg/Time for a time in ns."""
    return make_message('builtin_interfaces/msg/Time', typestore,
                        sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)


def header(stamp_ns: int, frame_id: str = '', typestore=None):
    """Return a std_msgs/msg/Header stamped `stamp_ns`."""
    return make_message('std_msgs/msg/Header', typestore, stamp=stamp(stamp_ns, typestore),
                        frame_id=frame_id)


def header_stamp_ns(msg) -> int | None:
    """Return a deserialised message's header.stamp in ns, or None if it has no header."""
    header = getattr(msg, 'header', None)
    if header is None:
        return None
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def cdr_header_stamp_ns(data: bytes | memoryview) -> int:
    """Return header.stamp in ns read straight from CDR bytes of a message that starts with it.

    Every message this package records (CompressedImage, JointState, PoseStamped and our own)
    begins with std_msgs/Header, whose stamp is the first 8 bytes after the 4-byte
    encapsulation header.
    """
    sec, nanosec = struct.unpack_from(_cdr_endian(data) + 'iI', data, 4)
    return sec * 1_000_000_000 + nanosec


def cdr_restamp(data: bytes | memoryview, stamp_ns: int) -> bytes:
    """Return a copy of CDR bytes whose leading header.stamp is replaced by `stamp_ns`."""
    out = bytearray(data)
    struct.pack_into(_cdr_endian(data) + 'iI', out, 4, stamp_ns // 1_000_000_000,
                     stamp_ns % 1_000_000_000)
    return bytes(out)


def _cdr_endian(data: bytes | memoryview) -> str:
    if len(data) < 12:
        raise BagError(f'CDR message of {len(data)} bytes has no header stamp')
    return '<' if data[1] & 1 else '>'
