"""sim_cell's CPU use per control mode, and the cost of the physics alone.

sim_cell runs as its own process at the cell's full rates (5 views x 30 FPS of 640x360 JPEG,
robot state at 100 Hz, sensor at 650 Hz) on free ports, with a camera sink draining its frames
and, for control commands, a 100 Hz command_v1 sender moving joint 1 back and forth. Reported:
sim_cell's CPU in % of one core (psutil, user + system) per mode, with and without cameras; and
in-process, the microseconds per physics step of SimCell and the real-time factor of the
reference closed loop (PipelineLoop: ReferencePolicy through the ChunkExecutor, 1 kHz physics).

    python benchmarks/bench_sim_cell.py                   # 20 s per mode
    python benchmarks/bench_sim_cell.py --duration 10 --modes commands reference
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
import signal
import socket
import subprocess
import sys
import threading
import time

from bridge_bench_util import CpuMeter, free_port
from report import print_table, ROOT, write_json
import zmq


def camera_sink(port: int, stop: threading.Event, counts: dict) -> None:
    context = zmq.Context(1)
    pull = context.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVTIMEO, 100)
    pull.bind(f'tcp://127.0.0.1:{port}')
    while not stop.is_set():
        try:
            pull.recv()
            counts['frames'] += 1
        except zmq.Again:
            pass
    pull.close(linger=0)
    context.term()


def command_sender(port: int, stop: threading.Event, counts: dict) -> None:
    """Joint 1 of the home pose swinging +-0.3 rad with a 4 s period, at 100 Hz."""
    sys.path.insert(0, str(ROOT))
    from vla_insertion.core.sim.kinematics import HOME_RAD
    from vla_insertion.core.wire import CommandCodecV1, CommandMessage, FLAG_ARMED
    codec = CommandCodecV1()
    context = zmq.Context(1)
    push = context.socket(zmq.PUSH)
    push.connect(f'tcp://127.0.0.1:{port}')
    t0, seq = time.monotonic(), 0
    while not stop.wait(0.01):
        t = time.monotonic() - t0 + 0.05
        q = HOME_RAD.copy()
        q[0] += 0.3 * math.sin(2 * math.pi * t / 4.0)
        v = [0.3 * 2 * math.pi / 4.0 * math.cos(2 * math.pi * t / 4.0)] + [0.0] * 5
        push.send(codec.encode(CommandMessage(time.time(), tuple(q), tuple(v), 1.0, 0.05, 0.1,
                                              FLAG_ARMED, 1, seq)))
        seq += 1
        counts['commands'] += 1
    push.close(linger=0)
    context.term()


def measure_process(mode: str, cameras: bool, duration_s: float, warmup_s: float) -> dict:
    ports = {k: free_port(socket.SOCK_STREAM) for k in ('camera', 'robot', 'command', 'episode')}
    ports['sensor'] = free_port(socket.SOCK_DGRAM)
    streams = ['cameras', 'robot', 'sensor'] if cameras else ['robot', 'sensor']
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(ROOT), env.get('PYTHONPATH')]))
    stop, counts = threading.Event(), {'frames': 0, 'commands': 0}
    threads = [threading.Thread(target=camera_sink, args=(ports['camera'], stop, counts))]
    if mode == 'commands':
        threads.append(threading.Thread(target=command_sender,
                                        args=(ports['command'], stop, counts)))
    for t in threads:
        t.start()
    proc = subprocess.Popen(
        [sys.executable, '-m', 'vla_insertion.tools.sim_cell', '--control', mode,
         '--streams', *streams, *[f'--{k}-port={v}' for k, v in ports.items()],
         '--log-level', 'WARNING'], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT)
    try:
        time.sleep(warmup_s)
        meter = CpuMeter(proc.pid)
        frames0 = counts['frames']
        time.sleep(duration_s)
        cpu = meter.percent()
        fps = (counts['frames'] - frames0) / duration_s
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(15)
        stop.set()
        for t in threads:
            t.join(5)
    return {'mode': mode, 'cameras': cameras, 'cpu_percent': cpu, 'frames_per_s': fps,
            'exit': proc.returncode}


def measure_physics(sim_seconds: float) -> dict:
    sys.path.insert(0, str(ROOT))
    from vla_insertion.core.config import ExecutorConfig
    from vla_insertion.core.executor import ChunkExecutor
    from vla_insertion.core.sim import PipelineLoop, ReferencePolicy, SimCell
    cell = SimCell(seed=0)
    t0 = time.process_time()
    cell.advance_to(sim_seconds)                  # holding at home: servo + FK + contact
    idle_us = (time.process_time() - t0) / cell.steps * 1e6
    cell = SimCell(seed=0)
    loop = PipelineLoop(cell, ChunkExecutor(ExecutorConfig(start_armed=True)),
                        reference=ReferencePolicy())
    t0 = time.process_time()
    loop.advance_to(sim_seconds)
    cpu = time.process_time() - t0
    return {'physics_us_per_step': idle_us, 'closed_loop_us_per_step': cpu / cell.steps * 1e6,
            'closed_loop_realtime_factor': sim_seconds / cpu,
            'episodes_decided': len(cell.records),
            'successes': sum(r.success for r in cell.records)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--duration', type=float, default=20.0, help='measured time per run [s]')
    parser.add_argument('--warmup', type=float, default=4.0, help='start-up not measured [s]')
    parser.add_argument('--modes', nargs='+', default=['commands', 'reference'])
    parser.add_argument('--sim-seconds', type=float, default=30.0,
                        help='simulated time of the in-process physics measurement [s]')
    args = parser.parse_args()
    rows = [measure_process(mode, cameras, args.duration, args.warmup)
            for mode in args.modes for cameras in (True, False)]
    print_table('sim_cell CPU (% of one core), full rates', rows)
    physics = measure_physics(args.sim_seconds)
    print_table('physics in-process (1 kHz)', [physics])
    write_json(Path(__file__).stem.removeprefix('bench_'),
               {'runs': rows, 'physics': physics, 'duration_s': args.duration})


if __name__ == '__main__':
    main()
