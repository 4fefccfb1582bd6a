"""The process supervisor stops programs cleanly and catches the ones that resist."""
import os
from pathlib import Path
import signal
import subprocess
import sys
import threading
import time

import pytest
from support import alive, wait_for

from vla_insertion.core.orchestration.processes import ProcessGroup

pytestmark = pytest.mark.slow         # every test starts programs

CLEAN = ('import time\ntry:\n    print("ready", flush=True)\n    time.sleep(60)\n'
         'except KeyboardInterrupt:\n    pass\n')
STUBBORN = ('import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n'
            'print("ready", flush=True)\ntime.sleep(60)\n')
# A parent that starts a grandchild in its own group and exits on SIGINT; the grandchild
# ignores SIGINT, so only SIGTERM ends it.
PARENT = ('import subprocess, sys, time\n'
          'subprocess.Popen([sys.executable, "-c", ' + repr(STUBBORN) + '])\n'
          'try:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    pass\n')


def _wait_ready(path, timeout_s=10.0):
    # the child must have installed its signal handler before we signal it
    assert wait_for(lambda: path.exists() and 'ready' in path.read_text(), timeout_s, 0.02), \
        f'{path.name} never became ready'


def test_clean_shutdown_on_sigint(tmp_path):
    group = ProcessGroup(log_dir=tmp_path)
    group.start('clean', [sys.executable, '-c', CLEAN])
    _wait_ready(tmp_path / 'clean.log')   # a SIGINT before Python's handler exists kills it
    # a generous grace: stop_all returns as soon as it exits, and on a loaded machine the
    # interpreter's shutdown can take seconds
    report = group.stop_all(grace_s=30.0)
    assert report.clean
    assert report.exit_codes['clean'] == 0
    assert (tmp_path / 'clean.log').exists()


def test_stubborn_process_is_forced_and_reported(tmp_path):
    group = ProcessGroup(log_dir=tmp_path)
    group.start('stubborn', [sys.executable, '-c', STUBBORN])
    _wait_ready(tmp_path / 'stubborn.log')
    report = group.stop_all(grace_s=0.5, term_s=2.0)
    assert report.forced == ['stubborn']
    assert not report.orphans
    assert not report.clean


def test_grandchildren_are_stopped_with_their_group(tmp_path):
    group = ProcessGroup(log_dir=tmp_path)
    group.start('parent', [sys.executable, '-c', PARENT])
    _wait_ready(tmp_path / 'parent.log')
    report = group.stop_all(grace_s=1.0, term_s=2.0)
    # the parent exits on SIGINT but its grandchild ignores it: the group needs SIGTERM
    assert report.forced == ['parent']
    assert not report.orphans


def test_children_die_with_a_killed_supervisor(tmp_path):
    # a supervisor process that starts a child and is then SIGKILLed, as by a timeout
    supervisor = (
        'import sys, time\n'
        'from vla_insertion.core.orchestration.processes import ProcessGroup\n'
        f'group = ProcessGroup(log_dir={str(tmp_path)!r})\n'
        f'p = group.start("child", [sys.executable, "-c", {CLEAN!r}])\n'
        'print(p.popen.pid, flush=True)\n'
        'time.sleep(60)\n')
    sup = subprocess.Popen([sys.executable, '-c', supervisor], stdout=subprocess.PIPE, text=True,
                           cwd=Path(__file__).resolve().parents[3])
    child_pid = int(sup.stdout.readline())
    sup.kill()
    sup.wait()
    assert wait_for(lambda: not alive(child_pid), 10.0, 0.05), \
        'the child outlived its killed supervisor'


def test_sigint_reaches_a_child_of_a_supervisor_that_ignores_it(tmp_path):
    """A supervisor run in the background by a shell has SIGINT ignored; its children must not.

    The exit code is the program's own (3), not the 0 a reaped-elsewhere child would show.
    """
    import signal
    code = ('import sys, time\ntry:\n    print("ready", flush=True)\n    time.sleep(60)\n'
            'except KeyboardInterrupt:\n    sys.exit(3)\n')
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        group = ProcessGroup(log_dir=tmp_path)
        group.start('child', [sys.executable, '-c', code])
    finally:
        signal.signal(signal.SIGINT, previous)
    _wait_ready(tmp_path / 'child.log')
    report = group.stop_all(grace_s=30.0)
    assert report.clean, report
    assert report.exit_codes['child'] == 3


