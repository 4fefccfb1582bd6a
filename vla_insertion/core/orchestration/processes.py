"""A small process supervisor for the demo and the tests: start programs, stop them cleanly.

Each program runs in its own session (process group) so that SIGINT reaches it and every child it
started, like `ros2 launch` does on Ctrl-C; whatever has not exited after a grace period gets
SIGTERM, then SIGKILL, and `stop_all` reports who needed force, so a test can prove that a clean
shutdown leaves no orphans.

A supervisor always stops its programs (docs/safety.md "Supervisors that always stop"):
- signal handlers only set a flag (`StopRequest`); loops poll it with bounded waits;
- `stop_all` runs with SIGINT and SIGTERM held (`HeldSignals`): a second Ctrl-C cannot cut it
  short, and the held signal goes to the handler before it once every program is stopped;
- a supervisor that dies: its programs get SIGTERM from the kernel (PR_SET_PDEATHSIG);
- a supervisor that hangs: with `heartbeat_timeout_s`, a watchdog process (`watch`, this file
  run as a program) stops every group when the supervisor's main loop stops calling `beat()`.
"""
from __future__ import annotations

import atexit
import ctypes
import ctypes.util
from dataclasses import dataclass, field
import logging
import os
from pathlib import Path
import select
import signal
import subprocess
import sys
import threading
import time

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
try:
    _prctl = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6', use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: children outlive a killed supervisor
    _prctl = None


def _prepare_child() -> None:
    """In the child before exec: default SIGINT, and SIGTERM when the supervisor dies.

    A supervisor started in the background by a non-interactive shell (`make demo &`, a CI
    script) has SIGINT ignored, the child would inherit that, and Python then installs no
    KeyboardInterrupt handler: stop_all's SIGINT would never reach it and it would be forced.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if _prctl is not None:      # even when the supervisor is SIGKILLed
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class ManagedProcess:
    name: str
    cmd: list[str]
    popen: subprocess.Popen
    log_path: Path | None = None

    @property
    def pgid(self) -> int:
        return self.popen.pid  # start_new_session=True: the leader's pid is the group id


@dataclass
class StopReport:
    """How each process ended."""

    exit_codes: dict[str, int | None] = field(default_factory=dict)
    forced: list[str] = field(default_factory=list)      # needed SIGTERM or SIGKILL
    orphans: list[str] = field(default_factory=list)     # group still alive after SIGKILL

    @property
    def clean(self) -> bool:
        return not self.forced and not self.orphans


class ProcessGroup:
    """Programs started together and stopped together.

    heartbeat_timeout_s: None, or a watchdog process stops every program (SIGINT, then SIGTERM
        and SIGKILL, as `stop_all`) when `beat()` was not called for this long: the supervisor
        hangs. Call `beat()` from the main loop (CellRun.wait_for does); `stop_all` beats while
        it waits. Started with the first program, ended by `stop_all`.
    """

    def __init__(self, log_dir: Path | str | None = None, env: dict | None = None,
                 heartbeat_timeout_s: float | None = None) -> None:
        if heartbeat_timeout_s is not None and not heartbeat_timeout_s > 0:
            raise ValueError(f'heartbeat_timeout_s must be > 0 or None, got {heartbeat_timeout_s}')
        self._log_dir = Path(log_dir) if log_dir is not None else None
        self._env = env
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.watchdog: Watchdog | None = None
        self.processes: list[ManagedProcess] = []

    def start(self, name: str, cmd: list[str]) -> ManagedProcess:
        with HeldSignals():          # a Ctrl-C now would leave a started program untracked
            if self.heartbeat_timeout_s is not None and self.watchdog is None:
                self.watchdog = Watchdog(self.heartbeat_timeout_s)
            log_path = None
            if self._log_dir is not None:
                self._log_dir.mkdir(parents=True, exist_ok=True)
                log_path = self._log_dir / f'{name}.log'
                out = open(log_path, 'wb')
            else:
                out = subprocess.DEVNULL
            popen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self._env,
                                     start_new_session=True, preexec_fn=_prepare_child)
            if out is not subprocess.DEVNULL:
                out.close()  # the child holds its own descriptor
            proc = ManagedProcess(name=name, cmd=cmd, popen=popen, log_path=log_path)
            self.processes.append(proc)
            if self.watchdog is not None:
                self.watchdog.add_group(proc.pgid)
        log.info('started %s (pid %d): %s', name, popen.pid, ' '.join(cmd))
        return proc

    def beat(self) -> None:
        """Tell the watchdog that the supervisor's main loop still runs (cheap: one byte)."""
        if self.watchdog is not None:
            self.watchdog.beat()

    def exited(self) -> list[ManagedProcess]:
        """Return the processes that have already exited."""
        return [p for p in self.processes if p.popen.poll() is not None]

    def stop_all(self, grace_s: float = 10.0, term_s: float = 3.0) -> StopReport:
        """SIGINT every group, then SIGTERM and SIGKILL what is still running.

        Runs to its end whatever signals arrive (HeldSignals): at most grace_s + 2 term_s
        and a second; a signal that came meanwhile reaches the caller's handler afterwards.
        """
        with HeldSignals():
            report = self._stop_all(grace_s, term_s)
            if self.watchdog is not None:     # every group is gone: nothing left to watch
                self.watchdog.close()
                self.watchdog = None
        return report

    def _stop_all(self, grace_s: float, term_s: float) -> StopReport:
        report = StopReport()
        for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, term_s),
                            (signal.SIGKILL, term_s)):
            alive = [p for p in self.processes if _alive(p)]
            if not alive:
                break
            if sig != signal.SIGINT:
                report.forced.extend(p.name for p in alive if p.name not in report.forced)
            for p in alive:
                _signal_group(p.pgid, sig)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                self.beat()                                 # stopping is not hanging
                if not [p for p in alive if _alive(p)]:     # polls (reaps) every leader
                    break
                time.sleep(0.05)
        for p in self.processes:
            try:
                report.exit_codes[p.name] = p.popen.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                report.exit_codes[p.name] = None
            if _group_alive(p.pgid):
                report.orphans.append(p.name)
        return report


