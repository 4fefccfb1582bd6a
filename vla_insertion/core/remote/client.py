"""The client's side of one policy server: the connection's state machine and its numbers.

        +-------------+  connect() ok: metadata   +-----------+
        | connecting  | ---------------------> | connected | --infer--> reply
        +-------------+                        +-----------+
           ^      | connect() failed                | lost, reply timeout,
           |      v                              | openpi server error
        +-------------+   <----------------------+
        |  waiting    |   backoff: reconnect_min_s, doubled after each failed connect up to
        +-------------+   reconnect_max_s, back to the minimum once connected; none after an
                          openpi server error (the server is up, it failed one request)

A daemon thread makes the connection (and remakes it): the tick that calls `infer` never waits
for a connect. While there is no connection, `infer` refuses at once (`server_unreachable`,
saying why). A reply that does not come in time drops the connection (a late reply would answer
the next request), as does an openpi server error (the server closes after it); a GR00T error
map and a bad reply keep it. Bad replies are counted by cause (`bad_replies`), round trips in
`rtt_ms` (send to reply received) and the server's own time, where it reports one, in
`server_ms`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
import logging
import threading
from typing import Protocol

from vla_insertion.core.health import DropCounter, HealthReport, LatencyStats
from vla_insertion.core.remote.mapping import ServerObservation
from vla_insertion.core.remote.refusals import (
    BadReply, REPLY_CAUSES, ReplyTimeout, ServerError, ServerUnreachable)

log = logging.getLogger(__name__)
CONNECTING, CONNECTED, WAITING = 'connecting', 'connected', 'waiting'


class Connection(Protocol):
    """One protocol's connection (openpi.py, gr00t.py)."""

    address: str
    closes_on_error: bool

    def connect(self, timeout_s: float) -> dict: ...

    def infer(self, obs: ServerObservation, timeout_s: float) -> tuple[dict, float]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Reply:
    actions: dict                  # the reply's map: the action arrays by key
    rtt_ms: float                  # request sent -> reply received [ms]


class RemoteClient:
    """Keep a connection to one server (see the module); `infer` from one thread at a time."""

    def __init__(self, connection: Callable[[], Connection], *, connect_timeout_s: float,
                 reply_timeout_s: float, reconnect_min_s: float, reconnect_max_s: float) -> None:
        self._new_connection = connection
        self.address = connection().address
        self.connect_timeout_s = connect_timeout_s
        self.reply_timeout_s = reply_timeout_s
        self._backoff = (reconnect_min_s, reconnect_max_s)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._conn: Connection | None = None
        self._retry_now = False        # the last drop was an openpi server error
        self.state = CONNECTING
        self.why = 'connecting'        # why there is no connection
        self.metadata: dict = {}
        self.connects = 0              # connections made
        self.failed_connects = 0
        self.disconnects = 0           # connections dropped
        self.bad_replies = DropCounter(REPLY_CAUSES)
        self.rtt_ms = LatencyStats(maxlen=600)
        self.last_rtt_ms = float('nan')
        self.failed = ''               # an unexpected error that stopped the connector
        self._thread = threading.Thread(target=self._connector, daemon=True,
                                        name='policy_connector')

    def start(self) -> RemoteClient:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout=self.connect_timeout_s + 2.0)
        with self._cond:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def wait_connected(self, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._conn is not None, timeout_s)

    def infer(self, obs: ServerObservation) -> Reply:
        """Send one observation; raise a PolicyRefusal (refusals.py) when no chunk comes."""
        with self._cond:
            conn = self._conn
        if conn is None:
            raise ServerUnreachable(f'no connection to {self.address}: {self.why}')
        try:
            reply, rtt_ms = conn.infer(obs, self.reply_timeout_s)
        except (ServerUnreachable, ReplyTimeout) as exc:
            self._drop(conn, str(exc))
            raise
        except ServerError as exc:
            if conn.closes_on_error:
                self._drop(conn, f'the server failed and closed: {exc}', retry_now=True)
            raise
        except BadReply as exc:
            self.bad_replies.count(exc.cause)
            raise
        self.rtt_ms.add(rtt_ms)
        self.last_rtt_ms = rtt_ms
        return Reply(reply, rtt_ms)

    def values(self) -> dict:
        """Return the connection's /diagnostics numbers (every key present from the start)."""
        rtt = self.rtt_ms.summary()
        return {'server': self.address, 'connection': self.state, 'connects': self.connects,
                'connect_failures': self.failed_connects, 'disconnects': self.disconnects,
                'rtt_ms_mean': rtt['mean'], 'rtt_ms_p50': rtt['p50'], 'rtt_ms_p99': rtt['p99'],
                'rtt_ms_max': rtt['max'], 'server_metadata': str(self.metadata)[:200],
                **{f'bad_reply.{k}': v for k, v in sorted(self.bad_replies.as_dict().items())}}

    def health(self, report: HealthReport) -> None:
        """Escalate `report`: ERROR when the connector died, WARN while not connected."""
        if self.failed:
            report.escalate('ERROR', f'policy server connector stopped: {self.failed}')
        elif not self.connected:
            report.escalate('WARN', f'no connection to {self.address}: {self.why}')

    def count_bad_reply(self, exc: BadReply) -> None:
        """Count a reply that decoded but does not map (ActionMapping.to_ours)."""
        self.bad_replies.count(exc.cause)

    def _drop(self, conn: Connection, why: str, retry_now: bool = False) -> None:
        with self._cond:
            if self._conn is not conn:
                return
            self._conn, self.state, self.why = None, WAITING, why
            self._retry_now = retry_now
            self.disconnects += 1
            self._cond.notify_all()
        conn.close()
        log.warning('policy server %s: connection dropped: %s', self.address, why)

    def _connector(self) -> None:
        delay = low = self._backoff[0]
        try:
            while not self._stop.is_set():
                with self._cond:
                    self._cond.wait_for(lambda: self._conn is None or self._stop.is_set())
                if self._stop.is_set():
                    return
                retry_now, self._retry_now = self._retry_now, False
                if (self.connects or self.failed_connects) and not retry_now:   # back off
                    self.state = WAITING
                    if self._stop.wait(delay):
                        return
                self.state = CONNECTING
                conn = self._new_connection()
                try:
                    metadata = conn.connect(self.connect_timeout_s)
                except ServerUnreachable as exc:
                    conn.close()
                    self.failed_connects += 1
                    self.why = f'{exc} (next try in {delay:.1f} s)'
                    delay = min(2.0 * delay, self._backoff[1])
                    continue
                with self._cond:
                    self._conn, self.metadata, self.state = conn, metadata, CONNECTED
                    self.connects += 1
                    self.why = ''
                    self._cond.notify_all()
                delay = low
                log.info('policy server %s: connected (metadata %s)', self.address,
                         str(metadata)[:200])
        except Exception as exc:      # unexpected: report it (diagnostics ERROR), then raise
            self.failed = f'{type(exc).__name__}: {exc}'
            self.why = f'the connector stopped: {self.failed}'
            raise
