"""A small process supervisor for the demo and the tests: start programs, stop them cleanly.

Each program runs in its own session (process group) so that SIGINT reaches it and every child it
started, like `ros2 launch` does on Ctrl-C; whatever has not exited after a grace period gets
SIGTERM, then SIGKILL, and `stop_all` reports who needed force, so a test can prove that a clean
shutdown leaves no orphans.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass, field
import logging
import os
from pathlib import Path
import signal
import subprocess
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
    """Programs started together and stopped together."""

    def __init__(self, log_dir: Path | str | None = None, env: dict | None = None) -> None:
        self._log_dir = Path(log_dir) if log_dir is not None else None
        self._env = env
        self.processes: list[ManagedProcess] = []

    def start(self, name: str, cmd: list[str]) -> ManagedProcess:
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
        log.info('started %s (pid %d): %s', name, popen.pid, ' '.join(cmd))
        return proc

    def exited(self) -> list[ManagedProcess]:
        """Return the processes that have already exited."""
        return [p for p in self.processes if p.popen.poll() is not None]

    def stop_all(self, grace_s: float = 10.0, term_s: float = 3.0) -> StopReport:
        """SIGINT every group, then SIGTERM and SIGKILL what is still running."""
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
    the handler of the signal before it (a doubled Ctrl-C), and the program deadlocks.
    `install()` makes it the handler and returns the previous ones for `restore()`.
    """

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum, frame) -> None:
        self.requested = True

    def install(self, signals=(signal.SIGINT, signal.SIGTERM)) -> dict:
        return {sig: signal.signal(sig, self) for sig in signals}

    @staticmethod
    def restore(previous: dict) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
