"""The one orchestrator of the real nodes: the demo, closed-loop runs, demonstrations, replays.

    with ExecutorOperator() as operator, CellRun.simulated(out, policy='reference',
                                                         operator=operator) as run:
        run.wait_ready()              # the arm has moved: the pipeline is up
        episodes = run.wait_episodes(20)

The programs of the launch table (core/orchestration/launch_table.py) that the launch arguments
enable, with the commands `ros2 launch` would run, as processes of one ProcessGroup; a program
that exits ends the run's waits with CellRunError (a half graph publishes nothing). With
sim_cell in the run, its episode stream (core/orchestration/episode_listener.py) gives the
outcomes, and the run does what an operator does between episodes:

- scoring starts with the episode after the one running when the policy took the arm (the
  arm moved, `wait_ready`, or the operator armed the executor, `arm`): the current one ran its
  first seconds without a policy;
- once the executor is armed, a fault the last episode latched is cleared at the next
  episode's start (the executor's ~/reset_fault) and re-arms it (every stop disarms), so one
  over-force does not end the run.

A run always stops its programs (docs/safety.md "Supervisors that always stop"): SIGINT or
SIGTERM ends its waits with CellRunError and `__exit__` stops everything, whatever signals
follow; the signal then reaches the tool's own handler (a tool that passes its StopRequest as
`stop` sees the flag). If the tool's main loop hangs, the ProcessGroup's watchdog stops the
programs after `heartbeat_timeout_s` without a `wait_for`.

The operator (`enable(on)`, `reset_fault()`, each returning (success, message)) is
`ros/executor_operator.py`'s ExecutorOperator, passed in by the tool: this module stays
ROS-free, everything ROS happens in the children.
"""
from __future__ import annotations

from collections.abc import Callable
import logging
import os
from pathlib import Path
import threading
import time
from typing import Protocol

import numpy as np
import zmq

from vla_insertion.core import bag, health, topics
from vla_insertion.core.bridge.receive import ReceiveLoop, ZmqSource
from vla_insertion.core.config import ExpertConfig, SimCellConfig
from vla_insertion.core.evaluation.summary import summarize_outcomes
from vla_insertion.core.orchestration.builders import widened_feature_age_s
from vla_insertion.core.orchestration.episode_listener import EpisodeListener
from vla_insertion.core.orchestration.launch_table import (
    command_for, dds_environment, enabled_nodes, installed_paths, launch_arguments, NodeSpec,
    params_on_free_ports, REMOTE_POLICIES, sim_allows_untrained_vlm)
from vla_insertion.core.orchestration.processes import (
    HeldSignals, ManagedProcess, ProcessGroup, StopReport, StopRequest)
from vla_insertion.core.params import load_config
from vla_insertion.core.wire import RobotCodecV1
from vla_insertion.core.wire.curve import CurveLink, link_keys

log = logging.getLogger(__name__)
POLL_S = 0.1                       # how often a wait looks at its condition and the programs
HEARTBEAT_TIMEOUT_S = 10.0         # main loop silent this long: the watchdog stops all [s]
ARM_TIMEOUT_S = 60.0               # beyond the operator's own timeouts (service, call) [s]
# The sim's operator arms again this often after a stop (every stop disarms the executor; a
# late robot state on a loaded machine would otherwise end the episode's motion) [s].
REARM_PERIOD_S = 1.0


class CellRunError(RuntimeError):
    """A program of the run exited, or nothing happened in time."""


class Operator(Protocol):
    """What a person does at the chunk executor (ros/executor_operator.py)."""

    def enable(self, on: bool = True) -> tuple[bool, str]: ...

    def reset_fault(self) -> tuple[bool, str]: ...


