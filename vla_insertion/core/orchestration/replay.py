"""Timing-faithful replay: a recorded bag played into the real vlm_node and action_expert.

    bag_player (restamped to the wall clock) -> vlm_node -> action_expert -> bag_recorder

Every program is started by the one orchestrator of the real nodes (core/orchestration/
cell_run.py: the launch table's command lines, one ProcessGroup), so the nodes run exactly as
on a cell; a killed or finished replay stops all of them (children die with their supervisor).
The player writes the restamp shift it applied; the chunks the recorder received are mapped
back to the recorded clock with it, and each chunk applies when it was received. ROS-free:
everything happens in the child processes.
"""
from __future__ import annotations

from dataclasses import replace
import json
from pathlib import Path
import time

from vla_insertion.core import bag, topics

from vla_insertion.core.bag import messages
from vla_insertion.core.data import ActionChunkData
from vla_insertion.core.evaluation.open_loop import RunResult
from vla_insertion.core.orchestration.cell_run import CellRun, CellRunError
from vla_insertion.core.orchestration.launch_table import BAG_PLAYER

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
    notes = []
    node_params = {'vlm_node': {'artificial_delay_s': vlm_delay_s} if vlm_delay_s > 0 else {},
                   'action_expert': {}}
    if max_feature_age_s is not None:
        node_params['action_expert']['max_feature_age_s'] = max_feature_age_s
        notes.append(f'action_expert max_feature_age_s {max_feature_age_s:g} s')
    report_path = out / 'player.json'
    info = bag.bag_info(bag_path)
    run = CellRun(out, arguments={'vlm_model': vlm_model, 'checkpoint': checkpoint},
                  params_file=params_file, nodes=('vlm_node', 'action_expert', 'bag_recorder'),
                  node_params=node_params, recorder_topics=(topics.ACTION_CHUNK.name,),
                  bag_name='chunks', env=env)
    wall0 = time.perf_counter()
    timeout_s = ready_timeout_s + info.duration_s + 30.0
    try:
        with run:
            player = run.start(BAG_PLAYER, {
                'bag': str(bag_path), 'topics': INPUTS, 'restamp': True, 'clock': False,
                'start_delay_s': ready_timeout_s, 'report': str(report_path)})
            if not run.wait_for(lambda: player.popen.poll() is not None, timeout_s,
                                ignore=(player,)):
                raise ReplayError(f'the replay did not finish within {timeout_s:.0f} s')
            time.sleep(1.0)        # the last chunks are in flight to the recorder
    except CellRunError as exc:
        raise ReplayError(str(exc)) from exc
    if player.popen.returncode != 0 or not report_path.exists():
        raise ReplayError(f'bag_player failed ({player.popen.returncode}); see {player.log_path}')
    shift_s = json.loads(report_path.read_text())['shift_ns'] * 1e-9
    chunks, latency = [], []
    for chunk, recv_s in received_chunks(run.bag_path):
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
