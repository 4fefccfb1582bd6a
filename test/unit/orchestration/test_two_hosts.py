"""Two hosts on one machine (core/orchestration/two_hosts.py): the drop filter and the link.

The filter's program is run here by a small classic-BPF interpreter on made-up packets; the
namespaces are made for real (no root: `unshare -rn`) where user namespaces are allowed, and
datagrams cross the veth, are dropped at the set rate, and stop during a partition while TCP
goes on.
"""
from __future__ import annotations

from pathlib import Path
import subprocess
import sys

import pytest

from vla_insertion.core.orchestration import two_hosts
from vla_insertion.core.orchestration.two_hosts import GPU, ROBOT, TwoHosts, udp_drop_program

ETH_IP, ETH_ARP = 0x0800, 0x0806
UDP, TCP = 17, 6


def _run_program(text: str, ethertype: int, ip_header: bytes, rand: int) -> int:
    """Run tc's `bpf bytecode` text on one packet; return what the filter returns."""
    count, *rest = text.split(',')
    program = [tuple(int(v) for v in ins.split()) for ins in rest]
    assert len(program) == int(count)
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = program[pc]
        if code == 0x20 and k == 0xFFFFF000:          # ld proto
            acc = ethertype
        elif code == 0x20 and k == 0xFFFFF038:        # ld rand
            acc = rand
        elif code == 0x30 and k >= 0xFFF00000:        # ldb [net + n]
            acc = ip_header[k - 0xFFF00000]
        elif code == 0x15:                            # jeq #k
            pc += jt if acc == k else jf
        elif code == 0x35:                            # jge #k
            pc += jt if acc >= k else jf
        elif code == 0x06:                            # ret #k
            return k
        else:
            raise AssertionError(f'instruction {code:#x} not expected')
        pc += 1


def _ip(protocol: int) -> bytes:
    return bytes([0x45, 0, 0, 28, 0, 0, 0, 0, 64, protocol]) + bytes(10)


def test_the_filter_matches_the_given_fraction_of_udp_and_nothing_else():
    program = udp_drop_program(0.01)
    threshold = round(0.99 * 2**32)
    assert _run_program(program, ETH_IP, _ip(UDP), threshold) != 0          # dropped
    assert _run_program(program, ETH_IP, _ip(UDP), threshold - 1) == 0      # passes
    assert _run_program(program, ETH_IP, _ip(UDP), 2**32 - 1) != 0
    for ethertype, header in ((ETH_IP, _ip(TCP)), (ETH_ARP, _ip(UDP))):
        assert _run_program(program, ethertype, header, 2**32 - 1) == 0     # never dropped
    partition = udp_drop_program(1.0)
    assert _run_program(partition, ETH_IP, _ip(UDP), 0) != 0                # every datagram
    assert _run_program(partition, ETH_IP, _ip(TCP), 0) == 0
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match='fraction'):
            udp_drop_program(bad)


UNAVAILABLE = two_hosts.unavailable_reason()
RECEIVE = """
import socket, sys
kind = socket.SOCK_DGRAM if sys.argv[1] == 'udp' else socket.SOCK_STREAM
s = socket.socket(socket.AF_INET, kind)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)   # a busy machine: room to wait
s.bind((sys.argv[2], 7700))
if kind == socket.SOCK_STREAM:
    s.listen(1)
print('bound', flush=True)
s.settimeout(float(sys.argv[3]))
n = 0
try:
    if kind == socket.SOCK_STREAM:
        s = s.accept()[0]
    while True:
        data = s.recv(65536)
        if not data:
            break
        n += 1 if kind == socket.SOCK_DGRAM else len(data)
except socket.timeout:
    pass
print(n, flush=True)
"""
SEND = """
import socket, sys, time
address, count = (sys.argv[2], 7700), int(sys.argv[3])
if sys.argv[1] == 'udp':
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(count):
        s.sendto(b'x' * 100, address)
        if i % 10 == 0:
            time.sleep(0.001)          # within the receiver's socket buffer
else:
    s = socket.create_connection(address, timeout=10)
    s.sendall(b'x' * count)
    s.close()
"""


def _transfer(net: TwoHosts, kind: str, count: int, silence_s: float = 1.0) -> int:
    """Send `count` UDP datagrams (or TCP bytes) from the GPU host; return what arrived."""
    receiver = subprocess.Popen(
        [*net.prefix(ROBOT), sys.executable, '-c', RECEIVE, kind, net.address[ROBOT],
         str(silence_s)], stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout.readline().strip() == 'bound'
        subprocess.run([*net.prefix(GPU), sys.executable, '-c', SEND, kind,
                        net.address[ROBOT], str(count)], check=True, timeout=60)
        return int(receiver.communicate(timeout=60)[0])
    finally:
        receiver.kill()
        receiver.wait()


@pytest.mark.slow
@pytest.mark.skipif(bool(UNAVAILABLE), reason=f'no network namespaces here: {UNAVAILABLE}')
def test_datagrams_cross_the_veth_are_dropped_at_the_rate_and_stop_in_a_partition():
    with TwoHosts() as net:
        for host, device in two_hosts.DEVICES.items():
            link = net.run(host, 'ip', '-o', 'addr', 'show', 'dev', device)
            assert f'{net.address[host]}/24' in link
        # each host its own /dev/shm (Fast DDS's shared-memory ports), as two machines have
        net.run(GPU, 'touch', '/dev/shm/vla_two_hosts_test')
        assert net.run(GPU, 'ls', '/dev/shm').split() == ['vla_two_hosts_test']
        assert 'vla_two_hosts_test' not in net.run(ROBOT, 'ls', '/dev/shm').split()
        assert not Path('/dev/shm/vla_two_hosts_test').exists()
        assert _transfer(net, 'udp', 1000) == 1000                    # the link works
        net.set_loss(0.5)
        arrived = _transfer(net, 'udp', 2000)
        assert 800 < arrived < 1200                                   # +-9 sigma of 1000
        assert net.dropped()[GPU] == 2000 - arrived
        net.partition()
        assert net.loss == 1.0
        assert _transfer(net, 'udp', 200, silence_s=0.5) == 0
        assert _transfer(net, 'tcp', 100_000) == 100_000              # TCP is not cut
        net.heal()
        assert _transfer(net, 'udp', 1000) == 1000
        assert net.sent_bytes()[GPU] > 400 * 100
    with pytest.raises(two_hosts.TwoHostsError, match='no host'):
        net.prefix(GPU)                                               # gone with stop()