class ArmWatcher:
    """Watch sim_cell's robot stream (robot_v1 over ZMQ SUB) for the arm leaving home.

    `curve_keys_dir`: sim_cell's keys folder; the watcher is the robot link's `cell_observer`.
    """

    def __init__(self, host: str, port: int, threshold_rad: float = 0.01,
                 curve_keys_dir: str = '') -> None:
        self._codec = RobotCodecV1()
        curve = CurveLink(link_keys(curve_keys_dir, 'robot', 'cell_observer'))
        self._context = zmq.Context(1)
        self._first: np.ndarray | None = None
        self._threshold = threshold_rad
        self.moved = False
        self._loop = ReceiveLoop('arm_watcher', lambda: ZmqSource(
            self._context, zmq.SUB, f'tcp://{host}:{port}', False, 0.1, 4096, curve.secure),
            self._on_state)
        self._loop.start()

    def _on_state(self, data: bytes, t_recv: float) -> None:
        joints = np.radians(self._codec.decode(data).joints_deg)
        if self._first is None:
            self._first = joints
        elif np.abs(joints - self._first).max() > self._threshold:
            self.moved = True

    def stop(self) -> None:
        self._loop.stop()
        self._context.destroy(linger=0)


def _reachable(bind: str) -> str:
    """Return the address that reaches, from this host, a socket bound to `bind`."""
    return '127.0.0.1' if bind in ('', '*', '0.0.0.0') else bind


