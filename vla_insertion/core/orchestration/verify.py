"""Checks behind the `verify` tool, which tells whether this machine is ready to run the cell.

Each check returns CheckResult rows (PASS / WARN / FAIL with a one-line detail). Checks are
plain functions so the tool, the tests and a person at a Python prompt can run any of them.
Network checks only contact the addresses given to them (the configured senders).
"""
from __future__ import annotations

from dataclasses import dataclass
import importlib
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
