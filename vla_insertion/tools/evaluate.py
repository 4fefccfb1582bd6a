"""evaluate: score action chunks against the robot trajectory recorded in a bag.

    evaluate BAG --mode open-loop -o artifacts/eval/run1         # models on recorded inputs
    evaluate BAG --mode recorded -o artifacts/eval/live          # chunks recorded in a live run
    evaluate BAG --mode timing-faithful -o artifacts/eval/replay # replay through the real nodes

Modes:
- open-loop: deterministic (fixed seeds, no wall clock). At every tick of `--rate-hz` (10 Hz)
  over the bag, the newest recorded frame of each view, sensor window and robot state at that
  time go through the VLM (every `--vl-every` ticks, features reused in between) and the
  expert; the chunk applies at the tick time.
- recorded: the vla/action_chunk messages already in the bag (e.g. recorded on a live cell).
- timing-faithful: bag_player replays the cameras, robot and sensor topics (restamped to the
  wall clock) into the real vlm_node and action_expert processes, and the chunks they publish
  are read back; a chunk applies when it was received.

Output in the folder given with -o: metrics.json (core.metrics.evaluate: per-joint MAE/RMSE in
rad and deg, error by horizon step, executed-stream error, chunk-boundary jumps, action rate,
latency and feature age/reuse) and PNG plots: joints.png (predicted vs actual per joint),
errors.png (MAE/RMSE per joint), horizon.png, latency.png.
"""
from __future__ import annotations

import argparse
import bisect
from dataclasses import dataclass, field, replace
import json
import logging
import os
from pathlib import Path
import subprocess
import sys
import time

import numpy as np
from tqdm import tqdm

from vla_insertion import conversions as conv
from vla_insertion.core import bag, metrics
from vla_insertion.core.config import (
    config_from_dict, ExpertConfig, load_node_params, VlmConfig)
from vla_insertion.core.data import ActionChunkData, CameraFrame, RobotState, SensorWindowData
from vla_insertion.core.interfaces import ExpertObservation, VlmObservation

log = logging.getLogger('evaluate')

DEFAULT_VLM = 'artifacts/models/tiny-qwen2.5-vl'
DEFAULT_CHECKPOINT = ExpertConfig().checkpoint
INPUT_SUFFIXES = ('/image/compressed', 'robot/joint_states', 'robot/pose', 'sensor/window')


# --- a bag as arrays and lookups ----------------------------------------------------------

class Timeline:
    """Items sorted by their stamp [s], with `newest(t)`: the last item stamped <= t."""

    def __init__(self, items: list) -> None:
        self.items = sorted(items, key=lambda it: it[0])
        self.stamps = [s for s, _ in self.items]

    def newest(self, t_s: float):
        i = bisect.bisect_right(self.stamps, t_s + 1e-9) - 1
        return self.items[i][1] if i >= 0 else None

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class Recording:
    """What evaluation needs from a bag, on the recorded header-stamp clock [s]."""

    path: Path
    trajectory: metrics.Trajectory
    robot: Timeline                                    # RobotState by stamp
    windows: Timeline                                  # SensorWindowData by stamp
    frames: dict[str, Timeline] = field(default_factory=dict)   # view -> CameraFrame
    chunks: list[ActionChunkData] = field(default_factory=list)
    chunk_log_s: list[float] = field(default_factory=list)      # bag receive time per chunk
    log_offset_s: float = 0.0                          # median(log time - header stamp) [s]

    @property
    def start_s(self) -> float:
        return float(self.trajectory.times_s[0])

    @property
    def end_s(self) -> float:
        return float(self.trajectory.times_s[-1])


