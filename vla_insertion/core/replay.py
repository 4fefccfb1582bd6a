"""Timing-faithful replay: a recorded bag played into the real vlm_node and action_expert.

    bag_player (restamped to the wall clock) -> vlm_node -> action_expert -> bag_recorder

Every program is started from the launch table (core/launch_table.py) as a process of one
ProcessGroup, with the same command lines as `ros2 launch`, so the nodes run exactly as on a
cell; a killed or finished replay stops all of them (children die with their supervisor). The
player writes the restamp shift it applied; the chunks the recorder received are mapped back to
the recorded clock with it, and each chunk applies when it was received. ROS-free: everything
happens in the child processes.
"""
from __future__ import annotations

from dataclasses import replace
import json
import os
from pathlib import Path
import time

from vla_insertion.core import bag, messages, topics
from vla_insertion.core.data import ActionChunkData
from vla_insertion.core.evaluation import RunResult
from vla_insertion.core.launch_table import (
    BAG_PLAYER, command_for, installed_paths, LAUNCH_ARGUMENTS, spec_named)
from vla_insertion.core.processes import ProcessGroup

# What the player replays: the cell's inputs, never the recorded outputs.
INPUTS = (topics.CAMERAS.name, topics.JOINT_STATES.name, topics.POSE.name,
          topics.SENSOR_WINDOW.name)


class ReplayError(RuntimeError):
    """A program of the replay failed, or no chunk came back."""


def run_nodes_on_bag(bag_path: str | Path, out_dir: str | Path, *, vlm_model: str,
                     checkpoint: str, params_file: str | Path | None = None,
                     vlm_delay_s: float = 0.0, max_feature_age_s: float | None = None,
                     ready_timeout_s: float = 120.0, env: dict | None = None) -> RunResult:
    """Replay the bag's inputs into the nodes; return the chunks on the recorded clock."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lib_dir, shipped = installed_paths()
    params = str(params_file or shipped)
    args = {a.name: a.default for a in LAUNCH_ARGUMENTS}
    args.update(vlm_model=vlm_model, checkpoint=checkpoint)
    notes = []
    vlm_extra = {'artificial_delay_s': vlm_delay_s} if vlm_delay_s > 0 else {}
    expert_extra = {}
    if max_feature_age_s is not None:
        expert_extra['max_feature_age_s'] = max_feature_age_s
        notes.append(f'action_expert max_feature_age_s {max_feature_age_s:g} s')
    report_path, chunks_bag = out / 'player.json', out / 'chunks'
    info = bag.bag_info(bag_path)
    group = ProcessGroup(log_dir=out / 'logs', env=dict(os.environ if env is None else env))
    wall0 = time.perf_counter()
    try:
        group.start('vlm_node', command_for(spec_named('vlm_node'), lib_dir, params, args,
                                            vlm_extra))
        group.start('action_expert', command_for(spec_named('action_expert'), lib_dir, params,
                                                 args, expert_extra))
        group.start('bag_recorder', command_for(
            spec_named('bag_recorder'), lib_dir, params, args,
            {'output_dir': str(out), 'bag_name': chunks_bag.name, 'split_duration_s': 0.0,
             'topics': (topics.ACTION_CHUNK.name,)}))
        player = group.start('bag_player', command_for(
            BAG_PLAYER, lib_dir, params, args,
            {'bag': str(bag_path), 'topics': INPUTS, 'restamp': True, 'clock': False,
             'start_delay_s': ready_timeout_s, 'report': str(report_path)}))
        deadline = time.monotonic() + ready_timeout_s + info.duration_s + 30.0
        while player.popen.poll() is None:
            dead = [p for p in group.exited() if p is not player]
            if dead:
                raise ReplayError(f'{dead[0].name} exited with {dead[0].popen.returncode}; '
                                  f'see {dead[0].log_path}')
            if time.monotonic() > deadline:
                raise ReplayError(f'the replay did not finish within {deadline:.0f} s')
            time.sleep(0.1)
        time.sleep(1.0)        # the last chunks are in flight to the recorder
    finally:
        group.stop_all(grace_s=10.0)
    if player.popen.returncode != 0 or not report_path.exists():
        raise ReplayError(f'bag_player failed ({player.popen.returncode}); see {player.log_path}')
    shift_s = json.loads(report_path.read_text())['shift_ns'] * 1e-9
    chunks, latency = [], []
    for chunk, recv_s in received_chunks(chunks_bag):
        latency.append((recv_s - chunk.stamp_s) * 1e3)
        chunks.append(replace(chunk, stamp_s=recv_s - shift_s))   # applies when received
    if not chunks:
        raise ReplayError(f'no chunks came back from the nodes; see {out / "logs"}')
    vl = len({c.feature_sequence for c in chunks})
    return RunResult('ros-nodes', chunks, latency, time.perf_counter() - wall0, vl,
                     len(chunks), notes=notes)


def received_chunks(path: Path) -> list[tuple[ActionChunkData, float]]:
    """Return (chunk, receive time [s]) of every chunk a recorder wrote into a bag."""
    if not (path / 'metadata.yaml').exists():
        return []
    return [(messages.action_chunk_from_msg(msg), log_ns * 1e-9)
            for topic, log_ns, msg in bag.read_messages(path)
            if topics.find(topic) is topics.ACTION_CHUNK]


# --- closed loop: the real nodes driving sim_cell ---------------------------------------------

class ArmWatcher:
    """Watch sim_cell's robot stream (robot_v1 over ZMQ SUB) for the arm leaving home."""

    def __init__(self, host: str, port: int, threshold_rad: float = 0.01) -> None:
        import zmq

        from vla_insertion.core.bridge import ReceiveLoop, ZmqSource
        from vla_insertion.core.wire import RobotCodecV1
        self._codec = RobotCodecV1()
        self._context = zmq.Context(1)
        self._first = None
        self.moved = False
        self._threshold = threshold_rad
        self._loop = ReceiveLoop('arm_watcher', lambda: ZmqSource(
            self._context, zmq.SUB, f'tcp://{host}:{port}', False, 0.1, 4096), self._on_state)
        self._loop.start()

    def _on_state(self, data: bytes, t_recv: float) -> None:
        import numpy as np
        joints = np.radians(self._codec.decode(data).joints_deg)
        if self._first is None:
            self._first = joints
        elif np.abs(joints - self._first).max() > self._threshold:
            self.moved = True

    def stop(self) -> None:
        self._loop.stop()
        self._context.destroy(linger=0)


