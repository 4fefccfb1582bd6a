"""The real nodes driving the simulated cell: closed-loop runs and recorded demonstrations.

    with CellRun(out, policy='reference', params_file=..., recorder_topics=...) as run:
        run.wait_ready()              # the arm has moved: the pipeline is up
        episodes = run.wait_episodes(20)

Every program of the launch table with sim:=true (reference:=true for the demonstrator) runs as
a process of one ProcessGroup on a copy of the params file with free loopback ports, the
executor armed at its first fresh state, and a bag recorder; the episodes' outcomes come from
sim_cell's episode stream (core/orchestration/episode_listener.py). ROS-free: everything happens
in the children.
"""
from __future__ import annotations

import os
from pathlib import Path
import time

import numpy as np
import zmq

from vla_insertion.core import bag, topics
from vla_insertion.core.bridge.receive import ReceiveLoop, ZmqSource
from vla_insertion.core.config import ExpertConfig, SimCellConfig
from vla_insertion.core.orchestration.episode_listener import EpisodeListener
from vla_insertion.core.orchestration.launch_table import (
    command_for, enabled_nodes, installed_paths, LAUNCH_ARGUMENTS, params_on_free_ports,
    spec_named)
from vla_insertion.core.orchestration.processes import ProcessGroup, StopReport
from vla_insertion.core.params import load_config
from vla_insertion.core.wire import RobotCodecV1


class CellRunError(RuntimeError):
    """A program of the run exited, or nothing happened in time."""


class ArmWatcher:
    """Watch sim_cell's robot stream (robot_v1 over ZMQ SUB) for the arm leaving home."""

    def __init__(self, host: str, port: int, threshold_rad: float = 0.01) -> None:
        self._codec = RobotCodecV1()
        self._context = zmq.Context(1)
        self._first: np.ndarray | None = None
        self._threshold = threshold_rad
        self.moved = False
        self._loop = ReceiveLoop('arm_watcher', lambda: ZmqSource(
            self._context, zmq.SUB, f'tcp://{host}:{port}', False, 0.1, 4096), self._on_state)
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


class CellRun:
    """Start the cell's programs on free ports; follow the episodes; stop everything.

    `on_episode_start(report)` runs when sim_cell starts an episode: the tools reset a latched
    executor fault there (`nodes/executor_operator.py`), as an operator would between episodes.
    """

    def __init__(self, out_dir: str | Path, *, policy: str = 'expert',
                 params_file: str | Path | None = None, vlm_model: str = '',
                 checkpoint: str = '', merge: str = '', mode: str = 'async',
                 vlm_delay_s: float = 0.0, seed: int = 0,
                 recorder_topics: tuple[str, ...] = (), env: dict | None = None,
                 on_episode_start=None) -> None:
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        lib_dir, shipped = installed_paths()
        self.params = self.out / 'params.yaml'
        params_on_free_ports(params_file or shipped, self.params)
        self.sim = load_config(SimCellConfig, 'sim_cell', self.params)
        args = {a.name: a.default for a in LAUNCH_ARGUMENTS}
        args.update(sim='true', execute='true', vlm_model=vlm_model, checkpoint=checkpoint,
                    reference='true' if policy == 'reference' else 'false')
        extra = {'sim_cell': {'control': 'commands', 'seed': seed},
                 'chunk_executor': {'start_armed': True, **({'merge': merge} if merge else {})},
                 'vlm_node': {'artificial_delay_s': vlm_delay_s, 'mode': mode},
                 'action_expert': {'mode': mode}}
        if vlm_delay_s > 0:     # a heavier VLM: the expert's staleness limit moves with it
            base = load_config(ExpertConfig, 'action_expert', self.params).max_feature_age_s
            extra['action_expert']['max_feature_age_s'] = base + vlm_delay_s
        self._commands = [(spec.name, command_for(spec, lib_dir, self.params, args,
                                                  extra.get(spec.name)))
                          for spec in enabled_nodes(args)]
        self.bag_path = self.out / 'bag'
        if recorder_topics:
            self._commands.append(('bag_recorder', command_for(
                spec_named('bag_recorder'), lib_dir, self.params, args,
                {'output_dir': str(self.out), 'bag_name': self.bag_path.name,
                 'split_duration_s': 0.0, 'topics': tuple(recorder_topics)})))
        self._group = ProcessGroup(log_dir=self.out / 'logs',
                                   env=dict(os.environ if env is None else env))
        self.episodes: EpisodeListener | None = None
        self._on_episode_start = on_episode_start
        self._watcher: ArmWatcher | None = None
        self.first_scored = 0
        self.stop_report: StopReport | None = None

    def __enter__(self) -> CellRun:
        for name, cmd in self._commands:
            self._group.start(name, cmd)
        self.episodes = EpisodeListener('127.0.0.1', self.sim.episode_port,
                                        on_start=self._on_episode_start)
        self.episodes.start()
        self._watcher = ArmWatcher('127.0.0.1', self.sim.robot_port)
        return self

    def __exit__(self, *exc) -> None:
        for part in (self.episodes, self._watcher):
            if part is not None:
                part.stop()
        self.stop_report = self._group.stop_all(grace_s=10.0)

    def check_alive(self) -> None:
        dead = self._group.exited()
        if dead:
            raise CellRunError(f'{dead[0].name} exited with {dead[0].popen.returncode}; see '
                               f'{dead[0].log_path}')

    def wait_ready(self, timeout_s: float = 180.0) -> bool:
        """Wait until the arm moved (the policy, the executor and the cell are up).

        Episodes that started before do not count (`first_scored`): their first seconds ran
        without a policy. Returns False if the arm never moved within timeout_s.
        """
        deadline = time.monotonic() + timeout_s
        while not self._watcher.moved and time.monotonic() < deadline:
            self.check_alive()
            time.sleep(0.2)
        latest = self.episodes.latest
        self.first_scored = latest.episode + 1 if latest is not None else 0
        return self._watcher.moved

    def scored(self) -> list[dict]:
        return [e for e in self.episodes.outcomes() if e['episode'] >= self.first_scored]

    def wait_episodes(self, count: int, on_episode=None) -> list[dict]:
        """Wait for `count` scored episode outcomes (bounded by their timeouts)."""
        per_episode = self.sim.episode_timeout_s + self.sim.settle_s + 5.0
        deadline = time.monotonic() + (count + 1) * per_episode
        seen = 0
        while time.monotonic() < deadline:
            self.check_alive()
            scored = self.scored()
            for e in scored[seen:count]:
                if on_episode is not None:
                    on_episode(e)
            seen = len(scored)
            if seen >= count:
                break
            time.sleep(0.2)
        return self.scored()[:count]


