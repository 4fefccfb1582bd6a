"""Reading bags: their summary, raw CDR records and deserialised messages, in log-time order."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
import dataclasses
from pathlib import Path

from rosbags.highlevel import AnyReader

from vla_insertion.core.bag.typestore import ACTIVE_PREFIX, BagError, get_typestore, METADATA


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


def read_raw(path: str | Path, topics: Iterable[str] | None = None,
             start_ns: int | None = None, stop_ns: int | None = None
             ) -> Iterator[tuple[str, str, int, bytes]]:
    """Yield (topic, msgtype, log time [ns], CDR bytes) in log-time order.

    `start_ns`, `stop_ns`: only log times in [start, stop) (None: from the first, to the last).
    """
    with _open_reader(path) as reader:
        conns = _select(reader, topics)
        if not conns:                  # rosbags reads every topic for an empty selection
            return
        for conn, stamp_ns, data in reader.messages(connections=conns, start=start_ns,
                                                    stop=stop_ns):
            yield conn.topic, conn.msgtype, stamp_ns, data


def read_messages(path: str | Path, topics: Iterable[str] | None = None,
                  start_ns: int | None = None, stop_ns: int | None = None
                  ) -> Iterator[tuple[str, int, object]]:
    """Yield (topic, log time [ns], deserialised message) in log-time order.

    Messages are rosbags objects with the ROS field names (msg.header.stamp.sec, msg.actions as
    a numpy array); types are taken from the definitions stored in the bag. `start_ns`,
    `stop_ns`: only log times in [start, stop), as in `read_raw`.
    """
    with _open_reader(path) as reader:
        conns = _select(reader, topics)
        if not conns:
            return
        for conn, stamp_ns, data in reader.messages(connections=conns, start=start_ns,
                                                    stop=stop_ns):
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
