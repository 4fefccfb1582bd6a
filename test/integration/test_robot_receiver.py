"""robot_receiver as a program: it follows pushed commands, holds after them, exits cleanly.

The program runs on a free port; the test pushes command_v1 at 100 Hz with ZMQ, reads the
program's log for its start and its counters, stops it with SIGINT and reads its report.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from support import free_port, wait_for
import zmq

from vla_insertion.core.sim.kinematics import HOME_RAD
from vla_insertion.core.ticker import DeadlineTicker
from vla_insertion.core.wire import CommandCodecV1, CommandMessage, FLAG_ARMED

pytestmark = pytest.mark.slow           # starts programs
ROOT = Path(__file__).resolve().parents[2]


class Program:
    """robot_receiver in a child process; its log lines collected as they come."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ)
        env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(ROOT), env.get('PYTHONPATH')]))
        env['PYTHONUNBUFFERED'] = '1'
        self.process = subprocess.Popen(
            [sys.executable, '-m', 'vla_insertion.tools.robot_receiver', *args], cwd=ROOT,
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip())

    def saw(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        rc = self.process.wait(30)
        self._reader.join(5)
        return rc


def push_ramp(port: int, count: int, step_rad: float) -> np.ndarray:
    """Push `count` ARMED commands at 100 Hz moving joint 1 by step_rad each; the last target."""
    codec = CommandCodecV1()
    context = zmq.Context(1)
    push = context.socket(zmq.PUSH)
    push.connect(f'tcp://127.0.0.1:{port}')
    ticker = DeadlineTicker(100.0)
    q = HOME_RAD.copy()
    try:
        for k in range(count):
            ticker.wait()
            q[0] = HOME_RAD[0] + (k + 1) * step_rad
            push.send(codec.encode(CommandMessage(
                sender_time_s=time.time(), positions_rad=tuple(float(x) for x in q),
                velocities_rad_s=(0.0,) * 6, gripper=1.0, lead_s=0.02, timeout_s=0.1,
                flags=FLAG_ARMED, session=0xC0FFEE, sequence=k)))
    finally:
        push.close(linger=1000)
        context.term()
    return q


@pytest.mark.parametrize('backend', ['sim', 'dry-run'])
def test_it_follows_the_commands_then_holds_and_reports(tmp_path, backend):
    port = free_port()
    report = tmp_path / 'report.json'
    program = Program('--backend', backend, '--port', str(port), '--status-period-s', '0.2',
                      '--report', str(report))
    try:
        listening = f'command_v1 on 127.0.0.1:{port}'
        assert wait_for(lambda: program.saw(listening), 30.0), program.lines
        target = push_ramp(port, 30, 0.004)            # 0.4 rad/s, inside the 1 rad/s limit
        assert wait_for(lambda: program.saw('commands 30 received'), 30.0), program.lines
    finally:
        rc = program.stop()
    assert rc == 0, program.lines
    stats = json.loads(report.read_text())
    assert stats['received'] == stats['accepted'] == stats['followed'] == 30, stats
    assert stats['dropped'] == 0 and stats['holding'] == 'timeout', stats
    if backend == 'sim':
        # it held from 0.4 rad/s: braking at the servo's 8 rad/s^2 takes up to 10 mrad more
        np.testing.assert_allclose(stats['arm'][:6], target, atol=0.011)
    else:
        assert stats['arm'] is None
        assert program.saw('would servo to q') and program.saw('would stop and hold (timeout)')


def test_a_busy_port_or_a_bad_flag_exits_2():
    with socket.socket() as holder:
        holder.bind(('127.0.0.1', 0))
        holder.listen()
        port = holder.getsockname()[1]
        busy = Program('--port', str(port), '--backend', 'dry-run')
        assert busy.process.wait(60) == 2
    busy._reader.join(5)
    assert busy.saw('cannot open the socket') and busy.saw(str(port)), busy.lines
    bad = Program('--max-velocity-rad-s', '1', '2')
    assert bad.process.wait(60) == 2
    bad._reader.join(5)
    assert bad.saw('--max-velocity-rad-s takes 1, 6 or 7 values'), bad.lines
