"""Camera bridge: 5 views x 30 FPS of 640x360 JPEG through camera_bridge to a subscriber.

A sender thread pushes camera_v1 frames pre-rendered by the simulated scene (so rendering does
not compete with the bridge for the CPU) with fresh capture times, at the configured rate per
view. Reported per view: frames sent, delivered to the subscriber, delivered FPS, drops
(bridge counters plus frames that never reached the subscriber) and capture -> delivered
latency; and the bridge's CPU use in % of one core (psutil, user + system).

    python benchmarks/bench_camera_bridge.py                 # 30 s
    python benchmarks/bench_camera_bridge.py --duration 10 --fps 30 --views 5
"""
from __future__ import annotations

import argparse
from collections import defaultdict
import socket
import threading
import time

from bridge_bench_util import (
    bridge_process, CpuMeter, free_port, isolate_ros_domain, spin_for)
import numpy as np
from report import OUT_DIR, print_table, write_json
import zmq


def prerender(views: list[str], width: int, height: int, frames: int) -> list[list[bytes]]:
    """Render JPEGs (views x frames) of one stretch of an episode, once, up front."""
    from vla_insertion.core.config import ExecutorConfig
    from vla_insertion.core.executor import ChunkExecutor
    from vla_insertion.core.sim import PipelineLoop, ReferencePolicy, SimCell
    from vla_insertion.core.sim.render import SceneRenderer
    # the reference demonstrator moving the arm from home toward the hole: 0.5..2.5 s
    loop = PipelineLoop(SimCell(seed=0), ChunkExecutor(ExecutorConfig(start_armed=True)),
                        reference=ReferencePolicy())
    states = []
    for k in range(frames):
        loop.advance_to(0.5 + 2.0 * k / frames)
        states.append(loop.cell.state())
    renderer = SceneRenderer(tuple(views), width, height)
    return [[renderer.render_jpeg(v, state, 80) for state in states] for v in range(len(views))]


def sender(port: int, views: list[str], jpegs, width: int, height: int, fps: float,
           duration_s: float, sent: dict) -> None:
    from vla_insertion.core.wire import CameraCodecV1, CameraMessage
    codec = CameraCodecV1()
    context = zmq.Context(1)
    push = context.socket(zmq.PUSH)
    push.connect(f'tcp://127.0.0.1:{port}')
    t_next, end, k = time.monotonic(), time.monotonic() + duration_s, 0
    while t_next < end:
        delay = t_next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        for v, view in enumerate(views):
            data = jpegs[v][k % len(jpegs[v])]
            push.send(codec.encode(CameraMessage(view, time.time(), width, height, data,
                                                 session=1, sequence=k)))
            sent[view] += 1
        k += 1
        t_next += 1.0 / fps
    push.close(linger=2000)
    context.term()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--duration', type=float, default=30.0, help='measured time [s]')
    parser.add_argument('--fps', type=float, default=30.0, help='frames/s per view')
    parser.add_argument('--views', type=int, default=5, help='number of views')
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=360)
    args = parser.parse_args()
    isolate_ros_domain()
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import CompressedImage

    from vla_insertion.ros.qos import SENSOR_QOS

    views = [f'view_{i}' for i in range(args.views)]
    jpegs = prerender(views, args.width, args.height, frames=30)
    mean_kb = np.mean([len(j) for per_view in jpegs for j in per_view]) / 1024
    port = free_port(socket.SOCK_STREAM)
    context = rclpy.Context()
    rclpy.init(context=context)
    params = [f'port:={port}', 'view_names:=[' + ', '.join(repr(v) for v in views) + ']']
    got, latency_ms = defaultdict(int), defaultdict(list)
    with bridge_process('camera_bridge', params, OUT_DIR / 'bench_camera_bridge.log') as proc:
        node = Node('bench_camera_listener', context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)

        def on_frame(msg, view):
            got[view] += 1
            stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            latency_ms[view].append((time.time() - stamp) * 1e3)
        for view in views:
            node.create_subscription(CompressedImage, f'cameras/{view}/image/compressed',
                                     lambda m, v=view: on_frame(m, v), SENSOR_QOS)
        spin_for(executor, 4.0)                             # start-up and discovery
        sent = defaultdict(int)
        thread = threading.Thread(target=sender, daemon=True, args=(
            port, views, jpegs, args.width, args.height, args.fps, args.duration, sent))
        cpu = CpuMeter(proc.pid)
        thread.start()
        while thread.is_alive():
            executor.spin_once(timeout_sec=0.05)
        cpu_percent = cpu.percent()
        spin_for(executor, 1.0)
        executor.shutdown()
        node.destroy_node()
    rclpy.try_shutdown(context=context)
    rows = []
    for view in views:
        lat = np.array(latency_ms[view] or [np.nan])
        rows.append({'view': view, 'sent': sent[view], 'delivered': got[view],
                     'fps': got[view] / args.duration, 'dropped': sent[view] - got[view],
                     'latency_p50_ms': float(np.percentile(lat, 50)),
                     'latency_p99_ms': float(np.percentile(lat, 99))})
    summary = {'views': args.views, 'fps_target': args.fps, 'seconds': args.duration,
               'resolution': f'{args.width}x{args.height}', 'mean_jpeg_kib': mean_kb,
               'dropped_total': sum(r['dropped'] for r in rows),
               'bridge_cpu_pct_of_one_core': cpu_percent}
    print_table(f'camera_bridge: {args.views} views x {args.fps:g} FPS, '
                f'{args.width}x{args.height} JPEG (~{mean_kb:.0f} KiB)', rows)
    print_table('summary', [summary])
    write_json('bench_camera_bridge', {'summary': summary, 'views': rows})


if __name__ == '__main__':
    main()
