"""The ROS-free receive loop: real loopback sockets, drops by cause, size caps, clean stop.

Also the connection events a ZMQ monitor shows, and what ZMQ's size guard does to a connection.
"""
import socket
import threading
import time

import pytest
import support
import zmq

from vla_insertion.core.bridge.receive import (
    BRIDGE_CAUSES, BridgeHealth, CONNECTIONS, DISCONNECTS, Drop, HANDSHAKE_FAILURES, ReceiveLoop,
    SessionTracker, SOURCE, SourceAllowList, STALE_SESSION, UdpSource, ZmqSource)
from vla_insertion.core.bridge.stream import StreamTracker
from vla_insertion.core.config import ConfigError
from vla_insertion.core.wire import make_codec, OVERSIZED, RobotMessage, WireError


def free_port(kind=socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def nonzero(counter):
    return {k: v for k, v in counter.as_dict().items() if v}


def wait_for(predicate, timeout_s=5.0):
    return support.wait_for(predicate, timeout_s, 0.01)


class Collector:
    """Handler that refuses messages starting with b'late' and decodes robot_v1 otherwise."""

    def __init__(self):
        self.codec = make_codec('robot_v1')
        self.got = []
        self.event = threading.Event()

    def __call__(self, data, t_recv):
        if data.startswith(b'late'):
            raise Drop('late', 'stale')
        self.got.append((self.codec.decode(data), t_recv))
        self.event.set()


def test_udp_loop_counts_by_cause_and_keeps_going():
    port = free_port()
    handler = Collector()
    loop = ReceiveLoop('udp', lambda: UdpSource('127.0.0.1', port, 0.05, 200, 65536), handler)
    loop.start()
    good = make_codec('robot_v1').encode(RobotMessage(1.0, (0.0,) * 6, (0.0,) * 3, (0.0,) * 3))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for packet in (b'junk' * 40, good[:50], bytes(300), b'late!', good):
                tx.sendto(packet, ('127.0.0.1', port))
            assert wait_for(lambda: loop.received == 5)
        assert nonzero(loop.drops) == {'bad_magic': 1, 'truncated': 1, OVERSIZED: 1, 'late': 1}
        assert set(BRIDGE_CAUSES) <= set(loop.drops.as_dict()), 'every cause from the start'
        assert nonzero(loop.link) == {}, 'UDP has no connections'

        assert len(handler.got) == 1 and loop.hop_ms.summary()['n'] == 1
        assert loop.error is None and loop.alive
    finally:
        loop.stop()
    assert not loop.alive


def test_udp_allow_list_drops_other_sources_unread():
    port = free_port()
    handler = Collector()
    loop = ReceiveLoop('udp', lambda: UdpSource('127.0.0.1', port, 0.05, 200, 65536,
                                                SourceAllowList(['127.0.0.1'])),
                       handler, causes=BRIDGE_CAUSES + (SOURCE,))
    loop.start()
    good = make_codec('robot_v1').encode(RobotMessage(1.0, (0.0,) * 6, (0.0,) * 3, (0.0,) * 3))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            stranger.bind(('127.0.0.2', 0))          # another loopback address: not allowed
            for packet in (good, good, bytes(300)):  # oversized too: counted as source
                stranger.sendto(packet, ('127.0.0.1', port))
            assert wait_for(lambda: loop.received == 3)
            assert nonzero(loop.drops) == {SOURCE: 3}
            assert handler.got == [] and loop.last_rx_s != loop.last_rx_s, 'nothing handled'
            sender.sendto(good, ('127.0.0.1', port))
            assert wait_for(lambda: len(handler.got) == 1)
        assert nonzero(loop.drops) == {SOURCE: 3}
    finally:
        loop.stop()


@pytest.mark.parametrize('entries,host,allowed', [
    (['127.0.0.1'], '127.0.0.1', True), (['127.0.0.1'], '127.0.0.2', False),
    (['10.0.0.0/24'], '10.0.0.77', True), (['10.0.0.0/24'], '10.0.1.1', False),
    (['10.0.0.5', '192.168.1.0/30'], '192.168.1.3', True), (['0.0.0.0/0'], '8.8.8.8', True),
    (['127.0.0.1'], 'not-an-address', False)])
def test_allow_list_matches_addresses_and_networks(entries, host, allowed):
    assert SourceAllowList(entries).allows(host) is allowed
    assert SourceAllowList(entries).allows(host) is allowed, 'the cached verdict is the same'


@pytest.mark.parametrize('entries', [[], ['robot.local'], ['10.0.0.0/33']])
def test_allow_list_refuses_what_is_not_an_address(entries):
    with pytest.raises(ConfigError):
        SourceAllowList(entries)


def test_zmq_pull_caps_message_size():
    port = free_port(socket.SOCK_STREAM)
    context = zmq.Context(1)
    got = []
    loop = ReceiveLoop('zmq', lambda: ZmqSource(context, zmq.PULL, f'tcp://127.0.0.1:{port}',
                                                True, 0.05, 1000),
                       lambda data, t: got.append(len(data)))
    loop.start()
    push = context.socket(zmq.PUSH)
    push.connect(f'tcp://127.0.0.1:{port}')
    try:
        push.send(bytes(1500))      # over the cap, under ZMQ's hard guard: counted
        push.send(bytes(10))
        assert wait_for(lambda: got == [10])
        assert nonzero(loop.drops) == {OVERSIZED: 1}
        assert nonzero(loop.link) == {CONNECTIONS: 1}
    finally:
        push.close(linger=0)
        loop.stop()
        context.destroy(linger=0)


def test_port_in_use_is_a_config_error():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(('127.0.0.1', 0))
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError):
            ReceiveLoop('udp', lambda: UdpSource('127.0.0.1', port, 0.05, 100, 65536),
                        lambda d, t: None).stop()


