"""The crash-tolerant writer: each split moved into place whole, metadata rewritten atomically."""
from __future__ import annotations

from collections.abc import Iterable
import dataclasses
from pathlib import Path
import shutil
import time

from rosbags.interfaces import Qos
from rosbags.rosbag2 import Writer
import yaml

from vla_insertion.core.bag.reader import read_raw
from vla_insertion.core.bag.typestore import (
    ACTIVE_PREFIX, BAG_VERSION, BagError, get_typestore, METADATA, STORAGES)
from vla_insertion.core.distro import ros_distro


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
        stamp_distro(self._writer.storage)
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


def stamp_distro(storage) -> None:
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
