"""Following the simulated cell's episodes from outside: the `episode_v1` stream (docs/wire.md).

    listener = EpisodeListener('127.0.0.1', 5558, on_end=print)
    listener.start()          # a daemon thread (core.bridge.ReceiveLoop) on a ZMQ SUB socket
    ...
    listener.stop()

sim_cell publishes a report at the start and the end of every episode (and periodically
between). The listener keeps the newest report, the end reports (the outcomes) and counts bad
messages by cause; the demo and the closed-loop evaluation read the outcomes from it without
sharing memory with the cell.
"""
from __future__ import annotations

import dataclasses
import threading

import zmq

from vla_insertion.core.bridge.receive import ReceiveLoop, ZmqSource
from vla_insertion.core.wire import EpisodeCodecV1, EpisodeMessage


class EpisodeListener:
    """Collect sim_cell's episode reports; `ends` holds one dict per decided episode."""

    def __init__(self, host: str, port: int, on_end=None, on_start=None,
                 timeout_s: float = 0.1) -> None:
        self._codec = EpisodeCodecV1()
        self._context = zmq.Context(1)
        self._lock = threading.Lock()
        self._on_end = on_end
        self._on_start = on_start
        self.latest: EpisodeMessage | None = None
        self.ends: list[dict] = []
        endpoint = f'tcp://{host}:{port}'
        self._loop = ReceiveLoop(
            'episodes', lambda: ZmqSource(self._context, zmq.SUB, endpoint, False, timeout_s,
                                          self._codec.max_bytes), self._on_message)

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()
        self._context.destroy(linger=0)

    @property
    def drops(self) -> dict[str, int]:
        return self._loop.drops.as_dict()

    def _on_message(self, data: bytes, t_recv: float) -> None:
        msg = self._codec.decode(data)              # WireError: counted by the loop
        with self._lock:
            self.latest = msg
            if msg.event == 'end':
                self.ends.append(dataclasses.asdict(msg))
        if msg.event == 'end' and self._on_end is not None:
            self._on_end(dataclasses.asdict(msg))
        if msg.event == 'start' and self._on_start is not None:
            self._on_start(dataclasses.asdict(msg))

    def outcomes(self) -> list[dict]:
        with self._lock:
            return list(self.ends)