def run_closed_loop(out_dir: str | Path, *, episodes: int, params_file: str | Path | None,
                    vlm_model: str, checkpoint: str, merge: str, mode: str = 'async',
                    vlm_delay_s: float = 0.0, policy: str = 'expert', seed: int = 0,
                    ready_timeout_s: float = 180.0, env: dict | None = None) -> dict:
    """Run the real nodes on sim_cell (free ports) for `episodes` judged episodes.

    Every program of the launch table with sim:=true (reference:=true for the demonstrator),
    the executor armed at its first fresh state, and a recorder of vla/command, the chunks and
    /diagnostics. Episodes count once the arm has moved (the pipeline is up); the first one,
    which started before, is not scored. Returns core.closed_loop.summarize-like numbers: the
    outcomes from the episode stream, the executor's and the expert's from the recorded bag.
    """
    from vla_insertion.core.config import SimCellConfig
    from vla_insertion.core.episodes import EpisodeListener
    from vla_insertion.core.launch_table import enabled_nodes, params_on_free_ports
    from vla_insertion.core.params import load_config
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lib_dir, shipped = installed_paths()
    params = out / 'params.yaml'
    params_on_free_ports(params_file or shipped, params)
    sim = load_config(SimCellConfig, 'sim_cell', params)
    args = {a.name: a.default for a in LAUNCH_ARGUMENTS}
    args.update(sim='true', execute='true', reference='true' if policy == 'reference' else
                'false', vlm_model=vlm_model, checkpoint=checkpoint)
    extra = {
        'sim_cell': {'control': 'commands', 'seed': seed},
        'chunk_executor': {'start_armed': True, 'merge': merge},
        'vlm_node': {'artificial_delay_s': vlm_delay_s, 'mode': mode},
        'action_expert': {'mode': mode},
    }
    if vlm_delay_s > 0:
        from vla_insertion.core.config import ExpertConfig
        base = load_config(ExpertConfig, 'action_expert', params).max_feature_age_s
        extra['action_expert']['max_feature_age_s'] = base + vlm_delay_s
    group = ProcessGroup(log_dir=out / 'logs', env=dict(os.environ if env is None else env))
    listener = watcher = None
    wall0 = time.perf_counter()
    try:
        for spec in enabled_nodes(args):
            group.start(spec.name, command_for(spec, lib_dir, params, args,
                                               extra.get(spec.name)))
        group.start('bag_recorder', command_for(
            spec_named('bag_recorder'), lib_dir, params, args,
            {'output_dir': str(out), 'bag_name': 'run', 'split_duration_s': 0.0,
             'topics': (topics.COMMAND.name, topics.ACTION_CHUNK.name,
                        topics.DIAGNOSTICS.name)}))
        listener = EpisodeListener('127.0.0.1', sim.episode_port)
        listener.start()
        watcher = ArmWatcher('127.0.0.1', sim.robot_port)
        deadline = time.monotonic() + ready_timeout_s
        while not watcher.moved and time.monotonic() < deadline:
            _check_alive(group)
            time.sleep(0.2)
        first = (listener.latest.episode + 1) if listener.latest is not None else 0
        per_episode = sim.episode_timeout_s + sim.settle_s + 5.0
        deadline = time.monotonic() + (episodes + 1) * per_episode
        while time.monotonic() < deadline:
            _check_alive(group)
            scored = [e for e in listener.outcomes() if e['episode'] >= first]
            if len(scored) >= episodes:
                break
            time.sleep(0.2)
    finally:
        for part in (listener, watcher):
            if part is not None:
                part.stop()
        report = group.stop_all(grace_s=10.0)
    scored = [e for e in listener.outcomes() if e['episode'] >= first][:episodes]
    if not scored:
        raise ReplayError(f'no episode was decided; see {out / "logs"}')
    summary = closed_loop_bag_summary(out / 'run')
    successes = [e for e in scored if e['success']]
    reasons: dict[str, int] = {}
    for e in scored:
        reasons[e['reason']] = reasons.get(e['reason'], 0) + 1
    times = [e['time_to_insert_s'] for e in successes if e['time_to_insert_s'] is not None]
    summary.update({
        'episodes': len(scored), 'successes': len(successes),
        'success_rate': len(successes) / len(scored), 'outcomes': reasons,
        'time_to_insert_s_mean': sum(times) / len(times) if times else None,
        'peak_force_n_max': max(e['peak_force_n'] for e in scored),
        'mean_force_n_mean': sum(e['mean_force_n'] for e in scored) / len(scored),
        'per_episode': scored, 'shutdown_clean': report.clean,
        'wall_s': time.perf_counter() - wall0})
    return summary