def _alive(p: ManagedProcess) -> bool:
    # the leader through Popen first: reaped by the group's waitpid below, Popen would see
    # ECHILD and report exit code 0 whatever the program returned
    p.popen.poll()
    return _group_alive(p.pgid)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    """Return whether any process of the group is alive (zombies of ours are reaped first)."""
    try:
        os.waitpid(-pgid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _group_has_live_member(pgid)


def _group_has_live_member(pgid: int) -> bool:
    # killpg(0) also succeeds for a group whose only members are zombies; look at /proc.
    proc = Path('/proc')
    if not proc.exists():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / 'stat').read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(')') + 2:].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != 'Z':
            return True
    return False


def set_fifo_priority(priority: int) -> str | None:
    """Run every thread of this process under SCHED_FIFO `priority`; return why not, or None.

    Every thread, not only a control loop: a tick needs the GIL, and a normal-priority thread
    preempted by another process while holding it would stall the tick (priority inversion).
    Threads created later inherit the policy. Needs CAP_SYS_NICE or an rtprio limit.
    """
    try:
        param = os.sched_param(priority)
        os.sched_setscheduler(0, os.SCHED_FIFO, param)
        for task in os.listdir('/proc/self/task'):
            os.sched_setscheduler(int(task), os.SCHED_FIFO, param)
    except (AttributeError, OSError) as exc:
        return str(exc)
    return None


