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


def test_two_host_checks_of_the_dds_profile(tmp_path):
    from pathlib import Path
    shipped = str(Path(__file__).resolve().parents[3] / 'config' / 'fastdds_two_hosts.xml')
    rows, buffers = verify.check_dds_profile(shipped, {})
    assert [r.status for r in rows] == [verify.PASS, verify.PASS] and buffers == 4 * 2**20
    assert 'datagrams 1400 B' in rows[1].detail
    rows, buffers = verify.check_dds_profile('', {'RMW_IMPLEMENTATION': 'rmw_cyclonedds_cpp'})
    assert [r.status for r in rows] == [verify.WARN, verify.WARN] and buffers == 0
    assert 'dds_profile:=two_hosts' in rows[1].detail
    big = tmp_path / 'big.xml'
    big.write_text('<dds><profiles><transport_descriptors><transport_descriptor>'
                   '<transport_id>u</transport_id><type>UDPv4</type>'
                   '<maxMessageSize>65000</maxMessageSize></transport_descriptor>'
                   '</transport_descriptors></profiles></dds>')
    row = verify.check_dds_profile(str(big), {})[0][1]
    assert row.status == verify.WARN and 'IP fragments' in row.detail
    (tmp_path / 'bad.xml').write_text('<dds>')
    assert verify.check_dds_profile(str(tmp_path / 'bad.xml'), {})[0][1].status == verify.FAIL
    env = {'FASTRTPS_DEFAULT_PROFILES_FILE': shipped}
    assert verify.profile_in_environment(env) == shipped
    assert verify.profile_in_environment({}) == ''


def test_two_host_checks_of_the_kernel_discovery_and_clock(tmp_path):
    (tmp_path / 'rmem_max').write_text('212992\n')
    (tmp_path / 'wmem_max').write_text('4194304\n')
    low = verify.check_socket_buffers(4194304, str(tmp_path))
    assert low.status == verify.WARN and 'net.core.rmem_max=212992' in low.detail
    (tmp_path / 'rmem_max').write_text('8388608\n')
    assert verify.check_socket_buffers(4194304, str(tmp_path)).status == verify.PASS
    assert verify.check_discovery({}).status == verify.PASS
    for env in ({'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}, {'ROS_LOCALHOST_ONLY': '1'},
                {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'OFF'}):
        assert verify.check_discovery(env).status == verify.WARN
    peers = verify.check_discovery({'ROS_AUTOMATIC_DISCOVERY_RANGE': 'OFF',
                                    'ROS_STATIC_PEERS': '192.168.10.3'})
    assert peers.status == verify.PASS and '192.168.10.3' in peers.detail
    clock = verify.check_clock_sync()              # this machine's: either, never an error
    assert clock.name == 'clock sync' and clock.status in (verify.PASS, verify.WARN)


def test_verify_two_hosts_names_the_profile_the_launch_would_use():
    from vla_insertion.tools import verify as tool
    rows = tool.check_two_hosts('two_hosts', {})
    assert [r.name for r in rows] == ['dds: rmw', 'dds: profile', 'kernel: socket buffers',
                                      'dds: discovery', 'clock sync']
    assert rows[1].status == verify.PASS and 'fastdds_two_hosts.xml' in rows[1].detail
    missing = tool.check_two_hosts('/no/such/profile.xml', {})
    assert [(r.name, r.status) for r in missing] == [('dds: profile', verify.FAIL)]