def _check_alive(group: ProcessGroup) -> None:
    dead = group.exited()
    if dead:
        raise ReplayError(f'{dead[0].name} exited with {dead[0].popen.returncode}; see '
                          f'{dead[0].log_path}')


def closed_loop_bag_summary(path: Path) -> dict:
    """Return the executor's and the expert's numbers from a recorded closed-loop run.

    The newest /diagnostics values of chunk_executor (gate interventions, starvation, jerk,
    boundary jumps, chunk delays) and of action_expert (feature age, refusals).
    """
    newest: dict[str, dict[str, str]] = {}
    for topic, _log_ns, msg in bag.read_messages(path, [topics.DIAGNOSTICS.name]):
        for status in msg.status:
            newest[status.name.split('/')[-1]] = {kv.key: kv.value for kv in status.values}
    ex, expert = newest.get('chunk_executor', {}), newest.get('action_expert', {})

    def number(values, key):
        try:
            value = float(values[key])
        except (KeyError, ValueError):
            return None
        return value if value == value else None          # NaN -> None
    return {
        'gate': {k[len('gate.'):]: int(float(v)) for k, v in ex.items()
                 if k.startswith('gate.') and float(v) > 0},
        'starved': int(number(ex, 'starved') or 0),
        'jerk_rms_mean': number(ex, 'jerk.rms'),
        'velocity_jump_p50_mean': number(ex, 'boundary.velocity_jump.p50'),
        'velocity_jump_max': number(ex, 'boundary.velocity_jump.max'),
        'chunk_delay_s_mean': number(ex, 'delay_s.p50'),
        'feature_age_s_mean': number(expert, 'feature_age_s_mean'),
        'refused': {k[len('drops.'):]: int(float(v)) for k, v in expert.items()
                    if k.startswith('drops.') and float(v) > 0},
    }
