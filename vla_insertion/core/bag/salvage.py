"""Salvage of a killed recorder's bag: the flushed part of the split it was writing."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
import shutil
import sqlite3
import struct

from rosbags.rosbag2 import Writer
import yaml

from vla_insertion.core.bag.typestore import (
    ACTIVE_PREFIX, BAG_VERSION, get_typestore, MCAP_MAGIC, METADATA, STORAGES)
from vla_insertion.core.bag.writer import stamp_distro, write_metadata

logger = logging.getLogger(__name__)


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
    stamp_distro(writer.storage)
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
    if not data.startswith(MCAP_MAGIC):
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

    walk(data, len(MCAP_MAGIC), False)
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
