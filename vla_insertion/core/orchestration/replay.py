"""Timing-faithful replay: a recorded bag played into the real vlm_node and action_expert.

    bag_player (restamped to the wall clock) -> vlm_node -> action_expert -> bag_recorder

Every program is started from the launch table (core/orchestration/launch_table.py) as a process
of one ProcessGroup, with the same command lines as `ros2 launch`, so the nodes run exactly as on a
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

from vla_insertion.core import bag, topics

from vla_insertion.core.bag import messages
from vla_insertion.core.data import ActionChunkData
from vla_insertion.core.evaluation.open_loop import RunResult
from vla_insertion.core.orchestration.launch_table import (
    BAG_PLAYER, command_for, installed_paths, LAUNCH_ARGUMENTS, spec_named)
from vla_insertion.core.orchestration.processes import ProcessGroup

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
