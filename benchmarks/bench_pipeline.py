"""The whole pipeline on the simulated cell: one latency budget from capture to command.

    python benchmarks/bench_pipeline.py --duration 60
    python benchmarks/bench_pipeline.py --duration 60 --control-rate 200 --merge prefix

Starts every program of the launch table (sim_cell on command control, the bridges, vlm_node,
action_expert, chunk_executor armed) on free loopback ports (core/orchestration/cell_run.py) and
listens to
their outputs from a probe node. For each VL feature set it follows one observation through
every hop and reports p50 / p99 of:

    capture -> bridge publish   a camera frame's stamp to its arrival at the probe
    bridge -> VLM start         the newest frame's arrival to the start of the inference
    VLM inference               start to features published (VLFeatures.inference_ms)
    features -> chunk           features published to the first chunk using them
    chunk -> first command      that chunk published to the first vla/command from it
    capture -> first command    the whole way
and, per chunk, the feature age and the sensor age at use (ActionChunk fields), the
observation -> chunk-at-executor delay, and the executor's command period error at
control_rate_hz (the issue 11 figure: p99 <= 2 ms at 100 Hz while the VLM runs).
Receive times at the probe stand for publish times (loopback DDS adds ~0.1-1 ms); every time is
the host's clock, so nothing is compared across machines.
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import print_table, write_json  # noqa: E402, I100

ROOT = Path(__file__).resolve().parents[1]


def pct(values, q) -> float:
    return float(np.percentile(values, q)) if len(values) else float('nan')


class Probe:
    """Receive times of frames, features, chunks and commands; ROS on its own context."""

    def __init__(self, views) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from sensor_msgs.msg import CompressedImage

        from vla_insertion import conversions as conv
        from vla_insertion.core import topics
        from vla_insertion.msg import ActionChunk, ExecutorCommand, VLFeatures
        from vla_insertion.ros.qos import qos_profile
        self.conv = conv
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = Node('latency_probe', context=self.context)
        self.lock = threading.Lock()
        self.frames: dict[tuple[str, int], float] = {}       # (view, stamp ns) -> recv
        self.features: list[tuple[float, object]] = []
        self.chunks: list[tuple[float, object]] = []
        self.commands: list[tuple[float, int, float]] = []   # (recv, chunk seq, stamp)
        for view in views:
            self.node.create_subscription(
                CompressedImage, topics.camera_topic(view),
                lambda m, v=view: self._frame(v, m), qos_profile('sensor'))
        self.node.create_subscription(VLFeatures, topics.FEATURES.name,
                                      lambda m: self._add(self.features, m),
                                      qos_profile('latest'))
        self.node.create_subscription(ActionChunk, topics.ACTION_CHUNK.name,
                                      lambda m: self._add(self.chunks, m), qos_profile('state'))
        self.node.create_subscription(ExecutorCommand, topics.COMMAND.name, self._command,
                                      qos_profile('state'))
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        while not self.stop.is_set():
            self.executor.spin_once(timeout_sec=0.05)

    def _frame(self, view, msg) -> None:
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        with self.lock:
            self.frames[(view, stamp)] = time.time()

    def _add(self, target, msg) -> None:
        with self.lock:
            target.append((time.time(), msg))

    def _command(self, msg) -> None:
        with self.lock:
            self.commands.append((time.time(), msg.chunk_sequence,
                                  self.conv.time_from_msg(msg.header.stamp)))

    def close(self) -> None:
        import rclpy
        self.stop.set()
        self.thread.join(5.0)
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def budget(probe: Probe, since: float) -> tuple[list[dict], dict]:
    conv = probe.conv
    with probe.lock:
        frames, features = dict(probe.frames), list(probe.features)
        chunks, commands = list(probe.chunks), list(probe.commands)
    first_command: dict[int, float] = {}
    for recv, seq, _stamp in commands:
        first_command.setdefault(seq, recv)
    first_chunk: dict[int, tuple[float, object]] = {}
    for recv, msg in chunks:
        if msg.feature_sequence not in first_chunk:
            first_chunk[msg.feature_sequence] = (recv, msg)
    hops = defaultdict(list)
    for recv, f in features:
        if recv < since:
            continue
        stamps = [(v, s.sec * 10**9 + s.nanosec) for v, s in zip(f.view_names, f.view_stamps)]
        view, newest = max(stamps, key=lambda vs: vs[1])
        capture = newest * 1e-9
        published = frames.get((view, newest))
        start = recv - f.inference_ms * 1e-3
        if published is not None:
            hops['capture -> bridge publish'].append(published - capture)
            hops['bridge -> VLM start'].append(start - published)
        hops['VLM inference'].append(f.inference_ms * 1e-3)
        chunk = first_chunk.get(f.sequence)
        if chunk is None:
            continue
        chunk_recv, msg = chunk
        hops['features -> chunk'].append(chunk_recv - recv)
        command = first_command.get(msg.sequence)
        if command is not None:
            hops['chunk -> first command'].append(command - chunk_recv)
            hops['capture -> first command'].append(command - capture)
    used = [m for r, m in chunks if r >= since]
    hops['feature age at use'] = [m.feature_age_s for m in used]
    hops['sensor age at use'] = [m.sensor_age_s for m in used]
    hops['observation -> chunk received'] = [r - conv.time_from_msg(m.header.stamp)
                                             for r, m in chunks if r >= since]
    stamps = np.array([s for r, _seq, s in commands if r >= since])
    periods = np.diff(stamps)
    rows = [{'hop': name, 'n': len(v), 'p50_ms': pct(v, 50) * 1e3, 'p99_ms': pct(v, 99) * 1e3,
             'max_ms': (max(v) * 1e3 if v else float('nan'))} for name, v in hops.items()]
    period = float(np.median(periods)) if periods.size else float('nan')
    error = np.abs(periods - period) * 1e3
    loop = {'commands': int(stamps.size), 'period_ms': period * 1e3,
            'period_error_p50_ms': pct(error, 50), 'period_error_p99_ms': pct(error, 99),
            'period_error_max_ms': float(error.max()) if error.size else float('nan')}
    return rows, loop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--duration', type=float, default=60.0, help='seconds measured')
    parser.add_argument('--warmup', type=float, default=10.0, help='seconds not measured')
    parser.add_argument('--control-rate', type=float, default=100.0, help='executor [Hz]')
    parser.add_argument('--merge', default='blend')
    parser.add_argument('--params-file', default=str(ROOT / 'config' / 'vla_insertion.yaml'))
    parser.add_argument('--vlm-model', default=str(ROOT / 'artifacts/models/tiny-qwen2.5-vl'))
    parser.add_argument('--checkpoint',
                        default=str(ROOT / 'artifacts/checkpoints/untrained-expert'))
    parser.add_argument('--name', default='pipeline')
    args = parser.parse_args()
    import os
    os.environ.setdefault('ROS_DOMAIN_ID', '93')
    import yaml

    from vla_insertion.core.config import VlmConfig
    from vla_insertion.core.orchestration.cell_run import CellRun
    from vla_insertion.core.params import load_config
    views = load_config(VlmConfig, 'vlm_node', args.params_file,
                        overrides={'model': args.vlm_model}).view_names
    with tempfile.TemporaryDirectory() as tmp:
        params = Path(tmp) / 'params.yaml'
        doc = yaml.safe_load(Path(args.params_file).read_text())
        key = next(k for k in doc if k.strip('/').split('/')[-1] == 'chunk_executor')
        doc[key]['ros__parameters']['control_rate_hz'] = args.control_rate
        params.write_text(yaml.safe_dump(doc))
        probe = Probe(views)
        try:
            with CellRun.simulated(Path(tmp) / 'run', params_file=params,
                                   vlm_model=args.vlm_model, checkpoint=args.checkpoint,
                                   merge=args.merge) as run:
                deadline = time.monotonic() + 180.0
                while not probe.chunks and time.monotonic() < deadline:
                    run.check_alive()
                    time.sleep(0.2)
                time.sleep(args.warmup)
                since = time.time()
                end = time.monotonic() + args.duration
                while time.monotonic() < end:
                    run.check_alive()
                    time.sleep(0.5)
                rows, loop = budget(probe, since)
        finally:
            probe.close()
    print_table(f'latency budget ({args.duration:.0f} s, executor {args.control_rate:g} Hz, '
                f'{args.merge})', rows)
    print_table('executor command period', [loop])
    write_json(args.name, {'duration_s': args.duration, 'control_rate_hz': args.control_rate,
                           'merge': args.merge, 'hops': rows, 'executor': loop})
    return 0


if __name__ == '__main__':
    sys.exit(main())
