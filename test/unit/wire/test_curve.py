"""CURVE on the cell's ZMQ links: the key files, and who gets through on real loopback sockets.

Each link is tried with a client without keys, one whose own key the server does not know,
one that expects another server key, and one with the right keys: only the last exchanges
messages. The server's socket monitor shows each refused peer as a failed handshake, which is
what the tests wait for (bounded) before they check that nothing arrived.
"""
import socket
import stat

import pytest
from support import free_port, wait_for
import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from vla_insertion.core.bridge.receive import HANDSHAKE_FAILURES, ReceiveLoop, ZmqSource
from vla_insertion.core.robot import CommandReceiver, DryRunBackend, ReceiverConfig
from vla_insertion.core.wire import CommandCodecV1, CommandMessage, FLAG_ARMED
from vla_insertion.core.wire.curve import (
    CurveError, CurveLink, generate_keys, host_files, link_keys, LinkKeys, ROLES)


@pytest.fixture(scope='module')
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp('keys')
    generate_keys(folder)
    return folder


@pytest.fixture(scope='module')
def other_keys(tmp_path_factory):
    """Another cell's keys: right names, wrong keys."""
    folder = tmp_path_factory.mktemp('other_keys')
    generate_keys(folder)
    return folder


def test_generate_writes_a_pair_per_role_with_private_secrets(tmp_path):
    written = generate_keys(tmp_path / 'k')
    assert sorted(p.name for p in written) == sorted(
        f'{r}{s}' for r in ROLES for s in ('.key', '.key_secret'))
    for path in written:
        public, secret = zmq.auth.load_certificate(path)
        assert len(public) == 40
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.suffix == '.key_secret':
            assert secret is not None and mode == 0o600
        else:
            assert secret is None and mode == 0o644
    before = (tmp_path / 'k' / 'robot_pc.key').read_bytes()
    with pytest.raises(CurveError, match='already'):
        generate_keys(tmp_path / 'k', ('robot_pc',))
    generate_keys(tmp_path / 'k', ('robot_pc',), force=True)
    assert (tmp_path / 'k' / 'robot_pc.key').read_bytes() != before


def test_link_keys_read_each_end_and_name_what_is_missing(keys, tmp_path):
    assert link_keys('', 'camera') is None, 'no folder: plain TCP'
    server = link_keys(keys, 'robot')
    assert server.server and server.role == 'robot_pc'
    assert sorted(server.clients.values()) == ['cell_observer', 'robot_bridge']
    client = link_keys(keys, 'robot', 'robot_bridge')
    assert not client.server and client.server_public == server.public
    with pytest.raises(CurveError, match='not a client'):
        link_keys(keys, 'command', 'robot_bridge')
    with pytest.raises(CurveError, match='robot_bridge.key_secret is missing'):
        link_keys(tmp_path, 'robot', 'robot_bridge')
    generate_keys(tmp_path, ('robot_pc',))
    with pytest.raises(CurveError, match='nobody could connect'):
        link_keys(tmp_path, 'command')
    (tmp_path / 'chunk_executor.key').write_text('not a certificate')
    with pytest.raises(CurveError, match='unreadable|holds no'):
        link_keys(tmp_path, 'command')


def test_each_host_needs_its_secrets_and_its_peers_public_keys():
    assert host_files(('robot_bridge', 'chunk_executor')) == [
        'chunk_executor.key_secret', 'robot_bridge.key_secret', 'robot_pc.key']
    assert host_files(('robot_pc',)) == [
        'robot_pc.key_secret', 'cell_observer.key', 'chunk_executor.key', 'robot_bridge.key']


def client_keys(folder, link, role, server_folder=None) -> LinkKeys:
    """Return a client's keys from `folder`, the server's public key from `server_folder`."""
    own = link_keys(folder, link, role)
    server = link_keys(server_folder or folder, link, role)
    return LinkKeys(link, role, own.public, own.secret, server_public=server.server_public)


def clients(keys, other_keys, link, role):
    """Return the clients to try: name -> keys (None: no CURVE at all)."""
    return {'no keys': None,
            'unknown client key': client_keys(other_keys, link, role, server_folder=keys),
            'other server key': client_keys(keys, link, role, server_folder=other_keys),
            'right keys': client_keys(keys, link, role)}


