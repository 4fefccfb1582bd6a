"""rosbag2 bags without rosbag2: our message types, a crash-tolerant writer and a reader.

Built on the pure-Python `rosbags` library, so bags are written and read on machines that have
no rosbag2 (this one, a training box). The bags are ordinary rosbag2 bags (metadata.yaml +
MCAP or sqlite3 files) that `ros2 bag info/play` and `rosbags` open; every file stores the full
message definitions and type hashes (RIHS01) of its topics, our own `vla_insertion/msg/*`
types included, so no build of this package is needed to read them.

Crash tolerance (see docs/evaluation.md): a bag is written as a sequence of split files. The
split being written lives in a hidden folder `.active_<i>/`, already under its final name
(`.active_<i>/<bag>_<i>/<bag>_<i>.mcap`, so the metadata record inside the file names the file
it ends up as); when it is complete it is moved beside metadata.yaml, and metadata.yaml is
rewritten atomically (temporary file + rename). A
recorder that is killed or hits a full disk therefore leaves a bag that opens with everything up
to the last completed split. The active split is flushed every `flush_period_s` (MCAP chunk
closed, sqlite3 transaction committed), and `recover_bag` salvages its flushed part.

As rosbag2 writes them: `ros_distro` is the running distribution ($ROS_DISTRO, else
kilted), inside metadata.yaml and inside each file; a topic's offered QoS profiles are the
caller's (bag_recorder: one per publisher) and the same in every file, since readers match a
file's channels to metadata.yaml by them; log times are what the caller passes (bag_recorder:
the time DDS received the message, as rosbag2 records it).

ROS-free: imports rosbags and numpy, never rclpy or generated messages.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
import dataclasses
import functools
import logging
import os
from pathlib import Path
import shutil
import sqlite3
import struct
import time

import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.interfaces import (
    Nodetype, Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime)
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import get_types_from_msg, Stores
from rosbags.typesys import get_typestore as _rosbags_typestore
import yaml

logger = logging.getLogger(__name__)

PACKAGE = 'vla_insertion'
BAG_VERSION = 9                      # rosbag2 metadata version written (Jazzy and Kilted)
TYPESTORE_DISTRO = Stores.ROS2_KILTED
STORAGES = {'mcap': (StoragePlugin.MCAP, '.mcap'), 'sqlite3': (StoragePlugin.SQLITE3, '.db3')}
ACTIVE_PREFIX = '.active_'
METADATA = 'metadata.yaml'
_MCAP_MAGIC = b'\x89MCAP0\r\n'
DEFAULT_DISTRO = 'kilted'             # the distribution the wheels are


def ros_distro() -> str:
    """Return the ROS distribution bags are stamped with: $ROS_DISTRO, else kilted."""
    return os.environ.get('ROS_DISTRO') or DEFAULT_DISTRO


class BagError(RuntimeError):
    """A bag cannot be written, read or recovered."""


# --- message types ------------------------------------------------------------------------

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


# --- writer -------------------------------------------------------------------------------

@dataclasses.dataclass
class _Topic:
    msgtype: str
    msgdef: str
    rihs01: str
    qos: tuple[Qos, ...]


class BagWriter:
    """Write a rosbag2 bag as a sequence of split files that stay readable after a crash.

    `write()` takes serialized CDR bytes (a raw subscription's data, no deserialisation);
    `write_msg()` serialises a rosbags message object first. Not thread-safe: one writer thread.
    """

    def __init__(self, path: str | Path, *, storage: str = 'mcap', typestore=None,
                 split_duration_s: float = 0.0, flush_period_s: float = 1.0,
                 custom_data: dict[str, str] | None = None) -> None:
        if storage not in STORAGES:
            raise BagError(f'storage must be one of {sorted(STORAGES)}, got {storage!r}')
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f'{self.path} exists already; a bag is never overwritten')
        self.path.mkdir(parents=True)
        self._plugin, self._ext = STORAGES[storage]
        self.storage = storage
        self._store = typestore if typestore is not None else get_typestore()
        self._split_ns = int(split_duration_s * 1e9)
        self._flush_period_s = flush_period_s
        self._custom = dict(custom_data or {})
        self._topics: dict[str, _Topic] = {}
        self._writer: Writer | None = None
        self._conns: dict[str, object] = {}
        self._split_index = 0
        self._split_first_ns: int | None = None
        self._last_flush = time.monotonic()
        self._files: list[dict] = []    # per completed split: its metadata
        self.counts: dict[str, int] = {}
        self.bytes_written = 0
        self._open_split()

    # topics

    def add_topic(self, topic: str, msgtype: str, qos_profiles: Iterable[Qos] = (),
                  msgdef: str | None = None, rihs01: str | None = None) -> None:
        """Declare a topic; its definition comes from the typestore unless given."""
        if topic in self._topics:
            return
        if msgdef is None or rihs01 is None:
            if msgtype not in self._store.fielddefs:
                raise BagError(f'unknown message type {msgtype!r} for topic {topic}')
            msgdef, _ = self._store.generate_msgdef(msgtype, ros_version=2)
            rihs01 = self._store.hash_rihs01(msgtype)
        self._topics[topic] = _Topic(msgtype, msgdef, rihs01, tuple(qos_profiles))
        self.counts.setdefault(topic, 0)
        self._connect(topic)

    def _connect(self, topic: str) -> None:
        t = self._topics[topic]
        self._conns[topic] = self._writer.add_connection(
            topic, t.msgtype, msgdef=t.msgdef, rihs01=t.rihs01, offered_qos_profiles=t.qos)

    @property
    def topics(self) -> dict[str, str]:
        return {name: t.msgtype for name, t in self._topics.items()}

    # writing

    def write(self, topic: str, stamp_ns: int, data: bytes | memoryview) -> None:
        """Append one serialized message received at `stamp_ns` (the bag's log time)."""
        if self._split_first_ns is None:
            self._split_first_ns = stamp_ns
        elif self._split_ns and stamp_ns - self._split_first_ns >= self._split_ns:
            self._close_split()
            self._open_split()
            self._split_first_ns = stamp_ns
        self._writer.write(self._conns[topic], stamp_ns, data)
        self.counts[topic] += 1
        self.bytes_written += len(data)
        self.maybe_flush()

    def write_msg(self, topic: str, stamp_ns: int, msg) -> None:
        """Serialise a rosbags message object and append it."""
        self.write(topic, stamp_ns, self._store.serialize_cdr(msg, self._topics[topic].msgtype))

    def maybe_flush(self) -> None:
        """Flush the active split if `flush_period_s` has passed since the last flush."""
        period = self._flush_period_s
        if period > 0 and time.monotonic() - self._last_flush >= period:
            self.flush()

    def flush(self) -> None:
        """Make what was written so far reach the file (recoverable after a crash)."""
        self._last_flush = time.monotonic()
        storage = getattr(self._writer, 'storage', None)
        if storage is None:
            return
        if hasattr(storage, 'close_chunk'):        # MCAP: end the pending chunk
            if storage.chunk.bio.tell():
                storage.close_chunk()
            storage.bio.flush()
        elif hasattr(storage, 'conn'):             # sqlite3: commit the open transaction
            storage.conn.commit()

    def close(self) -> None:
        """Complete the active split and write the final metadata.yaml."""
        if self._writer is not None:
            self._close_split()

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # splits

    def _active_dir(self, index: int) -> Path:
        return self.path / f'{ACTIVE_PREFIX}{index}'

    def _split_name(self, index: int) -> str:
        return f'{self.path.name}_{index}'

    def _open_split(self) -> None:
        active = self._active_dir(self._split_index)
        active.mkdir()
        # the split is written under its final name: the file's own metadata record names it
        self._writer = Writer(active / self._split_name(self._split_index), version=BAG_VERSION,
                              storage_plugin=self._plugin)
        self._writer.open()
        _stamp_distro(self._writer.storage)
        self._conns = {}
        for topic in self._topics:
            self._connect(topic)

    def _close_split(self) -> None:
        writer, self._writer = self._writer, None
        active = self._active_dir(self._split_index)
        inner = active / self._split_name(self._split_index)
        writer.close()
        info = yaml.safe_load((inner / METADATA).read_text())['rosbag2_bagfile_information']
        name = f'{inner.name}{self._ext}'
        (inner / name).replace(self.path / name)
        shutil.rmtree(active)
        self._files.append(info)
        write_metadata(self.path, self._files, self.storage, self._custom)
        self._split_index += 1
        self._split_first_ns = None


def _stamp_distro(storage) -> None:
    """Make a split's own metadata record (MCAP record, sqlite3 table) name the real distro.

    rosbags writes `ros_distro: rosbags` into it; rosbag2 writes the distribution.
    """
    close = storage.close

    def close_with_distro(version: int, metadata: str) -> None:
        close(version, metadata.replace('ros_distro: rosbags', f'ros_distro: {ros_distro()}'))
    storage.close = close_with_distro


def write_metadata(path: Path, splits: list[dict], storage: str,
                   custom_data: dict[str, str] | None = None) -> None:
    """Atomically write metadata.yaml of a bag made of the given completed splits.

    Each split is a rosbag2 `rosbag2_bagfile_information` mapping (topics with counts, files).
    """
    topics: dict[str, dict] = {}
    files = []
    start, end, total = None, None, 0
    for info in splits:
        for entry in info['topics_with_message_count']:
            name = entry['topic_metadata']['name']
            if name in topics:
                topics[name]['message_count'] += entry['message_count']
            else:
                topics[name] = {'topic_metadata': dict(entry['topic_metadata']),
                                'message_count': entry['message_count']}
        for f in info['files']:
            files.append(f)
            count = f['message_count']
            total += count
            if count:
                s = f['starting_time']['nanoseconds_since_epoch']
                e = s + f['duration']['nanoseconds']
                start = s if start is None else min(start, s)
                end = e if end is None else max(end, e)
    meta = {'rosbag2_bagfile_information': {
        'version': BAG_VERSION,
        'storage_identifier': storage,
        'relative_file_paths': [f['path'] for f in files],
        'duration': {'nanoseconds': (end - start) if total else 0},
        'starting_time': {'nanoseconds_since_epoch': start if total else 0},
        'message_count': total,
        'topics_with_message_count': list(topics.values()),
        'compression_format': '',
        'compression_mode': '',
        'files': files,
        'custom_data': dict(custom_data) if custom_data else None,
        'ros_distro': ros_distro(),
    }}
    tmp = path / f'{METADATA}.tmp'
    tmp.write_text(yaml.safe_dump(meta, sort_keys=False), encoding='utf-8')
    tmp.replace(path / METADATA)


# --- reader -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TopicSummary:
    msgtype: str
    count: int


@dataclasses.dataclass(frozen=True)
class BagInfo:
    path: Path
    start_ns: int
    end_ns: int
    message_count: int
    topics: dict[str, TopicSummary]

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) * 1e-9


def bag_info(path: str | Path) -> BagInfo:
    """Summarise a bag: time span, message count and the type and count of each topic."""
    with _open_reader(path) as reader:
        topics = {name: TopicSummary(t.msgtype or '', t.msgcount)
                  for name, t in reader.topics.items()}
        return BagInfo(Path(path), reader.start_time, reader.end_time, reader.message_count,
                       topics)


def read_raw(path: str | Path, topics: Iterable[str] | None = None
             ) -> Iterator[tuple[str, str, int, bytes]]:
    """Yield (topic, msgtype, log time [ns], CDR bytes) in log-time order."""
    with _open_reader(path) as reader:
        conns = _select(reader, topics)
        if not conns:                  # rosbags reads every topic for an empty selection
            return
        for conn, stamp_ns, data in reader.messages(connections=conns):
            yield conn.topic, conn.msgtype, stamp_ns, data


def read_messages(path: str | Path, topics: Iterable[str] | None = None
                  ) -> Iterator[tuple[str, int, object]]:
    """Yield (topic, log time [ns], deserialised message) in log-time order.

    Messages are rosbags objects with the ROS field names (msg.header.stamp.sec, msg.actions as
    a numpy array); types are taken from the definitions stored in the bag.
    """
    with _open_reader(path) as reader:
        conns = _select(reader, topics)
        if not conns:
            return
        for conn, stamp_ns, data in reader.messages(connections=conns):
            yield conn.topic, stamp_ns, reader.deserialize(data, conn.msgtype)


def _select(reader, wanted):
    """Return the connections of the wanted topics (relative names match any namespace)."""
    if wanted is None:
        return reader.connections
    from vla_insertion.core.topics import matches
    return [c for c in reader.connections if any(matches(c.topic, w) for w in wanted)]


def _open_reader(path: str | Path) -> AnyReader:
    path = Path(path)
    if not (path / METADATA).exists():
        hint = ' (run `bag_recorder --recover` on it)' if any(
            path.glob(f'{ACTIVE_PREFIX}*')) else ''
        raise BagError(f'{path} has no {METADATA}: not a bag or not completed{hint}')
    try:
        return AnyReader([path], default_typestore=get_typestore())
    except Exception as exc:  # rosbags raises several unrelated error types
        raise BagError(f'cannot open bag {path}: {exc}') from exc


# --- recovery -----------------------------------------------------------------------------

@dataclasses.dataclass
class _Salvage:
    topics: dict[str, tuple[str, str, str]]          # topic -> (msgtype, msgdef, rihs01)
    messages: list[tuple[str, int, bytes]]           # (topic, log time ns, data)


def recover_bag(path: str | Path) -> int:
    """Turn the flushed part of every unfinished split into a completed split.

    For a bag whose recorder was killed or ran out of disk: returns the number of messages
    salvaged. Completed splits are untouched; metadata.yaml is rewritten to list them all.
    """
    path = Path(path)
    actives = sorted(path.glob(f'{ACTIVE_PREFIX}*'), key=lambda p: int(p.name.split('_')[-1]))
    if not actives:
        return 0
    storage, splits = _existing_splits(path)
    salvaged = 0
    for active in actives:
        mcap = next(active.rglob('*.mcap'), None)
        db3 = next(active.rglob('*.db3'), None)
        if mcap is not None:
            found, storage = _scan_mcap(mcap), storage or 'mcap'
        elif db3 is not None:
            found, storage = _scan_sqlite(db3), storage or 'sqlite3'
        else:
            found = _Salvage({}, [])
        if found.messages:
            splits.append(_rewrite_split(path, active, found, storage))
            salvaged += len(found.messages)
        shutil.rmtree(active)
    if storage is None:
        storage = 'mcap'
    write_metadata(path, splits, storage)
    logger.info(f'recovered {salvaged} messages into {path}')
    return salvaged


def _existing_splits(path: Path) -> tuple[str | None, list[dict]]:
    """Return the storage and the completed part of a bag as one split-like entry."""
    meta = path / METADATA
    if not meta.exists():
        return None, []
    info = yaml.safe_load(meta.read_text())['rosbag2_bagfile_information']
    return info['storage_identifier'], [info]


def _rewrite_split(path: Path, active: Path, found: _Salvage, storage: str) -> dict:
    index = int(active.name.split('_')[-1])
    staging = path / f'.recover_{index}'
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    tmp = staging / f'{path.name}_{index}'        # the final name, inside the file too
    plugin, ext = STORAGES[storage]
    writer = Writer(tmp, version=BAG_VERSION, storage_plugin=plugin)
    writer.open()
    _stamp_distro(writer.storage)
    conns = {topic: writer.add_connection(topic, msgtype, msgdef=msgdef, rihs01=rihs01)
             for topic, (msgtype, msgdef, rihs01) in found.topics.items()}
    for topic, stamp_ns, data in found.messages:
        writer.write(conns[topic], stamp_ns, data)
    writer.close()
    info = yaml.safe_load((tmp / METADATA).read_text())['rosbag2_bagfile_information']
    name = f'{tmp.name}{ext}'
    (tmp / name).replace(path / name)
    shutil.rmtree(staging)
    return info


def _scan_mcap(file: Path) -> _Salvage:
    """Read every complete record of a possibly truncated MCAP file (no summary needed)."""
    data = file.read_bytes()
    schemas: dict[int, tuple[str, str]] = {}
    channels: dict[int, tuple[str, int]] = {}
    messages: list[tuple[int, int, bytes]] = []
    if not data.startswith(_MCAP_MAGIC):
        return _Salvage({}, [])

    def walk(buf: bytes, pos: int, nested: bool) -> None:
        while pos + 9 <= len(buf):
            op, length = buf[pos], struct.unpack_from('<Q', buf, pos + 1)[0]
            body_start, body_end = pos + 9, pos + 9 + length
            if body_end > len(buf):
                return                               # truncated record: stop here
            body = buf[body_start:body_end]
            if op == 0x03:                           # Schema
                sid, = struct.unpack_from('<H', body, 0)
                name, p = _mcap_str(body, 2)
                _enc, p = _mcap_str(body, p)
                size, = struct.unpack_from('<I', body, p)
                schemas[sid] = (name, body[p + 4:p + 4 + size].decode())
            elif op == 0x04:                         # Channel
                cid, sid = struct.unpack_from('<HH', body, 0)
                topic, _ = _mcap_str(body, 4)
                channels[cid] = (topic, sid)
            elif op == 0x05:                         # Message
                cid, _seq, log_time = struct.unpack_from('<HIQ', body, 0)
                messages.append((cid, log_time, body[22:]))
            elif op == 0x06 and not nested:          # Chunk (we write them uncompressed)
                p = 28
                compression, p = _mcap_str(body, p)
                size, = struct.unpack_from('<Q', body, p)
                if compression == '':
                    walk(body[p + 8:p + 8 + size], 0, True)
            elif op == 0x0F:                         # DataEnd: the summary follows
                return
            pos = body_end

    walk(data, len(_MCAP_MAGIC), False)
    store = get_typestore()
    topics = {}
    for cid, (topic, sid) in channels.items():
        msgtype, msgdef = schemas.get(sid, ('', ''))
        rihs01 = store.hash_rihs01(msgtype) if msgtype in store.fielddefs else ''
        topics[topic] = (msgtype, msgdef, rihs01)
    out = [(channels[c][0], t, d) for c, t, d in messages if c in channels]
    out.sort(key=lambda m: m[1])
    return _Salvage(topics, out)


def _mcap_str(buf: bytes, pos: int) -> tuple[str, int]:
    size, = struct.unpack_from('<I', buf, pos)
    return buf[pos + 4:pos + 4 + size].decode(), pos + 4 + size


def _scan_sqlite(file: Path) -> _Salvage:
    """Read the committed messages of an unfinished sqlite3 split."""
    conn = sqlite3.connect(f'file:{file}?mode=ro', uri=True)
    try:
        defs = {row[0]: row[1] for row in conn.execute(
            'SELECT topic_type, encoded_message_definition FROM message_definitions')}
        rows = conn.execute('SELECT id, name, type, type_description_hash FROM topics').fetchall()
        topics = {name: (msgtype, defs.get(msgtype, ''), digest)
                  for _id, name, msgtype, digest in rows}
        names = {tid: name for tid, name, _t, _d in rows}
        messages = [(names[tid], ts, bytes(data)) for tid, ts, data in conn.execute(
            'SELECT topic_id, timestamp, data FROM messages ORDER BY timestamp')]
    except sqlite3.DatabaseError as exc:
        logger.warning(f'{file}: unreadable ({exc}); nothing salvaged')
        return _Salvage({}, [])
    finally:
        conn.close()
    return _Salvage(topics, messages)


def split_by_time(path: str | Path, ranges: list[tuple[str, int, int]], out_dir: str | Path,
                  storage: str = 'mcap') -> list[Path]:
    """Write one bag per (name, start_ns, end_ns) range of log times: out_dir/name.

    One pass over the source; every topic's messages in a range go to its bag unchanged (raw
    CDR, no deserialisation), with the topic's type. Returns the bag folders written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    writers = {name: BagWriter(out / name, storage=storage) for name, _, _ in ranges}
    try:
        for topic, msgtype, stamp_ns, data in read_raw(path):
            for name, start_ns, end_ns in ranges:
                if start_ns <= stamp_ns <= end_ns:
                    writer = writers[name]
                    if topic not in writer.topics:
                        writer.add_topic(topic, msgtype)
                    writer.write(topic, stamp_ns, data)
    finally:
        for writer in writers.values():
            writer.close()
    return [out / name for name, _, _ in ranges]