def load_recording(path: str | Path, joints: int = 6, progress: bool = False) -> Recording:
    """Read the robot, sensor, camera and chunk topics of a bag."""
    joint_rows, robot_items, windows, chunks, chunk_log = [], [], [], [], []
    poses: dict[int, object] = {}
    frames: dict[str, list] = {}
    offsets = []
    info = bag.bag_info(path)
    stream = bag.read_messages(path)
    if progress:
        stream = tqdm(stream, total=info.message_count, desc='reading bag', unit='msg')
    for topic, log_ns, msg in stream:
        name = topic.lstrip('/')
        if name.endswith('robot/pose'):
            poses[bag.header_stamp_ns(msg)] = msg
        elif name.endswith('robot/joint_states'):
            stamp, positions = conv.joint_state_from_msg(msg)
            if positions.size < joints:
                continue
            joint_rows.append((stamp, positions[:joints], tuple(msg.name[:joints])))
            robot_items.append((stamp, msg))
            offsets.append(log_ns * 1e-9 - stamp)
        elif name.endswith('sensor/window'):
            w = conv.sensor_window_from_msg(msg)
            windows.append((w.stamp_s, w))
        elif name.endswith('/image/compressed'):
            view = name[:-len('/image/compressed')].split('/')[-1]
            f = conv.camera_frame_from_msg(msg, view)
            frames.setdefault(view, []).append((f.stamp_s, f))
        elif name.endswith('vla/action_chunk'):
            chunks.append(conv.action_chunk_from_msg(msg))
            chunk_log.append(log_ns * 1e-9)
    if len(joint_rows) < 2:
        raise bag.BagError(f'{path}: fewer than 2 robot/joint_states messages')
    joint_rows.sort(key=lambda r: r[0])
    times = np.array([r[0] for r in joint_rows])
    keep = np.concatenate([[True], np.diff(times) > 0])
    traj = metrics.Trajectory(times[keep], np.stack([r[1] for r in joint_rows])[keep],
                              joint_rows[0][2] or ())
    robot = []
    for stamp, msg in robot_items:
        pose = poses.get(bag.header_stamp_ns(msg))
        robot.append((stamp, conv.robot_state_from_msgs(msg, pose)))
    return Recording(Path(path), traj, Timeline(robot), Timeline(windows),
                     {v: Timeline(items) for v, items in frames.items()}, chunks, chunk_log,
                     float(np.median(offsets)) if offsets else 0.0)


class Inputs:
    """The newest recorded input of every stream at a given recorded time."""

    def __init__(self, rec: Recording, views: tuple[str, ...]) -> None:
        missing = [v for v in views if v not in rec.frames]
        if missing:
            raise bag.BagError(f'{rec.path}: no frames of view(s) {missing}; recorded views: '
                               f'{sorted(rec.frames)}')
        self.rec, self.views = rec, views

    def first_complete_s(self) -> float:
        """Return the first time at which every stream has an input [s]."""
        firsts = [self.rec.robot.stamps[0], self.rec.windows.stamps[0] if len(
            self.rec.windows) else np.inf] + [self.rec.frames[v].stamps[0] for v in self.views]
        return float(max(firsts))

    def vlm(self, t_s: float, sequence: int = 0) -> VlmObservation:
        frames: dict[str, CameraFrame] = {v: self.rec.frames[v].newest(t_s) for v in self.views}
        return VlmObservation(frames=frames, sequence=sequence)

    def window(self, t_s: float) -> SensorWindowData:
        return self.rec.windows.newest(t_s)

    def robot(self, t_s: float) -> RobotState:
        return self.rec.robot.newest(t_s)


# --- models -------------------------------------------------------------------------------

def vlm_config(params: str | None, model: str | None) -> VlmConfig:
    """Return the VlmConfig of a ROS params file's vlm_node entry, with an optional model."""
    values = load_node_params(params, 'vlm_node') if params else {}
    if model:
        values['model'] = model
    elif 'model' not in values:
        values['model'] = DEFAULT_VLM
    return config_from_dict(VlmConfig, values, ignore_unknown=True)


def load_models(vlm_cfg: VlmConfig, checkpoint: str, delay_s: float = 0.0, seed: int = 0):
    """Build the real VLM (with an optional artificial delay) and the expert policy."""
    import torch

    from vla_insertion.core.expert.policy import ExpertPolicy
    from vla_insertion.core.vlm.extractor import DelayedVlm, VlmFeatureExtractor
    torch.manual_seed(seed)
    vlm = VlmFeatureExtractor(vlm_cfg, download=False)
    if delay_s > 0:
        vlm = DelayedVlm(vlm, delay_s)
    expert = ExpertPolicy(checkpoint, device='cpu', seed=seed)
    return vlm, expert


# --- open loop ----------------------------------------------------------------------------

@dataclass
class RunResult:
    """Chunks of one run on the recorded clock, with when each became available."""

    label: str
    chunks: list[ActionChunkData]
    latency_ms: list[float]
    wall_s: float = 0.0
    vl_updates: int = 0
    notes: list[str] = field(default_factory=list)

    def series(self) -> metrics.ChunkSeries:
        order = np.argsort([c.stamp_s for c in self.chunks], kind='stable')
        return metrics.ChunkSeries.from_chunks(
            [self.chunks[i] for i in order], latency_ms=np.asarray(self.latency_ms)[order])