class StopRequest:
    """A stop asked for by SIGINT or SIGTERM, as a plain flag that a loop polls.

    A plain attribute, because a signal handler runs between two bytecodes of the main thread:
    a lock it takes (threading.Event.set) may be held by the very code it interrupted, or by
    the handler of the signal before it (a doubled Ctrl-C), and the program deadlocks. For the
    same reason the handler never logs (logging takes a lock). `signals` holds each signal
    number received. `install()` makes it the handler and returns the previous ones for
    `restore()`; a program that installs one ignores both signals at its exit (`exiting`).
    test/lint/test_signal_handlers.py keeps every handler of the package this way.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signals: dict[int, bool] = {}

    def __call__(self, signum, frame) -> None:
        self.signals[signum] = True
        self.requested = True

    def install(self, signals=(signal.SIGINT, signal.SIGTERM)) -> dict:
        atexit.unregister(StopRequest.exiting)       # once, however many installs
        atexit.register(StopRequest.exiting, tuple(signals))
        return {sig: signal.signal(sig, self) for sig in signals}

    @staticmethod
    def restore(previous: dict) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    @staticmethod
    def exiting(signals=(signal.SIGINT, signal.SIGTERM)) -> None:
        """Ignore these signals from now on: the program has cleaned up and exits.

        Run at exit (atexit) by every program that installed a StopRequest: the interpreter's
        exit puts every Python handler back to the default, which would end the program by
        the signal (a non-zero status) in its last milliseconds; an ignored signal stays
        ignored. A program that hangs on its way out still ends by SIGKILL.
        """
        for sig in signals:
            signal.signal(sig, signal.SIG_IGN)


class HeldSignals:
    """Hold SIGINT and SIGTERM in a flag while a block runs; pass them on at its end.

        with HeldSignals():      # cleanup that a second Ctrl-C must not cut short
            ...

    Inside, the signals only set `requested` (a loop may poll it); at the end the previous
    handlers are back and each signal that came is raised once more, so the program reacts to
    it as it would have (a flag set, KeyboardInterrupt, SIGTERM's default exit), only later.
    Blocks nest. Outside the main thread (where Python runs no handler) it does nothing.
    """

    def __init__(self) -> None:
        self._stop = StopRequest()
        self._previous: dict | None = None

    @property
    def requested(self) -> bool:
        return self._stop.requested

    def __enter__(self) -> HeldSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = self._stop.install()
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is None:
            return
        StopRequest.restore(self._previous)
        self._previous = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            if self._stop.signals.get(sig):
                signal.raise_signal(sig)


# --- the watchdog of a supervisor that hangs ----------------------------------------------------
#
# A child process in its own session, so the terminal's Ctrl-C does not reach it, reading a pipe
# from the supervisor: a line with a number registers a process group, any byte is a heartbeat.
# Silence for timeout_s (the supervisor hangs or is stopped) or the pipe's end (it exited
# without stop_all) makes it stop every registered group still alive: SIGINT, then SIGTERM
# after WATCHDOG_GRACE_S, then SIGKILL after WATCHDOG_TERM_S; then it exits.

WATCHDOG_GRACE_S = 10.0            # SIGINT -> SIGTERM, as stop_all's default [s]
WATCHDOG_TERM_S = 3.0              # SIGTERM -> SIGKILL [s]


class Watchdog:
    """The supervisor's end of the watchdog: start it, register groups, beat, close."""

    def __init__(self, timeout_s: float) -> None:
        # -I: stdlib only, whatever the environment; this file runs as the program (watch())
        self.popen = subprocess.Popen(
            [sys.executable, '-I', str(Path(__file__).resolve()), '--watch', str(timeout_s)],
            stdin=subprocess.PIPE, start_new_session=True)
        self._fd = self.popen.stdin.fileno()
        os.set_blocking(self._fd, False)   # a stuck watchdog never blocks the supervisor
        self._gone = False
        log.info('watchdog (pid %d): stops the programs after %g s without a heartbeat',
                 self.popen.pid, timeout_s)

    def add_group(self, pgid: int) -> None:
        self._send(f'{pgid}\n'.encode())

    def beat(self) -> None:
        self._send(b'\n')

    def _send(self, data: bytes) -> None:
        if self._gone:
            return
        try:
            os.write(self._fd, data)
        except BlockingIOError:            # the pipe is full of beats it has not read yet
            pass
        except OSError:                    # it exited: it has stopped the programs
            self._gone = True
            log.warning('the watchdog (pid %d) has exited', self.popen.pid)

    def close(self, timeout_s: float = 5.0) -> None:
        """End the watchdog: it stops whatever group is still alive (none after stop_all)."""
        try:
            self.popen.stdin.close()
        except OSError:
            pass
        try:
            self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def watch(fd: int, timeout_s: float, grace_s: float = WATCHDOG_GRACE_S,
          term_s: float = WATCHDOG_TERM_S) -> str:
    """Run the watchdog on `fd` until silence or its end; stop the groups; return why it ended."""
    groups: list[int] = []
    pending = b''
    last = time.monotonic()
    while True:
        left = last + timeout_s - time.monotonic()
        # a look at the pipe before concluding: beats sent while this process got no CPU count
        if not select.select([fd], [], [], max(0.0, left))[0]:
            if left <= 0:
                reason = f'no heartbeat from the supervisor for {timeout_s:g} s'
                break
            continue
        data = os.read(fd, 4096)
        if not data:
            reason = 'the supervisor closed the watchdog or exited'
            break
        last = time.monotonic()
        *lines, pending = (pending + data).split(b'\n')
        groups.extend(int(line) for line in lines if line.strip().isdigit())
    alive = [g for g in groups if _group_alive(g)]
    if alive:
        print(f'[watchdog] {reason}: stopping process groups {alive}', file=sys.stderr,
              flush=True)
    for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, term_s),
                        (signal.SIGKILL, term_s)):
        alive = [g for g in alive if _group_alive(g)]
        for g in alive:
            _signal_group(g, sig)
        deadline = time.monotonic() + wait_s
        while alive and time.monotonic() < deadline and any(_group_alive(g) for g in alive):
            time.sleep(0.05)
    return reason


if __name__ == '__main__':
    if sys.argv[1:2] != ['--watch'] or len(sys.argv) != 3:
        sys.exit('usage: processes.py --watch TIMEOUT_S   (started by ProcessGroup)')
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # a Ctrl-C is the supervisor's to handle
    watch(sys.stdin.fileno(), float(sys.argv[2]))
