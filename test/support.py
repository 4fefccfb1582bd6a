"""Helpers the test modules share: on sys.path through setup.cfg's `pythonpath`.

Use: `from support import free_port, wait_for`.
"""
from __future__ import annotations

from collections.abc import Callable
import socket
import time


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """Return a loopback port that is free now (TCP by default, `socket.SOCK_DGRAM` for UDP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout_s: float = 10.0,
             poll_s: float = 0.005) -> bool:
    """Poll `predicate` until it holds or `timeout_s` passed; return its last value's truth."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not predicate():
        time.sleep(poll_s)
    return bool(predicate())
