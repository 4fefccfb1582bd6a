"""policy_client's round trip on loopback, per protocol: openpi (websocket) and GR00T (ZMQ).

The client side of the policy_client node (core/remote/policy.py remote_runner: staleness
rules, observation mapping, request, action mapping) against our server of each protocol
(core/remote/openpi.py OpenpiServer, gr00t.py Gr00tServer) in this process, serving a policy
that answers a fixed (8, 7) chunk, so the figures are the transport's and the mappings', not a
model's. Each tick sends one 640x360 JPEG view (the sim cell's size) as a 224x224 image, the
state (14 floats) and the prompt. The protocols run round robin, so a load change on a shared
machine hits both alike; warm-up ticks are not counted.

    rtt_ms    request sent -> reply received (websocket frame / ZMQ message round trip, the
              server's decode, policy call and encode)
    tick_ms   the whole tick: rules, JPEG decode and resize, encode, round trip, decode, map

    python benchmarks/bench_policy_client.py            # 300 ticks per protocol
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from report import print_table, write_json  # noqa: E402, I100

from vla_insertion.core.config import PolicyClientConfig  # noqa: E402
from vla_insertion.core.data import CameraFrame, RobotState, SensorWindowData  # noqa: E402
from vla_insertion.core.remote.gr00t import Gr00tServer  # noqa: E402
from vla_insertion.core.remote.mapping import NewestViews  # noqa: E402
from vla_insertion.core.remote.openpi import OpenpiServer  # noqa: E402
from vla_insertion.core.remote.policy import remote_runner  # noqa: E402

CHUNK = {'joints': np.zeros((8, 6), np.float32), 'gripper': np.ones((8, 1), np.float32)}


def inputs(now_s: float):
    rng = np.random.default_rng(0)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (360, 640, 3), dtype=np.uint8)).save(
        out, 'JPEG', quality=85)
    views = NewestViews(('oak',)).put(CameraFrame('oak', now_s - 0.05, out.getvalue()))
    window = SensorWindowData(now_s, np.zeros((65, 7), np.float32), 65, 650.0,
                              ('fx', 'fy', 'fz', 'tx', 'ty', 'tz', 'distance'))
    robot = RobotState(now_s, np.zeros(6), np.array([0.4, 0.0, 0.3]),
                       np.array([0.0, 0.0, 0.0, 1.0]), gripper=1.0)
    return views, window, robot


def stats(values: list[float]) -> dict:
    v = np.asarray(values)
    return {'p50': float(np.percentile(v, 50)), 'p90': float(np.percentile(v, 90)),
            'p99': float(np.percentile(v, 99)), 'max': float(v.max()), 'mean': float(v.mean())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--ticks', type=int, default=300)
    parser.add_argument('--warmup', type=int, default=20)
    args = parser.parse_args(argv)
    servers = {'openpi': OpenpiServer(lambda obs: dict(CHUNK)).start(),
               'gr00t': Gr00tServer(lambda obs, options: {k: v[None] for k, v in
                                                          CHUNK.items()}).start()}
    runners = {}
    for protocol, server in servers.items():
        runner = remote_runner(PolicyClientConfig(protocol=protocol, server_port=server.port))
        if not runner.policy.client.start().wait_connected(10.0):
            print(f'{protocol}: no connection: {runner.policy.client.why}', file=sys.stderr)
            return 1
        runners[protocol] = runner
    rtt: dict[str, list[float]] = {p: [] for p in runners}
    tick: dict[str, list[float]] = {p: [] for p in runners}
    for i in range(args.warmup + args.ticks):
        for protocol, runner in runners.items():
            now = time.time()
            t0 = time.perf_counter()
            result = runner.tick(*inputs(now), now)
            elapsed_ms = (time.perf_counter() - t0) * 1e3
            if not result.published:
                print(f'{protocol}: refused: {result.decision}', file=sys.stderr)
                return 1
            if i >= args.warmup:
                rtt[protocol].append(runner.policy.client.last_rtt_ms)
                tick[protocol].append(elapsed_ms)
    for runner in runners.values():
        runner.policy.client.stop()
    for server in servers.values():
        server.stop()
    rows = [{'protocol': p, 'ticks': len(rtt[p]),
             **{f'rtt_{k}_ms': v for k, v in stats(rtt[p]).items() if k != 'mean'},
             **{f'tick_{k}_ms': v for k, v in stats(tick[p]).items() if k in ('p50', 'p99')}}
            for p in runners]
    print_table('policy_client round trip on loopback (fixed (8, 7) chunk, one 224x224 view)',
                rows)
    write_json('policy_client', {'ticks': args.ticks, 'warmup': args.warmup,
                                 'image': '640x360 JPEG -> 224x224', 'rows': rows,
                                 'rtt_ms': {p: stats(v) for p, v in rtt.items()},
                                 'tick_ms': {p: stats(v) for p, v in tick.items()}})
    return 0


if __name__ == '__main__':
    sys.exit(main())