def test_stop_request_is_a_flag_that_survives_a_doubled_signal():
    # Event.set in a handler can deadlock on its own lock when a second signal lands inside
    # the first handler; the flag takes no lock, so a burst of signals only sets it.
    from vla_insertion.core.orchestration.processes import StopRequest
    stop = StopRequest()
    previous = stop.install()
    try:
        assert not stop.requested
        for _ in range(3):
            os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested
    finally:
        StopRequest.restore(previous)
    assert signal.getsignal(signal.SIGINT) is previous[signal.SIGINT]


def _burst(signals, gap_s: float = 0.01) -> threading.Thread:
    """Send `signals` to this process from a thread (Python runs the handlers in the main one)."""
    def send():
        for sig in signals:
            os.kill(os.getpid(), sig)
            time.sleep(gap_s)
    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def test_held_signals_pass_each_signal_on_after_the_block():
    from vla_insertion.core.orchestration.processes import HeldSignals, StopRequest
    outer = StopRequest()
    previous = outer.install()
    try:
        with HeldSignals() as held:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            assert held.requested and not outer.requested    # held, not delivered yet
        assert outer.signals == {signal.SIGINT: True, signal.SIGTERM: True}
    finally:
        StopRequest.restore(previous)
    # under Python's default handler the held Ctrl-C becomes KeyboardInterrupt at the end
    with pytest.raises(KeyboardInterrupt):
        with HeldSignals():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)                                # no KeyboardInterrupt in here


def test_stop_all_runs_to_its_end_under_a_burst_of_signals(tmp_path):
    """SIGINT and SIGTERM keep coming while stop_all waits for a slow child: it still ends it.

    The child takes 1 s to exit after its SIGINT; the signals go to the caller's handler only
    once every program is stopped (KeyboardInterrupt under Python's default handler).
    """
    slow = ('import time\ntry:\n    print("ready", flush=True)\n    time.sleep(60)\n'
            'except KeyboardInterrupt:\n    time.sleep(1.0)\n')
    group = ProcessGroup(log_dir=tmp_path)
    proc = group.start('slow', [sys.executable, '-c', slow])
    _wait_ready(tmp_path / 'slow.log')
    from vla_insertion.core.orchestration.processes import StopRequest
    outer = StopRequest()
    previous = outer.install()         # SIGTERM's default would end this test process
    try:
        burst = _burst([signal.SIGINT, signal.SIGTERM] * 10, gap_s=0.05)
        report = group.stop_all(grace_s=30.0)
        burst.join(timeout=10.0)
    finally:
        StopRequest.restore(previous)
    assert report.clean, report
    assert report.exit_codes['slow'] == 0
    assert not alive(proc.popen.pid)
    assert outer.requested                       # passed on after the stop


def test_a_silent_supervisor_has_its_programs_stopped_by_the_watchdog(tmp_path):
    """No beat() for heartbeat_timeout_s: the watchdog SIGINTs every group (a hung supervisor).

    This test process is the supervisor: it starts a child, beats for a while (the child
    lives on), then stops beating; the child must exit on the watchdog's SIGINT (cleanly: 0).
    """
    group = ProcessGroup(log_dir=tmp_path, heartbeat_timeout_s=1.0)
    proc = group.start('clean', [sys.executable, '-c', CLEAN])
    _wait_ready(tmp_path / 'clean.log')
    watchdog = group.watchdog.popen
    beat_until = time.monotonic() + 3.0               # three timeouts with beats
    while time.monotonic() < beat_until:
        group.beat()
        time.sleep(0.1)
    assert alive(proc.popen.pid), 'the watchdog stopped a child of a supervisor that beats'
    assert wait_for(lambda: not alive(proc.popen.pid), 30.0, 0.05), \
        'the child outlived its hung supervisor'      # no beat: hung
    assert watchdog.wait(timeout=30.0) == 0          # it exits after its stop
    report = group.stop_all(grace_s=5.0)
    assert report.clean and report.exit_codes['clean'] == 0, report


def test_stop_all_ends_the_watchdog_and_a_new_start_gets_a_new_one(tmp_path):
    group = ProcessGroup(log_dir=tmp_path, heartbeat_timeout_s=60.0)
    group.start('clean', [sys.executable, '-c', CLEAN])
    first = group.watchdog.popen
    _wait_ready(tmp_path / 'clean.log')
    assert group.stop_all(grace_s=30.0).clean
    assert group.watchdog is None and first.poll() == 0
    group.start('again', [sys.executable, '-c', CLEAN])
    assert group.watchdog is not None and group.watchdog.popen.pid != first.pid
    _wait_ready(tmp_path / 'again.log')
    assert group.stop_all(grace_s=30.0).clean


def test_heartbeat_timeout_must_be_positive():
    with pytest.raises(ValueError, match='heartbeat_timeout_s'):
        ProcessGroup(heartbeat_timeout_s=0.0)