@pytest.mark.filterwarnings('ignore::pytest.PytestUnhandledThreadExceptionWarning')
def test_unexpected_handler_error_stops_the_loop_and_is_reported():
    port = free_port()

    def broken(data, t):
        raise RuntimeError('bug')
    loop = ReceiveLoop('udp', lambda: UdpSource('127.0.0.1', port, 0.05, 100, 65536), broken)
    loop.start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        tx.sendto(b'x', ('127.0.0.1', port))
    assert wait_for(lambda: not loop.alive)
    assert isinstance(loop.error, RuntimeError)
    assert not isinstance(loop.error, WireError)


class RobotStream:
    """Handler: robot_v1 states through a StreamTracker, as robot_bridge does."""

    def __init__(self):
        self.codec = make_codec('robot_v1')
        self.stream = StreamTracker(calibration_batches=5)
        self.sequences = []

    def __call__(self, data, t_recv):
        msg = self.codec.decode(data)
        self.stream.admit('', msg.session, msg.sequence, msg.sender_time_s, t_recv)
        self.sequences.append(msg.sequence)


def robot_bytes(sequence):
    return make_codec('robot_v1').encode(RobotMessage(
        time.time(), (0.0,) * 6, (0.0,) * 3, (0.0,) * 3, session=5, sequence=sequence))


