"""The verify checks tell a working sender from a silent one, on loopback only."""
import socket
import threading

import zmq

from vla_insertion.core.orchestration import verify


def _free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_python_deps_report_missing_module():
    rows = verify.check_python_deps(('numpy', 'no_such_module_xyz'))
    assert [r.status for r in rows] == [verify.PASS, verify.FAIL]
    assert 'ModuleNotFoundError' in rows[1].detail


def test_port_in_use_is_a_warning():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:
        held.bind(('127.0.0.1', 0))
        port = held.getsockname()[1]
        assert verify.check_port_free('udp', '127.0.0.1', port).status == verify.WARN
    assert verify.check_port_free('udp', '127.0.0.1', port).status == verify.PASS


def test_udp_sender_seen_and_silent():
    port = _free_port(socket.SOCK_DGRAM)
    assert verify.check_udp_sender('127.0.0.1', port, timeout_s=0.2).status == verify.WARN
    stop = threading.Event()

    def send():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            while not stop.is_set():
                s.sendto(b'x' * 100, ('127.0.0.1', port))
                stop.wait(0.01)                      # a datagram every 10 ms until stopped
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        row = verify.check_udp_sender('127.0.0.1', port, timeout_s=2.0)
    finally:
        stop.set()
        sender.join()
    assert row.status == verify.PASS and '100 bytes' in row.detail


def test_udp_sender_off_the_allow_list_fails():
    port = _free_port(socket.SOCK_DGRAM)
    stop = threading.Event()

    def send():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(('127.0.0.2', 0))                 # a sender sensor_bridge would refuse
            while not stop.is_set():
                s.sendto(b'x' * 100, ('127.0.0.1', port))
                stop.wait(0.01)
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        row = verify.check_udp_sender('127.0.0.1', port, timeout_s=2.0, allowed=('127.0.0.1',))
    finally:
        stop.set()
        sender.join()
    assert row.status == verify.FAIL and '127.0.0.2' in row.detail


def test_a_wildcard_bind_address_is_a_warning():
    assert verify.check_bind_address('sensor_bridge', '0.0.0.0').status == verify.WARN
    assert verify.check_bind_address('sensor_bridge', '192.168.10.2').status == verify.PASS


def test_zmq_publisher_seen_and_silent():
    port = _free_port()
    assert verify.check_zmq_publisher('127.0.0.1', port, timeout_s=0.2).status == verify.WARN
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(f'tcp://127.0.0.1:{port}')
    stop = threading.Event()

    def publish():
        while not stop.is_set():
            pub.send(b'state')
            stop.wait(0.01)                          # a state every 10 ms until stopped
    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    try:
        row = verify.check_zmq_publisher('127.0.0.1', port, timeout_s=3.0)
    finally:
        stop.set()
        publisher.join()
        pub.close()
    assert row.status == verify.PASS


def test_table_and_overall():
    rows = [verify.CheckResult('a', verify.PASS, 'ok'), verify.CheckResult('b', verify.WARN, '?')]
    assert verify.overall(rows) == verify.WARN
    rows.append(verify.CheckResult('c', verify.FAIL, 'bad'))
    assert verify.overall(rows) == verify.FAIL
    assert 'result: FAIL' in verify.format_table(rows)
