"""The ROS-free receive loop: real loopback sockets, drops by cause, size caps, clean stop."""
import socket
import threading
import time

import pytest
import zmq

from vla_insertion.core.bridge import (
    Drop, ReceiveLoop, SessionTracker, STALE_SESSION, UdpSource, ZmqSource)
from vla_insertion.core.config import ConfigError
from vla_insertion.core.wire import make_codec, OVERSIZED, RobotMessage, WireError


def free_port(kind=socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.01)
    return predicate()


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
        assert loop.drops.as_dict() == {'bad_magic': 1, 'truncated': 1, OVERSIZED: 1, 'late': 1}
        assert len(handler.got) == 1 and loop.hop_ms.summary()['n'] == 1
        assert loop.error is None and loop.alive
    finally:
        loop.stop()
    assert not loop.alive


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
        assert loop.drops.as_dict() == {OVERSIZED: 1}
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


def test_session_tracker_counts_restarts_and_drops_old_sessions():
    tracker = SessionTracker()
    assert tracker.check(1) is False            # the first session is not a restart
    assert tracker.check(1) is False
    assert tracker.check(2) is True and tracker.restarts == 1
    with pytest.raises(Drop) as info:
        tracker.check(1)                        # a late message of the replaced sender
    assert info.value.cause == STALE_SESSION and tracker.restarts == 1