def diagnostics_summary(path: Path) -> dict:
    """Return the executor's and the expert's numbers from a recorded run's /diagnostics.

    The newest values of chunk_executor (gate interventions, starvation, jerk, boundary jumps,
    chunk delays) and of action_expert (feature age, refusals).
    """
    newest: dict[str, dict[str, str]] = {}
    for _topic, _log_ns, msg in bag.read_messages(path, [topics.DIAGNOSTICS.name]):
        for status in msg.status:
            newest[status.name.split('/')[-1]] = {kv.key: kv.value for kv in status.values}
    ex, expert = newest.get('chunk_executor', {}), newest.get('action_expert', {})

    def number(values: dict, key: str) -> float | None:
        try:
            value = float(values[key])
        except (KeyError, ValueError):
            return None
        return value if np.isfinite(value) else None

    def counters(values: dict, prefix: str) -> dict[str, int]:
        return {k[len(prefix):]: int(float(v)) for k, v in values.items()
                if k.startswith(prefix) and float(v) > 0}

    return {'gate': counters(ex, 'gate.'), 'starved': int(number(ex, 'starved') or 0),
            'jerk_rms_mean': number(ex, 'jerk.rms'),
            'velocity_jump_p50_mean': number(ex, 'boundary.velocity_jump.p50'),
            'velocity_jump_max': number(ex, 'boundary.velocity_jump.max'),
            'chunk_delay_s_mean': number(ex, 'delay_s.p50'),
            'feature_age_s_mean': number(expert, 'feature_age_s_mean'),
            'refused': counters(expert, 'drops.')}


def outcome_summary(scored: list[dict]) -> dict:
    """Success rate, outcomes, time to insert and forces of episode end reports."""
    successes = [e for e in scored if e['success']]
    reasons: dict[str, int] = {}
    for e in scored:
        reasons[e['reason']] = reasons.get(e['reason'], 0) + 1
    times = [e['time_to_insert_s'] for e in successes if e['time_to_insert_s'] is not None]
    return {'episodes': len(scored), 'successes': len(successes),
            'success_rate': len(successes) / len(scored) if scored else None,
            'outcomes': reasons,
            'time_to_insert_s_mean': float(np.mean(times)) if times else None,
            'peak_force_n_max': max((e['peak_force_n'] for e in scored), default=None),
            'mean_force_n_mean': float(np.mean([e['mean_force_n'] for e in scored]))
            if scored else None, 'per_episode': scored}


def run_closed_loop(out_dir: str | Path, *, episodes: int, **run_options) -> dict:
    """Run the real nodes on sim_cell for `episodes` scored episodes; summarise them."""
    wall0 = time.perf_counter()
    with CellRun(out_dir, recorder_topics=(topics.COMMAND.name, topics.ACTION_CHUNK.name,
                                           topics.DIAGNOSTICS.name), **run_options) as run:
        run.wait_ready()
        scored = run.wait_episodes(episodes)
    if not scored:
        raise CellRunError(f'no episode was decided; see {run.out / "logs"}')
    return {**outcome_summary(scored), **diagnostics_summary(run.bag_path),
            'shutdown_clean': run.stop_report.clean, 'wall_s': time.perf_counter() - wall0}