class Peer:
    """A connecting socket with a monitor, in its own context."""

    def __init__(self, socket_type, port, keys) -> None:
        self.context = zmq.Context(1)
        self.socket = self.context.socket(socket_type)
        self.socket.linger = 0
        if socket_type == zmq.SUB:
            self.socket.subscribe(b'')
        CurveLink(keys).secure(self.socket)
        self.monitor = self.socket.get_monitor_socket()
        self.events = []
        self.socket.connect(f'tcp://127.0.0.1:{port}')

    def handshake_failed(self) -> bool:
        while self.monitor.poll(0):
            self.events.append(recv_monitor_message(self.monitor)['event'])
        return any(e in (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                         zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL) for e in self.events)

    def close(self) -> None:
        self.socket.disable_monitor()
        self.monitor.close(0)
        self.socket.close(0)
        self.context.term()


def test_camera_link_admits_only_the_camera_sender(keys, other_keys):
    port = free_port()
    context = zmq.Context(1)
    curve = CurveLink(link_keys(keys, 'camera'), context)
    got = []
    loop = ReceiveLoop('camera', lambda: ZmqSource(context, zmq.PULL, f'tcp://127.0.0.1:{port}',
                                                   True, 0.05, 1000, curve.secure),
                       lambda data, t: got.append(data))
    loop.start()
    try:
        for n, (name, keys_) in enumerate(clients(keys, other_keys, 'camera',
                                                  'camera_sender').items()):
            peer = Peer(zmq.PUSH, port, keys_)
            try:
                peer.socket.send(name.encode())       # queued until a handshake succeeds
                if keys_ is None or name != 'right keys':
                    assert wait_for(lambda: loop.link.as_dict()[HANDSHAKE_FAILURES] > n
                                    and peer.handshake_failed(), 10.0), name
                else:
                    assert wait_for(lambda: got == [b'right keys'], 10.0), got
            finally:
                peer.close()
        assert got == [b'right keys'], 'only the camera sender gets through'
        assert curve.refused >= 1, 'the unknown client key was refused by the ZAP handler'
    finally:
        loop.stop()
        curve.close()
        context.destroy(linger=0)


def test_robot_link_serves_only_known_subscribers(keys, other_keys):
    context = zmq.Context(1)
    curve = CurveLink(link_keys(keys, 'robot'), context)
    pub = context.socket(zmq.PUB)
    pub.linger = 0
    curve.secure(pub)
    port = pub.bind_to_random_port('tcp://127.0.0.1')
    try:
        for name, keys_ in clients(keys, other_keys, 'robot', 'robot_bridge').items():
            peer = Peer(zmq.SUB, port, keys_)
            try:
                def heard() -> bool:
                    pub.send(b'state')
                    return peer.socket.poll(10) != 0
                if name == 'right keys':
                    assert wait_for(heard, 10.0), 'the robot bridge hears the robot PC'
                else:
                    assert wait_for(lambda: heard() or peer.handshake_failed(), 10.0)
                    assert not peer.socket.poll(0), f'{name}: a state got through'
            finally:
                peer.close()
    finally:
        pub.close(0)
        curve.close()
        context.destroy(linger=0)


def command(sequence: int) -> bytes:
    return CommandCodecV1().encode(CommandMessage(
        sender_time_s=1.0, positions_rad=(0.0,) * 6, velocities_rad_s=(0.0,) * 6,
        flags=FLAG_ARMED, session=7, sequence=sequence))


def test_command_link_takes_commands_only_from_the_chunk_executor(keys, other_keys):
    port = free_port()
    receiver = CommandReceiver(ReceiverConfig(port=port, max_age_s=None,
                                              curve_keys_dir=str(keys)), DryRunBackend(), None)
    receiver.start()
    try:
        for n, (name, keys_) in enumerate(clients(keys, other_keys, 'command',
                                                  'chunk_executor').items()):
            peer = Peer(zmq.PUSH, port, keys_)
            try:
                peer.socket.send(command(n + 1))
                if name == 'right keys':
                    assert wait_for(lambda: receiver.accepted == 1, 10.0), receiver.stats()
                else:
                    assert wait_for(peer.handshake_failed, 10.0), name
            finally:
                peer.close()
        assert receiver.loop.received == 1, 'only the chunk executor is heard'
    finally:
        receiver.close()


def test_a_missing_key_is_a_start_up_error_and_frees_the_port(tmp_path):
    port = free_port()
    with pytest.raises(CurveError):
        CommandReceiver(ReceiverConfig(port=port, curve_keys_dir=str(tmp_path)),
                        DryRunBackend(), None)
    with socket.socket() as s:
        s.bind(('127.0.0.1', port))     # nothing was left bound