class CellRun:
    """Start the table's programs; follow the episodes, arm and reset; stop everything.

    arguments: launch arguments over the table's defaults (`sim`, `execute`, `vlm_model`, ...;
        `role` runs one host of a two-host cell, `dds_profile` sets every program's DDS profile).
    params_file: the ROS params file (default: the installed one); `free_ports` runs on a copy
        with every cell link on a free loopback port (out/params.yaml), beside any other cell.
    nodes: run only these of the enabled programs (default: all of them).
    node_params: per program, parameters set after the launch arguments' overrides.
    recorder_topics: also record these topics with bag_recorder into out/<bag_name>.
    armed_at_start: the executor arms itself at its first chunk (`start_armed`);
        otherwise `arm()` arms it through the operator.
    on_scored(report): each scored episode's end report, as it arrives (a listener thread).
    stop: the tool's StopRequest, installed as its SIGINT/SIGTERM handler; None: the run holds
        the signals itself while it runs (HeldSignals) and passes them on after stopping all.
        Either way a signal ends the waits with CellRunError.
    heartbeat_timeout_s: the watchdog's bound on a hung main loop (ProcessGroup); None: none.
    prefix: every program's command starts with it, e.g. nsenter into the network namespace of
        one host (core/orchestration/two_hosts.py). The run's own listeners connect from this
        process and would not reach sim_cell there: with a prefix none is started, and
        wait_ready, arm and wait_episodes are not for such a run.
    """

    def __init__(self, out_dir: str | Path, *, arguments: dict[str, str] | None = None,
                 params_file: str | Path | None = None, free_ports: bool = False,
                 nodes: tuple[str, ...] | None = None,
                 node_params: dict[str, dict] | None = None,
                 recorder_topics: tuple[str, ...] = (), bag_name: str = 'bag',
                 armed_at_start: bool = False, operator: Operator | None = None,
                 on_scored: Callable[[dict], None] | None = None,
                 env: dict | None = None, stop: StopRequest | None = None,
                 heartbeat_timeout_s: float | None = HEARTBEAT_TIMEOUT_S,
                 prefix: tuple[str, ...] = ()) -> None:
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.lib_dir, shipped = installed_paths()
        self.params = Path(params_file or shipped)
        if free_ports:
            self.params = self.out / 'params.yaml'
            params_on_free_ports(params_file or shipped, self.params)
        self.arguments = launch_arguments(**{'params_file': str(self.params),
                                             **(arguments or {})})
        note = sim_allows_untrained_vlm(self.arguments)
        if note:
            log.warning('%s', note)
        extra = {name: dict(values) for name, values in (node_params or {}).items()}
        self.bag_path = self.out / bag_name
        if recorder_topics:
            self.arguments['record'] = 'true'
            extra.setdefault('bag_recorder', {}).update(
                output_dir=str(self.out), bag_name=bag_name, split_duration_s=0.0,
                topics=tuple(recorder_topics))
        if armed_at_start:
            extra.setdefault('chunk_executor', {})['start_armed'] = True
        self.prefix = tuple(prefix)
        self._commands = [(spec.name, [*self.prefix, *command_for(
            spec, self.lib_dir, self.params, self.arguments, extra.get(spec.name))])
            for spec in enabled_nodes(self.arguments) if nodes is None or spec.name in nodes]
        self.sim = (load_config(SimCellConfig, 'sim_cell', self.params)   # on this host
                    if any(s.name == 'sim_cell' for s in enabled_nodes(self.arguments))
                    else None)
        environment = dict(os.environ if env is None else env)
        environment.update(dds_environment(self.arguments, shipped.parent))
        self._group = ProcessGroup(log_dir=self.out / 'logs', env=environment,
                                   heartbeat_timeout_s=heartbeat_timeout_s)
        self._stop = stop
        self._held: HeldSignals | None = None
        self.operator = operator
        self.armed = armed_at_start
        self.arming = ''               # what the executor answered to arm()
        self._rearm: threading.Thread | None = None
        self._rearm_stop = threading.Event()
        self._on_scored = on_scored
        self.episodes: EpisodeListener | None = None
        self._watcher: ArmWatcher | None = None
        self.first_scored: int | None = None      # None: no episode is scored yet
        self.stop_report: StopReport | None = None

    @classmethod
    def simulated(cls, out_dir: str | Path, *, policy: str = 'expert',
                  params_file: str | Path | None = None, vlm_model: str = '',
                  checkpoint: str = '', merge: str = '', mode: str = 'async',
                  vlm_delay_s: float = 0.0, seed: int = 0, **options) -> CellRun:
        """Return the cell of closed-loop evaluations and demonstrations: a policy drives sim_cell.

        On free ports, sim_cell moved by command_v1 (episodes of `seed`), the executor armed
        at its first fresh state; `policy` 'reference' is the scripted demonstrator, 'openpi'
        or 'gr00t' the same demonstrator served over that protocol (serve_policy) to
        policy_client, which sends the committed prefix over gr00t when `merge` is 'prefix'.
        An added VLM delay moves the expert's staleness limit with it (a heavier VLM, not a
        broken one).
        `options`: the constructor's (recorder_topics, operator, on_scored, env).
        """
        node_params = {'sim_cell': {'control': 'commands', 'seed': seed},
                       'chunk_executor': {'merge': merge} if merge else {},
                       'vlm_node': {'artificial_delay_s': vlm_delay_s, 'mode': mode},
                       'action_expert': {'mode': mode},
                       'policy_client': {'send_prefix': policy == 'gr00t' and merge == 'prefix'}}
        if vlm_delay_s > 0:
            expert = load_config(ExpertConfig, 'action_expert',
                                 params_file or installed_paths()[1])
            node_params['action_expert']['max_feature_age_s'] = widened_feature_age_s(
                expert, vlm_delay_s)
        return cls(out_dir, arguments={
            'sim': 'true', 'execute': 'true', 'vlm_model': vlm_model, 'checkpoint': checkpoint,
            'reference': 'true' if policy == 'reference' else 'false',
            **({'policy': policy, 'serve_reference': 'true'} if policy in REMOTE_POLICIES
               else {})},
            params_file=params_file, free_ports=True, node_params=node_params,
            armed_at_start=True, **options)

    def __enter__(self) -> CellRun:
        if self._stop is None:
            self._held = HeldSignals().__enter__()
        try:
            for name, cmd in self._commands:
                self._group.start(name, cmd)
            if self.sim is not None and not self.prefix:
                self.episodes = EpisodeListener(
                    _reachable(self.sim.episode_bind), self.sim.episode_port,
                    on_end=self._episode_ended, on_start=self._episode_started)
                self.episodes.start()
                self._watcher = ArmWatcher(_reachable(self.sim.robot_bind), self.sim.robot_port,
                                           curve_keys_dir=self.sim.curve_keys_dir)
            if self.sim is not None and self.operator is not None:
                self._rearm = threading.Thread(target=self._keep_armed, name='rearm',
                                               daemon=True)
                self._rearm.start()
        except BaseException:
            self.__exit__()            # stop whatever started before re-raising
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            with HeldSignals():          # a second Ctrl-C cannot leave programs running
                self._rearm_stop.set()
                for part in (self.episodes, self._watcher):
                    if part is not None:
                        part.stop()
                log.info('stopping: SIGINT to every process')
                self.stop_report = self._group.stop_all(grace_s=10.0)
        finally:
            held, self._held = self._held, None
            if held is not None:         # the signals reach the tool's handlers now
                held.__exit__()

    @property
    def interrupted(self) -> bool:
        """Return whether SIGINT or SIGTERM asked the run to stop."""
        flag = self._stop if self._stop is not None else self._held
        return flag is not None and flag.requested

    def start(self, spec: NodeSpec, params: dict | None = None) -> ManagedProcess:
        """Start one more program with the run's arguments (the replay's bag player)."""
        return self._group.start(spec.name, [*self.prefix, *command_for(
            spec, self.lib_dir, self.params, self.arguments, params)])

    def process(self, name: str) -> ManagedProcess:
        """Return the program `name` of the run (a test stops one to see the others react)."""
        return next(p for p in self._group.processes if p.name == name)

    def check_alive(self, ignore: tuple[ManagedProcess, ...] = ()) -> None:
        """Raise CellRunError naming every program that exited (those in `ignore` aside)."""
        dead = [p for p in self._group.exited() if p not in ignore]
        if dead:
            raise CellRunError('process exited early: ' + ', '.join(
                f'{p.name} (exit {p.popen.returncode}, log {p.log_path})' for p in dead))

    def wait_for(self, condition: Callable[[], object], timeout_s: float, *,
                 poll: Callable[[], None] | None = None,
                 ignore: tuple[ManagedProcess, ...] = ()) -> bool:
        """Return True once `condition()` holds, False when timeout_s passed first.

        Raises CellRunError as soon as a program exits (`ignore` aside) or a signal asks to
        stop. `poll()` runs at each look (the demo's status lines). Each look is a heartbeat
        for the watchdog: a main loop that stops looking is a hung supervisor.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            self._group.beat()
            if self.interrupted:
                raise CellRunError('interrupted by a signal')
            self.check_alive(ignore)
            if condition():
                return True
            if poll is not None:
                poll()
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)

    def wait_ready(self, timeout_s: float = 180.0) -> bool:
        """Wait until the arm moved (the policy, the executor and the cell are up); score on.

        Returns False if the arm never moved within timeout_s.
        """
        if self._watcher is None:
            raise CellRunError('this run does not watch the arm (no sim_cell, or a prefix)')
        moved = self.wait_for(lambda: self._watcher.moved, timeout_s)
        self.start_scoring()
        return moved

    def arm(self) -> bool:
        """Arm the chunk executor through the operator (its ~/enable); score from then on.

        The call (bounded by the operator's timeouts) runs in a thread while this one waits
        in wait_for: the heartbeat goes on, a signal or an exiting program ends the wait.
        """
        answer: list = []

        def call() -> None:
            try:
                answer.append(self.operator.enable(True))
            except BaseException as exc:  # noqa: B902 - raised again in this thread
                answer.append(exc)
        threading.Thread(target=call, name='arm', daemon=True).start()
        if not self.wait_for(lambda: answer, ARM_TIMEOUT_S):
            raise CellRunError(f'the operator did not answer within {ARM_TIMEOUT_S:g} s')
        if isinstance(answer[0], BaseException):
            raise answer[0]
        ok, message = answer[0]
        self.arming = message or ('armed' if ok else 'refused')
        log.info('arming the chunk executor: %s', self.arming)
        if ok:
            self.armed = True
            self.start_scoring()
        return ok

    def start_scoring(self) -> int:
        """Score the episodes after the one running now; return the first one's index."""
        latest = self.episodes.latest if self.episodes is not None else None
        self.first_scored = latest.episode + 1 if latest is not None else 0
        return self.first_scored

    def _is_scored(self, report: dict) -> bool:
        return self.first_scored is not None and report['episode'] >= self.first_scored

    def _keep_armed(self) -> None:
        """Play the sim's operator: once armed, arm again after every stop (no-op while armed).

        A person does this on a cell; the simulated cell's runs would otherwise lose the rest
        of an episode to one late state. A latched fault stays until the next episode's start.
        """
        refused = ''
        while not self._rearm_stop.wait(REARM_PERIOD_S):
            if self.armed:
                ok, message = self.operator.enable(True)
                # a latched fault refuses every second until the next episode: say it once
                if message != 'already armed' and (ok or message != refused):
                    log.info('re-arming after a stop: %s', message)
                refused = '' if ok else message

    def _episode_started(self, report: dict) -> None:
        # The operator's part at each new episode: a stop in the last one (a fault, the
        # watchdog) disarmed the executor, and nothing moves until it is armed again.
        if self.operator is not None and self.armed:
            _ok, message = self.operator.reset_fault()
            if message != 'no fault latched':
                log.info('episode %d starts: reset_fault: %s', report['episode'], message)
            _ok, message = self.operator.enable(True)
            if message != 'already armed':
                log.info('episode %d starts: re-arming: %s', report['episode'], message)

    def _episode_ended(self, report: dict) -> None:
        if self._on_scored is not None and self._is_scored(report):
            self._on_scored(report)

    def scored(self) -> list[dict]:
        """Return the end reports of the scored episodes so far."""
        return [e for e in self.episodes.outcomes() if self._is_scored(e)]

    def wait_episodes(self, count: int) -> list[dict]:
        """Wait for `count` scored episode outcomes (bounded by their timeouts)."""
        per_episode = self.sim.episode_timeout_s + self.sim.settle_s + 5.0
        self.wait_for(lambda: len(self.scored()) >= count, (count + 1) * per_episode)
        return self.scored()[:count]


def diagnostics_summary(path: Path) -> dict:
    """Return core.health.pipeline_numbers of a recorded run's /diagnostics.

    From the newest values of chunk_executor (gate interventions, starvation, jerk, boundary
    jumps, chunk delays) and of action_expert (feature age, refusals).
    """
    newest: dict[str, dict[str, str]] = {}
    for _topic, _log_ns, msg in bag.read_messages(path, [topics.DIAGNOSTICS.name]):
        for status in msg.status:
            newest[status.name.split('/')[-1]] = {kv.key: kv.value for kv in status.values}
    return health.pipeline_numbers(newest.get('chunk_executor', {}),
                                   newest.get('action_expert', {}))


def run_closed_loop(out_dir: str | Path, *, episodes: int, **options) -> dict:
    """Run the real nodes on sim_cell for `episodes` scored episodes; summarise them.

    `options`: CellRun.simulated's. The keys are the episode summary's
    (core/evaluation/summary.py), as the in-process loop reports them.
    """
    wall0 = time.perf_counter()
    with CellRun.simulated(out_dir, recorder_topics=(
            topics.COMMAND.name, topics.ACTION_CHUNK.name, topics.DIAGNOSTICS.name),
            **options) as run:
        run.wait_ready()
        scored = run.wait_episodes(episodes)
    if not scored:
        raise CellRunError(f'no episode was decided; see {run.out / "logs"}')
    return {**summarize_outcomes(scored), **diagnostics_summary(run.bag_path),
            'shutdown_clean': run.stop_report.clean, 'wall_s': time.perf_counter() - wall0}
