"""Helpers the test modules share: on sys.path through setup.cfg's `pythonpath`.

Use: `from support import alive, free_port, spinning, wait_for`.
"""
from __future__ import annotations

from collections.abc import Callable
import contextlib
from pathlib import Path
import socket
import threading
import time


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """Return a loopback port that is free now (TCP by default, `socket.SOCK_DGRAM` for UDP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (reaped or not, it no longer runs)."""
    try:
        state = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != 'Z'


def wait_for(predicate: Callable[[], object], timeout_s: float = 10.0,
             poll_s: float = 0.005) -> bool:
    """Poll `predicate` until it holds or `timeout_s` passed; return its last value's truth."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not predicate():
        time.sleep(poll_s)
    return bool(predicate())


@contextlib.contextmanager
def spinning(context, *nodes):
    """Spin `nodes` in a background executor; on exit stop it, then destroy the nodes.

    The thread spins in short steps and is joined before the executor shuts down: shutting an
    executor down while another thread is inside spin() races with its guard conditions.
    """
    from rclpy.executors import MultiThreadedExecutor
    executor = MultiThreadedExecutor(num_threads=4, context=context)
    for node in nodes:
        executor.add_node(node)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.05)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield executor
    finally:
        stop.set()
        thread.join(timeout=10.0)
        for node in nodes:
            executor.remove_node(node)
            node.destroy_node()
        executor.shutdown(timeout_sec=5.0)
