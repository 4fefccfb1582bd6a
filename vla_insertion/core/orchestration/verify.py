"""Checks behind the `verify` tool, which tells whether this machine is ready to run the cell.

Each check returns CheckResult rows (PASS / WARN / FAIL with a one-line detail). Checks are
plain functions so the tool, the tests and a person at a Python prompt can run any of them.
Network checks only contact the addresses given to them (the configured senders).
"""
from __future__ import annotations

from dataclasses import dataclass
import importlib
from pathlib import Path
import socket
import time

PASS, WARN, FAIL = 'PASS', 'WARN', 'FAIL'

PYTHON_DEPS = ('numpy', 'zmq', 'msgpack', 'PIL', 'yaml', 'torch', 'transformers',
               'safetensors', 'rosbags', 'matplotlib', 'tqdm', 'psutil')


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str                    # PASS, WARN or FAIL
    detail: str


def check_python_deps(modules=PYTHON_DEPS) -> list[CheckResult]:
    rows = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # noqa: B902 - any import failure is what we report
            rows.append(CheckResult(f'python: {name}', FAIL, f'{type(exc).__name__}: {exc}'))
            continue
        version = getattr(module, '__version__', None) or _distribution_version(name)
        rows.append(CheckResult(f'python: {name}', PASS, str(version)))
    return rows


def _distribution_version(module: str) -> str:
    from importlib import metadata
    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return '?'


def check_gpu() -> CheckResult:
    try:
        import torch
    except ImportError as exc:
        return CheckResult('gpu', FAIL, f'torch not importable: {exc}')
    if not torch.cuda.is_available():
        return CheckResult('gpu', WARN, 'no CUDA device: the VLM runs on the CPU (slow)')
    props = torch.cuda.get_device_properties(0)
    return CheckResult('gpu', PASS, f'{props.name}, {props.total_memory / 2**30:.1f} GiB')


def check_port_free(kind: str, address: str, port: int) -> CheckResult:
    """Check that a bridge can bind `port` (kind 'tcp' or 'udp') on `address`."""
    sock_type = socket.SOCK_STREAM if kind == 'tcp' else socket.SOCK_DGRAM
    name = f'port {kind}/{port} on {address}'
    with socket.socket(socket.AF_INET, sock_type) as sock:
        try:
            sock.bind((address, port))
        except OSError as exc:
            return CheckResult(name, WARN, f'cannot bind ({exc.strerror}): a bridge already '
                                           'running, or another program holds it')
    return CheckResult(name, PASS, 'free to bind')


WILDCARDS = ('0.0.0.0', '*', '')   # bind every interface


def check_bind_address(what: str, address: str) -> CheckResult:
    """Warn about a socket bound on every interface: the cell's own address is the rule."""
    name = f'{what} bind address'
    if address in WILDCARDS:
        return CheckResult(name, WARN, f'{address or "(empty)"} binds every interface (Wi-Fi, '
                                       "office LAN): set this host's address on the cell network")
    return CheckResult(name, PASS, address)


def check_zmq_publisher(address: str, port: int, timeout_s: float = 2.0,
                        secure=None) -> CheckResult:
    """Connect a SUB socket to a publisher (the robot PC) and wait for one message.

    `secure(socket)`: the subscriber's CURVE keys (core.wire.curve.CurveLink.secure).
    """
    import zmq
    name = f'robot sender tcp://{address}:{port}' + (' (CURVE)' if secure else '')
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b'')
        if secure is not None:
            secure(sock)
        sock.connect(f'tcp://{address}:{port}')
        if sock.poll(int(timeout_s * 1000)):
            size = len(sock.recv())
            return CheckResult(name, PASS, f'receiving ({size} bytes in the first message)')
        return CheckResult(name, WARN, f'no message within {timeout_s:.1f} s (sender off?)')
    finally:
        sock.close()


def check_udp_sender(address: str, port: int, timeout_s: float = 2.0,
                     allowed: tuple[str, ...] | None = None) -> CheckResult:
    """Bind the sensor port and wait for one datagram from the sensor sender.

    `allowed`: sensor_bridge's allowed_sources; a sender off that list is a FAIL (the bridge
    would drop every datagram as drops.source).
    """
    name = f'sensor sender udp/{port}'
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((address, port))
        except OSError as exc:
            return CheckResult(name, WARN, f'cannot bind to listen ({exc.strerror}): a bridge '
                                           'may already be receiving')
        sock.settimeout(timeout_s)
        start = time.monotonic()
        try:
            data, peer = sock.recvfrom(65536)
        except socket.timeout:
            return CheckResult(name, WARN, f'no datagram within {timeout_s:.1f} s (sender off?)')
        if allowed is not None:
            from vla_insertion.core.bridge.receive import SourceAllowList
            if not SourceAllowList(allowed).allows(peer[0]):
                return CheckResult(name, FAIL, f'datagrams from {peer[0]}, which is not on '
                                               f'allowed_sources {list(allowed)}: sensor_bridge '
                                               'drops them (drops.source)')
        return CheckResult(name, PASS, f'{len(data)} bytes from {peer[0]} after '
                                       f'{time.monotonic() - start:.2f} s')


def overall(rows: list[CheckResult]) -> str:
    if any(r.status == FAIL for r in rows):
        return FAIL
    return WARN if any(r.status == WARN for r in rows) else PASS


def format_table(rows: list[CheckResult]) -> str:
    width = max((len(r.name) for r in rows), default=5)
    lines = [f'{"check".ljust(width)}  status  detail', f'{"-" * width}  ------  ------']
    lines += [f'{r.name.ljust(width)}  {r.status.ljust(6)}  {r.detail}' for r in rows]
    lines.append(f'\nresult: {overall(rows)}')
    return '\n'.join(lines)


