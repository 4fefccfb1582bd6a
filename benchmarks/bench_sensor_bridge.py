"""Sensor bridge: 650 Hz UDP batches -> sensor/window -> a subscriber, loss and hop latency.

A sender thread sends sensor_v1 datagrams of 10 samples whose first channel is the sample's
sequence number, so the subscriber knows exactly which samples reached it in some window.
Reported: samples lost (never seen in any delivered window), hop latency (datagram received by
the bridge -> window delivered to the subscriber: subscriber receive time minus the window's
stamp, which the bridge maps to ~ the receive time of the least-delayed datagram), the bridge's
own receive -> published time, its CPU use, and a sweep over multiples of 650 Hz for the
highest rate sustained with < 0.1 % loss.

    python benchmarks/bench_sensor_bridge.py               # 60 s at 650 Hz, then the sweep
    python benchmarks/bench_sensor_bridge.py --duration 10 --sweep-duration 3
"""
from __future__ import annotations

import argparse
import secrets
import socket
import threading
import time

from bridge_bench_util import (
    bridge_process, CpuMeter, free_port, isolate_ros_domain, spin_for)
import numpy as np
from report import OUT_DIR, print_table, write_json

CHANNELS = 7
BATCH = 10


def sender(port: int, rate_hz: float, duration_s: float, run_id: int, stop: threading.Event,
           sent: list[int]) -> None:
    """Send `rate_hz` samples/s in batches of BATCH for `duration_s`; never busy-waits."""
    from vla_insertion.core.wire import SensorBatch, SensorCodecV1
    codec = SensorCodecV1()
    session = secrets.randbits(32)
    period = BATCH / rate_hz
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    seq, t_next, end = 0, time.monotonic(), time.monotonic() + duration_s
    while not stop.is_set() and t_next < end:
        delay = t_next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        now = time.time()
        samples = np.zeros((BATCH, CHANNELS), np.float32)
        samples[:, 0] = np.arange(seq, seq + BATCH)          # identifies each sample
        samples[:, 1] = run_id
        times = now - (BATCH - 1 - np.arange(BATCH)) / rate_hz
        sock.sendto(codec.encode(SensorBatch(seq, times, samples, session)),
                    ('127.0.0.1', port))
        seq += BATCH
        t_next += period
    sent.append(seq)
    sock.close()


class WindowListener:
    def __init__(self, context):
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node

        from vla_insertion.msg import NodeStats, SensorWindow
        from vla_insertion.ros.qos import LATEST_QOS, WINDOW_QOS
        self.node = Node('bench_sensor_listener', context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.node.create_subscription(SensorWindow, 'sensor/window', self._on_window, WINDOW_QOS)
        self.node.create_subscription(NodeStats, 'vla/stats', self._on_stats, LATEST_QOS)
        self.reset(-1)
        self.gap_samples = 0        # the bridge's running count: samples lost before it
        self.stats = None

    def reset(self, run_id: int) -> None:
        self.run_id = run_id
        self.seen: set[int] = set()
        self.latency_ms: list[float] = []
        self.windows = 0

    def _on_window(self, msg) -> None:
        t = time.time()
        data = np.asarray(msg.data, np.float32).reshape(msg.num_samples, msg.num_channels)
        valid = data[msg.num_samples - msg.valid_samples:]
        if not len(valid) or valid[-1, 1] != self.run_id:
            return
        self.windows += 1
        self.seen.update(valid[:, 0].astype(np.int64).tolist())
        self.latency_ms.append((t - (msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9))
                               * 1e3)
        self.gap_samples = msg.gap_samples

    def _on_stats(self, msg) -> None:
        if msg.node == 'sensor_bridge':
            self.stats = msg


def run(listener, port: int, rate_hz: float, duration_s: float, run_id: int, proc) -> dict:
    gaps_before = listener.gap_samples
    listener.reset(run_id)
    stop, sent = threading.Event(), []
    cpu = CpuMeter(proc.pid)
    thread = threading.Thread(target=sender, args=(port, rate_hz, duration_s, run_id, stop, sent),
                              daemon=True)
    thread.start()
    while thread.is_alive():
        listener.executor.spin_once(timeout_sec=0.05)
    cpu_percent = cpu.percent()
    spin_for(listener.executor, 1.0)                        # let the last windows arrive
    total = sent[0]
    lost = total - len(listener.seen & set(range(total)))
    lat = np.array(listener.latency_ms) if listener.latency_ms else np.array([np.nan])
    return {'rate_hz': rate_hz, 'seconds': duration_s, 'samples_sent': total,
            'samples_lost': lost, 'loss_pct': 100.0 * lost / max(1, total),
            # lost in UDP before the bridge; the rest were windows the subscriber never got
            'lost_before_bridge': listener.gap_samples - gaps_before,
            'windows': listener.windows, 'windows_per_s': listener.windows / duration_s,
            'hop_p50_ms': float(np.percentile(lat, 50)),
            'hop_p99_ms': float(np.percentile(lat, 99)), 'hop_max_ms': float(np.max(lat)),
            'bridge_cpu_pct': cpu_percent}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--duration', type=float, default=60.0, help='main run at 650 Hz [s]')
    parser.add_argument('--sweep-duration', type=float, default=5.0, help='per sweep rate [s]')
    parser.add_argument('--max-multiple', type=int, default=32, help='highest rate / 650 tried')
    args = parser.parse_args()
    isolate_ros_domain()
    import rclpy
    port = free_port(socket.SOCK_DGRAM)
    context = rclpy.Context()
    rclpy.init(context=context)
    params = [f'port:={port}', 'socket_buffer_bytes:=4194304']
    with bridge_process('sensor_bridge', params, OUT_DIR / 'bench_sensor_bridge.log') as proc:
        listener = WindowListener(context)
        spin_for(listener.executor, 4.0)                    # bridge start-up and discovery
        main_run = run(listener, port, 650.0, args.duration, 0, proc)
        bridge_stats = listener.stats
        main_run['bridge_hop_mean_ms'] = bridge_stats.latency_mean_ms if bridge_stats else None
        main_run['bridge_hop_p99_ms'] = bridge_stats.latency_p99_ms if bridge_stats else None
        print_table('sensor_bridge at 650 Hz', [main_run])
        sweep, multiple, best = [], 1, 0
        while multiple <= args.max_multiple:
            row = run(listener, port, 650.0 * multiple, args.sweep_duration, multiple, proc)
            row['multiple'] = multiple
            sweep.append(row)
            if row['loss_pct'] >= 0.1:
                break
            best = multiple
            multiple *= 2
        print_table('rate sweep (x650 Hz)', sweep)
        print(f'\nhighest rate with < 0.1 % loss: {best} x 650 = {best * 650} Hz '
              f'({best * 65} datagrams/s)')
        listener.executor.shutdown()
        listener.node.destroy_node()
    rclpy.try_shutdown(context=context)
    write_json('bench_sensor_bridge', {'main': main_run, 'sweep': sweep,
                                       'highest_multiple_below_0.1pct_loss': best})


if __name__ == '__main__':
    main()
