"""The receive side of a bridge, free of ROS.

Sockets with timeouts, size caps and (ZMQ) a connection monitor, a receive thread with a stop
Event, drop counting by cause, and the health numbers every bridge reports.

A node gives `ReceiveLoop` a socket factory and a handler `(data, t_recv) -> None`; the handler
decodes and publishes, raising `WireError` (malformed input) or `Drop` (well-formed but unusable,
e.g. late) to have the message counted and dropped. Socket errors recreate the socket after a
back-off, so the loop survives anything the network does.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
import ipaddress
import logging
import math
import socket
import threading
import time

import zmq
from zmq.utils.monitor import recv_monitor_message

from vla_insertion.core.bridge.clock import FUTURE_STAMP, PAST_STAMP
from vla_insertion.core.bridge.stream import Drop, LATE, STALE_SESSION, StreamTracker
from vla_insertion.core.config import ConfigError
from vla_insertion.core.data import NodeStatsData
from vla_insertion.core.health import DropCounter, HealthReport, LatencyStats, RateMeter
from vla_insertion.core.wire import CAUSES, OVERSIZED, WireError

_LOG = logging.getLogger(__name__)
UNKNOWN_VIEW = 'unknown_view'   # a camera view that is not configured
SOCKET_ERROR = 'socket_error'   # the socket failed and was recreated
SOURCE = 'source'               # a datagram from an address not on the allow-list (sensor_bridge)
# Every drop cause a bridge can count, reported from the start (camera_bridge adds
# UNKNOWN_VIEW): the decoders' causes, then the stream's (core/bridge/stream.py,
# core/bridge/clock.py).
BRIDGE_CAUSES = CAUSES + (LATE, STALE_SESSION, FUTURE_STAMP, PAST_STAMP, SOCKET_ERROR)

# What a ZMQ socket monitor shows about the connections (docs/wire.md, "What ZMQ hides").
CONNECTIONS = 'connections'                # a peer connected (or was accepted)
DISCONNECTS = 'disconnects'                # a connection closed: peer exit, network, size guard
HANDSHAKE_FAILURES = 'handshake_failures'  # a peer that does not speak ZMTP
LINK_EVENTS = (CONNECTIONS, DISCONNECTS, HANDSHAKE_FAILURES)
_MONITORED = {
    zmq.EVENT_ACCEPTED: CONNECTIONS, zmq.EVENT_CONNECTED: CONNECTIONS,
    zmq.EVENT_DISCONNECTED: DISCONNECTS,
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: HANDSHAKE_FAILURES,
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: HANDSHAKE_FAILURES,
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: HANDSHAKE_FAILURES,
}


class SessionTracker:
    """Follow a sender's session id: a new id is a restart, an id seen before is stale.

    For a stream without clock or sequence checks (sim_cell's command receiver); the bridges
    use core.stream.StreamTracker, which also serves an older session that is still sending.

    ZMQ fair-queues between a restarted sender's old and new connections, so a few messages of
    the old session can arrive after the first of the new one; they must not count as another
    restart.
    """

    def __init__(self, remember: int = 16) -> None:
        self.current: int | None = None
        self.restarts = 0
        self._previous: deque[int] = deque(maxlen=remember)

    def check(self, session: int) -> bool:
        """Return True if `session` starts a new sender instance; Drop if it is an old one."""
        if session == self.current:
            return False
        if session in self._previous:
            raise Drop(STALE_SESSION, f'message from the sender session {session:#x} '
                                      f'that was replaced')
        restarted = self.current is not None
        if restarted:
            self.restarts += 1
            self._previous.append(self.current)
        self.current = session
        return restarted


class ZmqSource:
    """A PULL (bind) or SUB (connect) socket returning one message per recv(), or None.

    A socket monitor counts connections, disconnects and failed handshakes (`take_events`).
    `secure(socket)` sets the security options before the bind or connect (CURVE keys); a
    peer whose handshake fails shows up as a `handshake_failures` event.
    A connection that ZMQ drops for a message over ZMQ_MAXMSGSIZE is not re-established by a
    connecting socket (libzmq treats it as a protocol error), so a SUB reconnects itself once
    the messages it already holds are read.
    """

    def __init__(self, context: zmq.Context, socket_type: int, endpoint: str, bind: bool,
                 timeout_s: float, max_bytes: int,
                 secure: Callable[[zmq.Socket], None] | None = None) -> None:
        self._socket = context.socket(socket_type)
        self._endpoint = endpoint
        self._bind = bind
        self._max_bytes = max_bytes
        # Hard guard against memory exhaustion: beyond this ZMQ drops the peer's connection (it
        # reconnects). Between max_bytes and the guard the message arrives and is counted.
        self._socket.setsockopt(zmq.MAXMSGSIZE, 2 * max_bytes + 65536)
        self._socket.setsockopt(zmq.RCVTIMEO, max(1, int(timeout_s * 1000)))
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.RCVHWM, 1000)
        if socket_type == zmq.SUB:
            self._socket.setsockopt(zmq.SUBSCRIBE, b'')
            self._socket.setsockopt(zmq.RECONNECT_IVL, 100)       # [ms] pick up a restart
            self._socket.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        self._monitor = self._socket.get_monitor_socket(
            sum(_MONITORED) | zmq.EVENT_CONNECT_RETRIED)
        self._events: list[str] = []
        self._reconnect = False     # a connect-mode socket lost its connection
        try:
            if secure is not None:  # CURVE keys (core/wire/curve.py CurveLink.secure)
                secure(self._socket)
            (self._socket.bind if bind else self._socket.connect)(endpoint)
        except zmq.ZMQError:
            self.close()
            raise

    def recv(self) -> bytes | None:
        self._read_monitor()
        try:
            # while a reconnect is due, only drain what the socket already holds
            data = self._socket.recv(zmq.NOBLOCK if self._reconnect else 0)
        except zmq.Again:
            if self._reconnect:
                self._reconnect = False
                try:
                    self._socket.disconnect(self._endpoint)
                except zmq.ZMQError:
                    pass                # libzmq already dropped the endpoint
                self._socket.connect(self._endpoint)
            return None
        if len(data) > self._max_bytes:
            raise WireError(OVERSIZED, f'{len(data)} bytes > cap {self._max_bytes}')
        return data

    def _read_monitor(self) -> None:
        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)['event']
            except zmq.Again:
                return
            if event in _MONITORED:
                self._events.append(_MONITORED[event])
            if not self._bind:
                if event == zmq.EVENT_DISCONNECTED:
                    self._reconnect = True
                elif event in (zmq.EVENT_CONNECT_RETRIED, zmq.EVENT_CONNECTED):
                    self._reconnect = False     # libzmq is reconnecting by itself

    def take_events(self) -> list[str]:
        """Return the connection events (LINK_EVENTS names) seen since the last call."""
        events, self._events = self._events, []
        return events

    def close(self) -> None:
        try:
            self._socket.disable_monitor()
        except zmq.ZMQError:
            pass
        self._monitor.close(linger=0)
        self._socket.close(linger=0)


class SourceAllowList:
    """The sender addresses a UDP socket accepts: addresses or networks ('10.0.0.0/24').

    UDP has no handshake: anyone who can reach the port can send, and a spoofed force
    reading could hide a contact from the force gate. The check is on the datagram's source
    address as the kernel reports it; it keeps out other hosts and stray senders on the cell
    network, not an attacker on the same segment who forges source addresses (docs/wire.md,
    "Securing the cell network": a dedicated interface or VLAN does that).
    """

    def __init__(self, entries: Iterable[str]) -> None:
        try:
            self._networks = tuple(ipaddress.ip_network(e, strict=False) for e in entries)
        except ValueError as exc:
            raise ConfigError(f'allow-list: {exc}') from None
        if not self._networks:
            raise ConfigError('allow-list: give at least one address (0.0.0.0/0 accepts all)')
        self._known: dict[str, bool] = {}     # host string -> verdict, for the hot path

    def allows(self, host: str) -> bool:
        verdict = self._known.get(host)
        if verdict is None:
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                verdict = False
            else:
                verdict = any(address in net for net in self._networks)
            if len(self._known) < 1024:       # a spoofing flood must not grow it forever
                self._known[host] = verdict
        return verdict

    def __str__(self) -> str:
        return ', '.join(str(n) for n in self._networks)


class UdpSource:
    """A bound UDP socket returning one datagram per recv(), or None on timeout.

    With `allowed`, a datagram from any other source address raises Drop(SOURCE) before its
    content is looked at.
    """

    def __init__(self, host: str, port: int, timeout_s: float, max_bytes: int,
                 buffer_bytes: int, allowed: SourceAllowList | None = None) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.settimeout(timeout_s)
        self._socket.bind((host, port))
        self._max_bytes = max_bytes
        self._allowed = allowed
        # one byte more than the cap: a datagram that fills it was larger than allowed
        self._buffer = bytearray(max_bytes + 1)

    def recv(self) -> bytes | None:
        try:
            n, (host, port) = self._socket.recvfrom_into(self._buffer)
        except socket.timeout:
            return None
        if self._allowed is not None and not self._allowed.allows(host):
            raise Drop(SOURCE, f'datagram from {host}:{port}, which is not on the allow-list '
                               f'({self._allowed})')
        if n > self._max_bytes:
            raise WireError(OVERSIZED, f'datagram over the cap of {self._max_bytes} bytes')
        return bytes(self._buffer[:n])

    def take_events(self) -> list[str]:
        return []               # UDP has no connections

    def close(self) -> None:
        self._socket.close()


Source = ZmqSource | UdpSource


class ReceiveLoop:
    """Receive in a daemon thread until stop(); count, time and drop what the handler refuses."""

    def __init__(self, name: str, open_source: Callable[[], Source],
                 handler: Callable[[bytes, float], None],
                 on_drop: Callable[[str, str], None] | None = None,
                 retry_s: float = 0.5, causes: tuple[str, ...] = BRIDGE_CAUSES) -> None:
        self.name = name
        self._open = open_source
        self._handler = handler
        self._on_drop = on_drop or (lambda cause, text: _LOG.warning(f'{name}: {text}'))
        self._retry_s = retry_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.drops = DropCounter(causes)
        self.link = DropCounter(LINK_EVENTS)       # connection events (ZMQ sources)
        self.received = 0
        self.rx_rate = RateMeter()
        self.hop_ms = LatencyStats(maxlen=2000)   # receive -> handler done (published)
        self.last_rx_s = math.nan                 # local time of the newest message [s]
        self.error: BaseException | None = None   # set if the handler raised unexpectedly
        try:
            self._source: Source | None = self._open()
        except (OSError, zmq.ZMQError) as exc:    # e.g. the port is in use: fail at start-up
            raise ConfigError(f'{name}: cannot open the socket: {exc}') from exc

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        elif self._source is not None:      # never started: close the socket opened here
            self._source.close()
            self._source = None

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        source: Source | None = self._source
        self._source = None                 # the thread owns and closes it from here on
        try:
            while not self._stop.is_set():
                if source is None:
                    source = self._reopen()
                    continue
                try:
                    data = source.recv()
                except (WireError, Drop) as exc:     # over the size cap
                    self.received += 1
                    self._drop(exc.cause, str(exc))
                    data = None
                except (OSError, zmq.ZMQError) as exc:
                    self._drop(SOCKET_ERROR, f'socket error, reopening: {exc}')
                    source.close()
                    source = None
                    continue
                for event in source.take_events():
                    self.link.count(event)
                if data is not None:
                    self._handle(data)
        except BaseException as exc:
            self.error = exc
            _LOG.exception(f'{self.name}: receive thread died')
            raise
        finally:
            if source is not None:
                source.close()

    def _reopen(self) -> Source | None:
        if self._stop.wait(self._retry_s):
            return None
        try:
            return self._open()
        except (OSError, zmq.ZMQError) as exc:
            self._drop(SOCKET_ERROR, f'cannot reopen the socket: {exc}')
            return None

    def _handle(self, data: bytes) -> None:
        t_recv = time.time()
        self.received += 1
        self.last_rx_s = t_recv
        self.rx_rate.tick(t_recv)
        try:
            self._handler(data, t_recv)
        except (WireError, Drop) as exc:
            self._drop(exc.cause, str(exc))
            return
        self.hop_ms.add((time.time() - t_recv) * 1e3)

    def _drop(self, cause: str, text: str) -> None:
        self.drops.count(cause)
        self._on_drop(cause, text)


def close_bridge(loop: ReceiveLoop | None, zmq_context=None, curve=None) -> None:
    """Stop a bridge's receive loop, its CURVE handler, then close its ZMQ context.

    Any of them may be None; `curve` is a core.wire.curve.CurveLink (its ZAP thread uses the
    context, so it stops first).

    Bridge nodes call this from destroy_node(), which also runs for a node whose __init__
    failed half-way (a port already in use), so nothing here may assume it was built.
    """
    if loop is not None:
        loop.stop()
    if curve is not None:
        curve.close()
    if zmq_context is not None:
        zmq_context.destroy(linger=0)


class BridgeHealth:
    """The health every bridge reports; the node adds its stream's own checks.

    Remembers the totals of the previous report, to warn about new drops, gaps, clock steps
    and disconnects only. `gap_key` names the missed-items counter in the stream's unit
    (`gap_messages`, or `gap_samples` for the sensor); `link` adds the ZMQ connection counters.
    """

    def __init__(self, node: str, loop: ReceiveLoop, stream: StreamTracker,
                 stale_after_s: float, gap_key: str = 'gap_messages', link: bool = True) -> None:
        self._node = node
        self._loop = loop
        self._stream = stream
        self._stale_after_s = stale_after_s
        self._gap_key = gap_key
        self._link = link
        self._before: dict[str, int] = {}

    def _new(self, name: str, total: int) -> int:
        new = total - self._before.get(name, 0)
        self._before[name] = total
        return new

    def report(self, now_s: float, published: int,
               rate_hz: float) -> tuple[HealthReport, NodeStatsData]:
        loop, stream = self._loop, self._stream
        health = HealthReport()
        offset_s, calibrated = stream.clock_summary()
        age = now_s - loop.last_rx_s
        hop = loop.hop_ms.summary()
        drops = loop.drops.as_dict()
        total_drops = sum(drops.values())
        gaps = sum(stream.gaps.values())
        link = loop.link.as_dict() if self._link else {}
        health.values.update({
            'received': loop.received, 'published': published, 'rate_hz': rate_hz,
            'last_message_age_s': age, 'hop_latency_mean_ms': hop['mean'],
            'hop_latency_p99_ms': hop['p99'], 'clock_offset_ms': offset_s * 1e3,
            'clock_calibrated': calibrated, 'clock_steps': stream.clock_steps,
            'sender_restarts': stream.restarts, 'session_switches': stream.session_switches,
            self._gap_key: gaps, **link, 'dropped': total_drops,
            **{f'drops.{cause}': n for cause, n in sorted(drops.items())}})
        if loop.error is not None or not loop.alive:
            health.escalate('ERROR', f'receive thread stopped: {loop.error!r}')
        elif math.isnan(age):
            health.escalate('WARN', 'no data received yet')
        elif age > self._stale_after_s:
            health.escalate('ERROR', f'no data for {age:.1f} s')
        if loop.received and not calibrated:
            health.escalate('WARN', 'clock offset not calibrated yet')
        for name, total, text in (
                ('dropped', total_drops, 'dropped {} bad or late messages'),
                ('gaps', gaps, f'{{}} {self._gap_key.split("_")[-1]} lost in sequence gaps'),
                ('steps', stream.clock_steps, 'sender clock stepped {} times'),
                ('disconnects', link.get(DISCONNECTS, 0), '{} connections dropped')):
            new = self._new(name, total)
            if new > 0:
                health.escalate('WARN', text.format(new))
        stats = NodeStatsData(stamp_s=now_s, node=self._node, rate_hz=rate_hz,
                              latency_mean_ms=hop['mean'], latency_p99_ms=hop['p99'],
                              input_age_s=age, published=published, dropped=total_drops)
        return health, stats