def open_loop_ticks(inputs: Inputs, rate_hz: float = 10.0) -> np.ndarray:
    """Return the tick times [s] from the first complete input to the end of the recording."""
    period = 1.0 / rate_hz
    start = inputs.first_complete_s()
    return start + np.arange(int(np.floor((inputs.rec.end_s - start) / period)) + 1) * period


def run_open_loop(rec: Recording, vlm, expert, views: tuple[str, ...], rate_hz: float = 10.0,
                  vl_every: int = 1, progress: bool = True) -> RunResult:
    """Run the models at every tick on the recorded inputs; deterministic, no wall clock."""
    inputs = Inputs(rec, views)
    ticks = open_loop_ticks(inputs, rate_hz)
    vlm.reset()
    expert.reset()
    features, reuse, chunks, latency = None, 0, [], []
    wall0 = time.perf_counter()
    vl_updates = 0
    for i, t in enumerate(tqdm(ticks, desc='open-loop', unit='tick', disable=not progress)):
        t0 = time.perf_counter()
        if features is None or i % vl_every == 0:
            features = vlm.infer(inputs.vlm(t, sequence=vl_updates))
            vl_updates += 1
            reuse = 0
        reuse += 1
        chunk = expert.infer(ExpertObservation(features, inputs.window(t), inputs.robot(t), t))
        chunks.append(replace(chunk, sequence=i, reuse_index=reuse))
        latency.append((time.perf_counter() - t0) * 1e3)
    return RunResult('open-loop', chunks, latency, time.perf_counter() - wall0, vl_updates)


def recorded_chunks(rec: Recording) -> RunResult:
    """Return the chunks recorded in the bag; each applies when it was received."""
    if not rec.chunks:
        raise bag.BagError(f'{rec.path}: no vla/action_chunk messages recorded')
    chunks, latency = [], []
    for chunk, log_s in zip(rec.chunks, rec.chunk_log_s):
        applies = log_s - rec.log_offset_s          # receive time on the header-stamp clock
        latency.append((applies - chunk.stamp_s) * 1e3)
        chunks.append(replace(chunk, stamp_s=max(applies, chunk.stamp_s)))
    return RunResult('recorded', chunks, latency)


# --- timing-faithful: the real nodes, fed by bag_player ----------------------------------

def _node_command(module: str, params: list[tuple[str, str]], params_file: str | None):
    # `-c` rather than `-m`: a node module need not have a __main__ block
    cmd = [sys.executable, '-c', f'import sys; from {module} import main; sys.exit(main())',
           '--ros-args']
    if params_file:
        cmd += ['--params-file', params_file]
    for name, value in params:
        cmd += ['-p', f'{name}:={value}']
    return cmd


