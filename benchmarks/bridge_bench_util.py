"""Shared pieces of the bridge benchmarks: start a bridge process, an rclpy listener, CPU use."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
import random
import signal
import socket
import subprocess
import sys
import time

import psutil

ROOT = Path(__file__).resolve().parents[1]


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def isolate_ros_domain() -> int:
    """Put this process (and its children) on a ROS domain of its own, on loopback."""
    from vla_insertion.core.distro import localhost_discovery
    domain = int(os.environ.get('VLA_BENCH_DOMAIN', random.randint(221, 232)))
    os.environ['ROS_DOMAIN_ID'] = str(domain)
    localhost_discovery(os.environ)
    return domain


@contextlib.contextmanager
def bridge_process(node: str, params: list[str], log_path: Path):
    """Run `python -m vla_insertion.nodes.<node> --ros-args -p ...`; SIGINT it on exit."""
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(ROOT), env.get('PYTHONPATH')]))
    env['PYTHONUNBUFFERED'] = '1'
    args = [a for p in params for a in ('-p', p)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, 'w') as log:
        proc = subprocess.Popen([sys.executable, '-m', f'vla_insertion.nodes.{node}',
                                 '--ros-args', *args], env=env, cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class CpuMeter:
    """CPU use of one process over an interval, in % of one core."""

    def __init__(self, pid: int) -> None:
        self._proc = psutil.Process(pid)
        self.start()

    def start(self) -> None:
        self._t0, self._cpu0 = time.monotonic(), sum(self._proc.cpu_times()[:2])

    def percent(self) -> float:
        cpu = sum(self._proc.cpu_times()[:2]) - self._cpu0
        return 100.0 * cpu / max(1e-9, time.monotonic() - self._t0)


def spin_for(executor, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
