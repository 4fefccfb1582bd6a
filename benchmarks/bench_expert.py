"""Action-expert latency on this machine: regression head and flow head at 1, 5 and 10 steps.

Times `ExpertPolicy.infer` (tensor building, forward pass under inference_mode, de-normalised
numpy output) at batch 1 for untrained checkpoints of the default size (~20.7M parameters, VL
features 41 x 2048 as from Qwen2.5-VL-3B), after warm-up runs that are not counted.

    python benchmarks/bench_expert.py                 # torch threads 1 and 2, 300 runs each
    python benchmarks/bench_expert.py --runs 100 --threads 1

Target (issue 5): regression head p50 <= 8 ms, p99 <= 15 ms on the 2-core CPU.
"""
from __future__ import annotations

import argparse
from pathlib import Path
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from report import print_table, write_json  # noqa: E402, I100

from vla_insertion.core.data import RobotState, SensorWindowData, VLFeatureData  # noqa: E402
from vla_insertion.core.expert.checkpoint import load_checkpoint  # noqa: E402
from vla_insertion.core.expert.model import count_parameters  # noqa: E402
from vla_insertion.core.expert.policy import ExpertPolicy  # noqa: E402
from vla_insertion.core.expert.presets import make_untrained_checkpoint  # noqa: E402
from vla_insertion.core.feature_contract import FeatureContract  # noqa: E402
from vla_insertion.core.interfaces import ExpertObservation  # noqa: E402

CONTRACT = FeatureContract(model_id='Qwen/Qwen2.5-VL-3B-Instruct',
                           reduction='image_grid_pool+instruction_mean:2x4', num_tokens=41,
                           feature_dim=2048, image_width=640, image_height=360,
                           view_names=('zed_1', 'zed_2', 'zed_3', 'zed_4', 'oak'),
                           prompt='benchmark')


def observation(rng: np.random.Generator) -> ExpertObservation:
    now = time.time()
    return ExpertObservation(
        features=VLFeatureData(stamp_s=now - 0.3, sequence=1, contract_hash=CONTRACT.digest,
                               model_id=CONTRACT.model_id,
                               features=rng.standard_normal((41, 2048)).astype(np.float32)),
        window=SensorWindowData(stamp_s=now, valid_samples=65, sample_rate_hz=650.0,
                                samples=rng.standard_normal((65, 7)).astype(np.float32)),
        robot=RobotState(stamp_s=now, joint_positions_rad=rng.uniform(-1, 1, 6),
                         tool_position_m=np.array([0.4, 0.0, 0.3]),
                         tool_orientation_xyzw=np.array([0.0, 0.0, 0.0, 1.0])),
        now_s=now)


def measure(policy: ExpertPolicy, runs: int, warmup: int) -> dict:
    rng = np.random.default_rng(0)
    obs = [observation(rng) for _ in range(8)]
    for i in range(warmup):
        policy.infer(obs[i % len(obs)])
    times = []
    for i in range(runs):
        t0 = time.perf_counter()
        policy.infer(obs[i % len(obs)])
        times.append((time.perf_counter() - t0) * 1e3)
    t = np.array(times)
    return {'p50_ms': float(np.percentile(t, 50)), 'p99_ms': float(np.percentile(t, 99)),
            'mean_ms': float(t.mean()), 'max_ms': float(t.max()), 'runs': runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--runs', type=int, default=300, help='timed runs per configuration')
    parser.add_argument('--warmup', type=int, default=20, help='untimed runs first')
    parser.add_argument('--threads', type=int, nargs='+', default=[1, 2],
                        help='torch CPU thread counts to measure')
    parser.add_argument('--steps', type=int, nargs='+', default=[1, 5, 10],
                        help='flow-head ODE steps to measure')
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        heads = {'regression': make_untrained_checkpoint(Path(tmp) / 'reg', CONTRACT),
                 'flow': make_untrained_checkpoint(Path(tmp) / 'flow', CONTRACT, head='flow')}
        for threads in args.threads:
            torch.set_num_threads(threads)
            for head, folder in heads.items():
                ckpt = load_checkpoint(folder)
                params = count_parameters(ckpt.model, trainable_only=False)
                for steps in ([1] if head == 'regression' else args.steps):
                    policy = ExpertPolicy(ckpt, steps=steps if head == 'flow' else None)
                    result = measure(policy, args.runs, args.warmup)
                    rows.append({'head': head, 'steps': steps, 'threads': threads,
                                 'params_M': params / 1e6, **result})
    print_table('Action expert latency, batch 1, default size (ExpertPolicy.infer)', rows)
    write_json('expert', {'rows': rows, 'target': {'regression_p50_ms': 8.0,
                                                   'regression_p99_ms': 15.0}})
    return 0


if __name__ == '__main__':
    sys.exit(main())