def run_ros_nodes(rec: Recording, vlm_cfg: VlmConfig, checkpoint: str, params_file: str | None,
                  delay_s: float = 0.0, ready_timeout_s: float = 120.0,
                  log_dir: Path | None = None) -> RunResult:
    """Replay the bag's inputs into vlm_node and action_expert processes; read chunks back."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    from vla_insertion.core.config import BagPlayerConfig
    from vla_insertion.msg import ActionChunk
    from vla_insertion.tools.bag_player import BagPlayerNode

    notes = []
    vlm_params = [('model', vlm_cfg.model)]
    if delay_s > 0:
        if 'artificial_delay_s' in VlmConfig.__dataclass_fields__:
            vlm_params.append(('artificial_delay_s', str(delay_s)))
        else:
            notes.append('vlm_node has no artificial_delay_s parameter: ROS mode ran without '
                         'the artificial delay')
    expert_params = [('checkpoint', checkpoint)]
    if delay_s > 0:
        # The delay stands in for a heavier VLM, whose features are that much older at use; the
        # expert's staleness limit moves with it, as it would be configured for such a model,
        # so that the ROS mode is compared on the same footing as the in-process modes.
        from vla_insertion.core.config import ExpertConfig, load_node_params
        base = ExpertConfig().max_feature_age_s
        if params_file:
            base = float(load_node_params(params_file, 'action_expert').get(
                'max_feature_age_s', base))
        expert_params.append(('max_feature_age_s', str(base + delay_s)))
        notes.append(f'action_expert max_feature_age_s raised by the delay to '
                     f'{base + delay_s:g} s')
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ)
    env['PYTHONPATH'] = f'{root}{os.pathsep}{env.get("PYTHONPATH", "")}'
    log_dir = log_dir or Path(rec.path)
    procs = []
    for name, module, params in (
            ('vlm_node', 'vla_insertion.nodes.vlm_node', vlm_params),
            ('action_expert', 'vla_insertion.nodes.action_expert', expert_params)):
        out = open(log_dir / f'{name}.log', 'w')
        procs.append((name, out, subprocess.Popen(
            _node_command(module, params, params_file), env=env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True)))
    context = rclpy.Context()
    rclpy.init(context=context)
    received: list[tuple[float, object]] = []
    executor = SingleThreadedExecutor(context=context)
    sink = Node('evaluate_sink', context=context)
    sink.create_subscription(ActionChunk, 'vla/action_chunk',
                             lambda m: received.append((time.time(), m)),
                             QoSProfile(reliability=ReliabilityPolicy.RELIABLE,
                                        history=HistoryPolicy.KEEP_LAST, depth=1000))
    executor.add_node(sink)
    player = None
    wall0 = time.perf_counter()
    try:
        inputs = [t for t in bag.bag_info(rec.path).topics
                  if t.lstrip('/').endswith(INPUT_SUFFIXES)]
        player = BagPlayerNode(BagPlayerConfig(
            bag=str(rec.path), topics=tuple(inputs), restamp=True, clock=False,
            start_delay_s=ready_timeout_s), context=context)
        executor.add_node(player)
        while not player.done.is_set():
            executor.spin_once(timeout_sec=0.05)
            for name, _out, proc in procs:
                if proc.poll() is not None:
                    raise RuntimeError(f'{name} exited with {proc.returncode}; see '
                                       f'{log_dir / (name + ".log")}')
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
    finally:
        for _name, out, proc in procs:
            if proc.poll() is None:
                proc.send_signal(2)
        for _name, out, proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
            out.close()
        if player is not None:
            player.destroy_node()
        sink.destroy_node()
        executor.shutdown()
        rclpy.try_shutdown(context=context)
    shift_s = player.shift_ns * 1e-9 if player is not None else 0.0
    chunks, latency = [], []
    for recv_s, msg in received:
        chunk = conv.action_chunk_from_msg(msg)
        latency.append((recv_s - chunk.stamp_s) * 1e3)
        # back to the recorded clock; the chunk applies when it was received
        chunks.append(replace(chunk, stamp_s=recv_s - shift_s))
    if not chunks:
        raise RuntimeError(f'no chunks received from the nodes; see {log_dir}/*.log')
    vl = len({c.feature_sequence for c in chunks})
    return RunResult('ros-nodes', chunks, latency, time.perf_counter() - wall0, vl, notes)


# --- metrics and plots --------------------------------------------------------------------

def score(rec: Recording, result: RunResult, rate_hz: float = 10.0) -> dict:
    """Return core.metrics.evaluate of one run, with its run-level numbers."""
    out = metrics.evaluate(rec.trajectory, result.series(), nominal_period_s=1.0 / rate_hz)
    out['run'] = {'label': result.label, 'wall_s': result.wall_s,
                  'vl_updates': result.vl_updates, 'notes': result.notes}
    return out


def plot_joints(path: Path, traj: metrics.Trajectory, runs: dict[str, metrics.ChunkSeries]
                ) -> None:
    """Plot the executed action of each run against the recorded joint, one panel a joint."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    joints = traj.num_joints
    fig, axes = plt.subplots(joints, 1, figsize=(10, 2.0 * joints), sharex=True)
    axes = np.atleast_1d(axes)
    t0 = traj.times_s[0]
    for j, ax in enumerate(axes):
        ax.plot(traj.times_s - t0, np.degrees(traj.positions[:, j]), 'k-', lw=1.5,
                label='recorded')
        for label, series in runs.items():
            ticks = metrics.control_ticks(series, traj)
            ex = metrics.executed(series, ticks)
            ax.plot(ticks - t0, np.degrees(ex.actions[:, j]), lw=1.0, label=label,
                    drawstyle='steps-post')
        ax.set_ylabel(f'{(traj.joint_names or [f"j{k + 1}" for k in range(joints)])[j]} [deg]')
    axes[0].legend(loc='upper right', fontsize=8)
    axes[-1].set_xlabel('time [s]')
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_error_bars(path: Path, results: dict[str, dict], key: str = 'executed') -> None:
    """Plot MAE and RMSE per joint [deg], one bar group per run."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    labels = list(results)
    joints = list(next(iter(results.values()))[key]['per_joint'])
    width = 0.8 / max(len(labels), 1)
    x = np.arange(len(joints))
    for ax, metric in zip(axes, ('mae_deg', 'rmse_deg')):
        for i, label in enumerate(labels):
            values = [results[label][key]['per_joint'][j][metric] or 0.0 for j in joints]
            ax.bar(x + i * width, values, width, label=label)
        ax.set_xticks(x + width * (len(labels) - 1) / 2, joints, rotation=30)
        ax.set_ylabel(f'{metric.split("_")[0].upper()} [deg]')
        ax.set_title(f'{metric.split("_")[0].upper()} per joint ({key} actions)')
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_horizon(path: Path, results: dict[str, dict]) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, r in results.items():
        steps = r['horizon_steps']
        ax.plot([s['step'] for s in steps],
                [np.degrees(s['mae_rad']) if s['mae_rad'] is not None else np.nan
                 for s in steps], 'o-', label=label)
    ax.set_xlabel('horizon step k')
    ax.set_ylabel('MAE over joints [deg]')
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_latency(path: Path, runs: dict[str, metrics.ChunkSeries]) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, series in runs.items():
        values = series.latency_ms[np.isfinite(series.latency_ms)]
        if values.size:
            ax.hist(values, bins=30, alpha=0.6, label=label)
    ax.set_xlabel('latency observation -> chunk available [ms]')
    ax.set_ylabel('chunks')
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_outputs(out_dir: Path, rec: Recording, results: dict[str, dict],
                  runs: dict[str, metrics.ChunkSeries], name: str = 'metrics.json') -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / name).write_text(json.dumps(
        {'bag': str(rec.path), 'trajectory_s': [rec.start_s, rec.end_s], 'runs': results},
        indent=2, default=float))
    plot_joints(out_dir / 'joints.png', rec.trajectory, runs)
    plot_error_bars(out_dir / 'errors.png', results)
    plot_horizon(out_dir / 'horizon.png', results)
    plot_latency(out_dir / 'latency.png', runs)


def _table(results: dict[str, dict]) -> str:
    lines = []
    for label, r in results.items():
        rate = r['action_rate']['rate_hz']
        lines.append(f'{label}: {r["chunks"]} chunks at {rate or 0:.2f} Hz, executed MAE '
                     f'{r["executed"]["mae_deg"] or float("nan"):.3f} deg RMSE '
                     f'{r["executed"]["rmse_deg"] or float("nan"):.3f} deg, all-steps MAE '
                     f'{r["all_steps"]["mae_deg"] or float("nan"):.3f} deg, latency p50 '
                     f'{r["latency_ms"]["p50"] or float("nan"):.1f} ms')
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='evaluate', description=__doc__.split('\n\n')[0])
    parser.add_argument('bag', help='bag folder')
    parser.add_argument('--mode', choices=['open-loop', 'recorded', 'timing-faithful'],
                        default='open-loop')
    parser.add_argument('-o', '--output', default='artifacts/eval', help='output folder')
    parser.add_argument('--vlm-params', help='ROS params YAML; its vlm_node entry configures '
                        'the VLM (views, image size, prompt); the nodes also get it')
    parser.add_argument('--vlm-model', help=f'VLM folder or hub id (default {DEFAULT_VLM})')
    parser.add_argument('--checkpoint', default=DEFAULT_CHECKPOINT, help='expert checkpoint')
    parser.add_argument('--vlm-delay', type=float, default=0.0,
                        help='artificial VLM delay [s] standing in for a heavier model')
    parser.add_argument('--rate-hz', type=float, default=10.0, help='open-loop tick rate')
    parser.add_argument('--vl-every', type=int, default=1,
                        help='open-loop: run the VLM every N ticks, reuse features between')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--no-progress', action='store_true')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        rec = load_recording(args.bag, progress=not args.no_progress)
        cfg = vlm_config(args.vlm_params, args.vlm_model)
        if args.mode == 'recorded':
            result = recorded_chunks(rec)
        elif args.mode == 'open-loop':
            vlm, expert = load_models(cfg, args.checkpoint, args.vlm_delay, args.seed)
            result = run_open_loop(rec, vlm, expert, cfg.view_names, args.rate_hz,
                                   args.vl_every, progress=not args.no_progress)
        else:
            out = Path(args.output)
            out.mkdir(parents=True, exist_ok=True)
            result = run_ros_nodes(rec, cfg, args.checkpoint, args.vlm_params,
                                   args.vlm_delay, log_dir=out)
    except (bag.BagError, OSError, ValueError, RuntimeError) as exc:
        print(f'evaluate: {exc}', file=sys.stderr)
        return 2
    results = {result.label: score(rec, result, args.rate_hz)}
    write_outputs(Path(args.output), rec, results, {result.label: result.series()})
    print(_table(results))
    print(f'wrote {args.output}/metrics.json and plots')
    return 0


if __name__ == '__main__':
    sys.exit(main())