# --- two hosts (docs/bringup.md "Two hosts"): the DDS profile, the kernel, discovery, clock --

FASTDDS_RMWS = ('', 'rmw_fastrtps_cpp', 'rmw_fastrtps_dynamic_cpp')
PROFILE_VARIABLES = ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE')
MAX_UNFRAGMENTED = 1472            # UDP payload of a 1500-byte MTU frame [bytes]
_TIME_ERROR = 5                    # adjtimex(2): the clock is not synchronised


def profile_in_environment(environ: dict) -> str:
    """Return the Fast DDS profiles file the environment selects ('' if none)."""
    return next((environ[v] for v in PROFILE_VARIABLES if environ.get(v)), '')


def check_dds_profile(path: str, environ: dict) -> tuple[list[CheckResult], int]:
    """Check the Fast DDS profile for two hosts; return the rows and its socket buffer size.

    The RMW is Fast DDS's (another ignores the file), the file parses, and its UDPv4
    transport keeps datagrams under an Ethernet frame with large socket buffers.
    """
    import xml.etree.ElementTree as ET
    rmw = environ.get('RMW_IMPLEMENTATION', '')
    rows = [CheckResult('dds: rmw', PASS if rmw in FASTDDS_RMWS else WARN,
                        (rmw or 'rmw_fastrtps_cpp (default)') + ('' if rmw in FASTDDS_RMWS else
                                                                 ': ignores a Fast DDS profile'))]
    if not path:
        return rows + [CheckResult('dds: profile', WARN, 'none: Fast DDS defaults, 64 KB '
                                   'datagrams in IP fragments; on two hosts pass '
                                   'dds_profile:=two_hosts')], 0
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        return rows + [CheckResult('dds: profile', FAIL, f'{path}: {exc}')], 0
    udp = [t for t in root.iter() if t.tag.endswith('transport_descriptor')
           and any(c.tag.endswith('type') and c.text == 'UDPv4' for c in t)]

    def number(element, name: str) -> int:
        found = [c.text for c in element if c.tag.endswith(name)]
        return int(found[0]) if found and found[0].strip().isdigit() else 0
    if not udp:
        return rows + [CheckResult('dds: profile', WARN, f'{path}: no UDPv4 transport')], 0
    size = number(udp[0], 'maxMessageSize')
    buffers = min(number(udp[0], 'sendBufferSize'), number(udp[0], 'receiveBufferSize'))
    fits = 0 < size <= MAX_UNFRAGMENTED
    rows.append(CheckResult('dds: profile', PASS if fits and buffers >= 2**22 else WARN,
                            f'{path}: datagrams {size or "default"} B'
                            + ('' if fits else ' (IP fragments: one lost loses it all)')
                            + f', socket buffers {buffers or "default"} B'))
    return rows, buffers


def check_socket_buffers(wanted: int, proc: str = '/proc/sys/net/core') -> CheckResult:
    """Check that the kernel lets sockets have the profile's buffers (net.core.*mem_max)."""
    limits = {}
    for name in ('rmem_max', 'wmem_max'):
        try:
            limits[name] = int(Path(proc, name).read_text())
        except (OSError, ValueError):
            return CheckResult('kernel: socket buffers', WARN, f'cannot read {proc}/{name}')
    wanted = wanted or 2**22
    low = [f'net.core.{n}={v}' for n, v in limits.items() if v < wanted]
    if low:
        return CheckResult('kernel: socket buffers', WARN, f'{", ".join(low)} caps the '
                           f'{wanted} B buffers: sysctl -w net.core.rmem_max={wanted} '
                           f'net.core.wmem_max={wanted}')
    return CheckResult('kernel: socket buffers', PASS, ', '.join(
        f'net.core.{n}={v}' for n, v in limits.items()))


def check_discovery(environ: dict) -> CheckResult:
    """Check that DDS discovery reaches beyond this host (the other host's nodes)."""
    range_ = environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE', '').upper()
    peers = environ.get('ROS_STATIC_PEERS', '')
    if range_ == 'LOCALHOST' or environ.get('ROS_LOCALHOST_ONLY') == '1':
        return CheckResult('dds: discovery', WARN, 'localhost only: the other host is not '
                           'discovered (ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET)')
    if range_ in ('OFF', 'SYSTEM_DEFAULT') and not peers:
        return CheckResult('dds: discovery', WARN, f'range {range_} and no ROS_STATIC_PEERS')
    return CheckResult('dds: discovery', PASS, f'range {range_ or "SUBNET (default)"}'
                       + (f', static peers {peers}' if peers else '')
                       + f', domain {environ.get("ROS_DOMAIN_ID", "0")}')


def check_clock_sync() -> CheckResult:
    """Check that the kernel's clock is disciplined (chrony, ntpd or PTP): adjtimex(2)."""
    import ctypes
    import ctypes.util
    import struct
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6', use_errno=True)
        timex = ctypes.create_string_buffer(512)      # struct timex, modes 0: read only
        state = libc.adjtimex(timex)
    except (OSError, AttributeError) as exc:
        return CheckResult('clock sync', WARN, f'cannot ask the kernel: {exc}')
    if state < 0:
        return CheckResult('clock sync', WARN, f'adjtimex failed (errno {ctypes.get_errno()})')
    max_error_us = struct.unpack_from('q', timex, 24)[0]    # after modes, offset, freq (LP64)
    if state == _TIME_ERROR:
        return CheckResult('clock sync', WARN, 'not synchronised: feature ages across hosts '
                           'are off by the offset of the clocks (chrony or PTP, docs/bringup.md)')
    return CheckResult('clock sync', PASS, f'synchronised, max error {max_error_us / 1e3:.1f} ms')
