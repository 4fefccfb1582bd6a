"""Chunk executor: cost of a control step, and each merge strategy on a synthetic policy.

Simulated time (no sleeps): a robot that follows the commands exactly, a sensor window every
10 control steps, and a synthetic policy at 10 Hz whose chunk stamped s predicts the true
motion q*(s + k dt) (two sinusoids per joint: up to 0.37 rad/s, 1.0 rad/s^2, a quarter of
the default limits) plus a bias per chunk and noise
per action, arriving after a random delay. Under `prefix` the policy continues the executor's
committed prefix as a perfect inpainting policy would (its first d actions are the prefix).

The executor starts at rest on q*(0) and waits for its first chunk, so the first 2 s (the
start-up catch-up) are left out of the error. Reported per strategy: tracking error of the
sent positions against q* at their target time, the reference's velocity and position jumps
where a new chunk takes over, RMS and peak jerk of the sent stream, gate interventions, and the
wall time of step() / on_chunk() / trajectory().

    python benchmarks/bench_executor.py                      # 60 s simulated per strategy
    python benchmarks/bench_executor.py --duration 20 --delay-ms 40 200 --bias-mrad 10
"""
from __future__ import annotations

import argparse
from pathlib import Path
import sys
import time

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from report import print_table, write_json  # noqa: E402, I100

from vla_insertion.core.config import EXECUTOR_MERGES, ExecutorConfig  # noqa: E402
from vla_insertion.core.data import (  # noqa: E402
    ActionChunkData, RobotState, SensorWindowData)
from vla_insertion.core.executor import ChunkExecutor  # noqa: E402

DT = 0.1
HORIZON = 8
CHANNELS = ('fx', 'fy', 'fz', 'tx', 'ty', 'tz', 'distance')


def truth(t: float) -> np.ndarray:
    """Return the (7,) true joints [rad] and gripper at time t: two sinusoids per joint."""
    j = np.arange(6)
    joints = 0.15 * np.sin(2 * np.pi * 0.2 * t + j) + 0.04 * np.sin(2 * np.pi * 0.7 * t + 2 * j)
    return np.append(joints, 0.5 + 0.4 * np.sin(2 * np.pi * 0.2 * t))


def run(merge: str, args, rng: np.random.Generator) -> dict:
    ex = ChunkExecutor(ExecutorConfig(merge=merge, blend_s=args.blend_s))
    period = ex.config.period_s
    quat = np.array([0.0, 0.0, 0.0, 1.0])
    q = truth(0.0)
    ex.on_robot_state(RobotState(0.0, q[:6], np.zeros(3), quat, float(q[6])))
    ex.on_sensor_window(SensorWindowData(0.0, np.zeros((65, 7), np.float32), 65, 650.0,
                                         CHANNELS))
    assert ex.arm(0.0)[0]
    pending: list[tuple[float, ActionChunkData]] = []
    errors, step_us, chunk_us, traj_us = [], [], [], []
    steps = int(round(args.duration / period))
    for n in range(1, steps + 1):
        now = n * period
        if n % int(round(DT / period)) == 0:                  # an observation at 10 Hz
            actions = np.stack([truth(now + k * DT) for k in range(HORIZON)])
            error = rng.normal(0, args.bias_mrad * 1e-3, 7) + rng.normal(
                0, args.noise_mrad * 1e-3, actions.shape)                  # (H, 7)
            committed = ex.committed_prefix(now) if merge == 'prefix' else None
            if committed is None:
                actions += error
            else:
                # inpainting: the committed actions exactly, then the policy's own belief
                # phased in over the soft-weighted steps (weights 1, e^-1, e^-2, e^-3, 0...)
                d = committed[1].shape[0]
                weight = np.append(np.ones(d), 1 - np.exp(-np.arange(1, HORIZON - d + 1)))
                actions = (1 - weight[:, None]) * np.vstack([committed[1], np.repeat(
                    committed[1][-1:], HORIZON - d, axis=0)]) + weight[:, None] * (
                        actions + error)
                actions[:d] = committed[1]
            delay = rng.uniform(*args.delay_ms) * 1e-3
            pending.append((now + delay, ActionChunkData(now, actions.astype(np.float32), DT,
                                                         sequence=n)))
        for item in [p for p in pending if p[0] <= now]:
            t0 = time.perf_counter()
            ex.on_chunk(item[1], item[0])
            chunk_us.append((time.perf_counter() - t0) * 1e6)
            pending.remove(item)
        if n % 10 == 0:
            ex.on_sensor_window(SensorWindowData(now, np.zeros((65, 7), np.float32), 65,
                                                 650.0, CHANNELS))
        t0 = time.perf_counter()
        cmd = ex.step(now)
        step_us.append((time.perf_counter() - t0) * 1e6)
        if n % 10 == 0:
            t0 = time.perf_counter()
            ex.trajectory(now)
            traj_us.append((time.perf_counter() - t0) * 1e6)
        if now > 2.0:                                          # after the start-up transient
            errors.append(np.abs(cmd.positions - truth(cmd.target_time_s)[:6]))
        ex.on_robot_state(RobotState(now, cmd.positions, np.zeros(3), quat, cmd.gripper))
    stats = ex.stats()
    err = np.array(errors)
    return {
        'merge': merge,
        'err_rms_mrad': float(np.sqrt(np.mean(err ** 2)) * 1e3),
        'err_max_mrad': float(err.max() * 1e3),
        'v_jump_p50': stats['boundary.velocity_jump.p50'],
        'v_jump_max': stats['boundary.velocity_jump.max'],
        'p_jump_max_mrad': stats['boundary.position_jump.max'] * 1e3,
        'jerk_rms': stats['jerk.rms'], 'jerk_peak': stats['jerk.peak'],
        'acc_limited': stats['gate.acceleration_limit'],
        'jerk_limited': stats['gate.jerk_limit'], 'holds': stats['gate.watchdog'],
        'prefix_steps': stats['prefix.steps'],
        'step_p50_us': float(np.percentile(step_us, 50)),
        'step_p99_us': float(np.percentile(step_us, 99)),
        'on_chunk_p50_us': float(np.percentile(chunk_us, 50)),
        'trajectory_p50_us': float(np.percentile(traj_us, 50)),
        'merge_events': {k: v for k, v in stats.items() if k.startswith('inputs.merge.')},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--duration', type=float, default=60.0, help='simulated seconds')
    parser.add_argument('--delay-ms', type=float, nargs=2, default=(40.0, 120.0),
                        help='chunk delay, uniform between these [ms]')
    parser.add_argument('--bias-mrad', type=float, default=5.0, help='per-chunk bias sigma')
    parser.add_argument('--noise-mrad', type=float, default=1.0, help='per-action noise sigma')
    parser.add_argument('--blend-s', type=float, default=ExecutorConfig.blend_s,
                        help='blend duration of blend and prefix [s]')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    rows = [run(merge, args, np.random.default_rng(args.seed)) for merge in EXECUTOR_MERGES]
    print_table(f'chunk executor, {args.duration:.0f} s simulated per strategy, delay '
                f'{args.delay_ms[0]:.0f}-{args.delay_ms[1]:.0f} ms, bias {args.bias_mrad} '
                f'mrad, noise {args.noise_mrad} mrad',
                [{k: v for k, v in r.items() if k != 'merge_events'} for r in rows])
    write_json('executor', {'args': vars(args), 'results': rows})


if __name__ == '__main__':
    main()