@pytest.mark.parametrize('pattern', ['push_pull', 'pub_sub'])
def test_a_message_over_the_zmq_guard_costs_a_counted_disconnect_and_gap(pattern):
    """Over 2 x cap + 64 KiB ZMQ drops the connection: the loss shows as a disconnect and a gap.

    A SUB does not reconnect after such a drop by itself (libzmq takes it for a protocol
    error); ZmqSource does, so the robot stream resumes.
    """
    port = free_port(socket.SOCK_STREAM)
    endpoint = f'tcp://127.0.0.1:{port}'
    context = zmq.Context(1)
    handler = RobotStream()
    rx_type, tx_type, bind = ((zmq.PULL, zmq.PUSH, True) if pattern == 'push_pull'
                              else (zmq.SUB, zmq.PUB, False))
    if not bind:
        tx = context.socket(tx_type)
        tx.bind(endpoint)
    loop = ReceiveLoop('zmq', lambda: ZmqSource(context, rx_type, endpoint, bind, 0.05, 1000),
                       handler)
    if bind:
        tx = context.socket(tx_type)
        tx.connect(endpoint)
    loop.start()
    health = BridgeHealth('test', loop, handler.stream, stale_after_s=1.0)
    try:
        sequence = 0
        while not handler.sequences and sequence < 500:    # until connected (a SUB joins late)
            tx.send(robot_bytes(sequence))
            sequence += 1
            time.sleep(0.01)
        # everything sent so far has arrived (the count below starts from a still stream)
        assert wait_for(lambda: handler.sequences and handler.sequences[-1] == sequence - 1)
        before = len(handler.sequences)
        tx.send(bytes(200_000))                  # over the guard of 2 x 1000 + 65536 bytes
        resumed = False
        for _ in range(500):                     # the stream resumes after a reconnect
            tx.send(robot_bytes(sequence))
            sequence += 1
            time.sleep(0.01)
            if wait_for(lambda: loop.link.as_dict()[DISCONNECTS] == 1, 0.0) and \
                    len(handler.sequences) > before + 5:
                resumed = True
                break
        assert resumed, f'no data after the disconnect: {loop.link.as_dict()}'
        assert wait_for(lambda: handler.sequences[-1] == sequence - 1)
        link = loop.link.as_dict()
        assert link[DISCONNECTS] == 1 and link[CONNECTIONS] == 2 and link[HANDSHAKE_FAILURES] == 0
        received = set(handler.sequences)
        # every state sent and not received is counted (PUB drops while disconnected; PUSH
        # loses what it had written to the dropped connection)
        assert handler.stream.gaps[''] == sequence - len(received), 'losses not all counted'
        report, _ = health.report(time.time(), published=len(received), rate_hz=100.0)
        assert report.values['disconnects'] == 1 and report.level == 'WARN'
        assert report.values['gap_messages'] == handler.stream.gaps['']
        assert 'connections dropped' in report.message
        assert ('messages lost' in report.message) == (handler.stream.gaps[''] > 0)
        assert nonzero(loop.drops) == {}, 'the oversized message never reached the socket'
    finally:
        tx.close(linger=0)
        loop.stop()
        context.destroy(linger=0)


def test_a_peer_with_another_security_mechanism_is_counted():
    port = free_port(socket.SOCK_STREAM)
    context = zmq.Context(1)
    loop = ReceiveLoop('zmq', lambda: ZmqSource(context, zmq.PULL, f'tcp://127.0.0.1:{port}',
                                                True, 0.05, 1000), lambda data, t: None)
    loop.start()
    try:
        # a ZMTP 3.0 greeting asking for CURVE (signature, version, mechanism, as-server, filler)
        greeting = (b'\xff' + bytes(8) + b'\x7f' + b'\x03\x00' + b'CURVE'.ljust(20, b'\0')
                    + bytes(32))
        with socket.create_connection(('127.0.0.1', port)) as raw:
            raw.sendall(greeting)
            assert wait_for(lambda: loop.link.as_dict()[HANDSHAKE_FAILURES] == 1)
    finally:
        loop.stop()
        context.destroy(linger=0)


def test_session_tracker_counts_restarts_and_drops_old_sessions():
    tracker = SessionTracker()
    assert tracker.check(1) is False            # the first session is not a restart
    assert tracker.check(1) is False
    assert tracker.check(2) is True and tracker.restarts == 1
    with pytest.raises(Drop) as info:
        tracker.check(1)                        # a late message of the replaced sender
    assert info.value.cause == STALE_SESSION and tracker.restarts == 1
