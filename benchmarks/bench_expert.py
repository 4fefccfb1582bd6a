"""Action-expert latency on this machine: fp32, int8 and fp16 weights, regression and flow heads.

Times `ExpertPolicy.infer` (tensor building, forward pass under inference_mode, de-normalised
numpy output) at batch 1 for untrained checkpoints of the default size (~19.4M parameters, VL
features 41 x 2048 as from Qwen2.5-VL-3B), after warm-up runs that are not counted, for each
`precision` (core/expert/quantize.py) side by side: the variants of one head and thread count
are called round robin, so a load change on a shared machine hits them alike. Accuracy: the
largest and mean action difference of each precision against fp32 over a validation set
(`validation_inputs`: 256 batch-1 inputs drawn like real ones; the checkpoint is untrained, so
this measures the conversion, not a policy). `--onnxruntime` adds ONNX Runtime fp32 and dynamic
int8 for the regression head (session.run only, in the same round robin) if onnxruntime and
onnx are importable: the comparison that chose fbgemm (issue 13); onnxruntime is not a
dependency of the package.

    python benchmarks/bench_expert.py                 # torch threads 1 and 2, 300 runs each
    python benchmarks/bench_expert.py --runs 100 --threads 1 --precisions fp32 int8

Targets: regression head p50 <= 8 ms, p99 <= 15 ms (issue 5); one thread p50 <= 5 ms with int8
(issue 13).
"""
from __future__ import annotations

import argparse
from pathlib import Path
import sys
import tempfile
import time
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from report import print_table, write_json  # noqa: E402, I100

from vla_insertion.core.data import RobotState, SensorWindowData, VLFeatureData  # noqa: E402
from vla_insertion.core.expert.checkpoint import load_checkpoint  # noqa: E402
from vla_insertion.core.expert.model import count_parameters  # noqa: E402
from vla_insertion.core.expert.policy import ExpertPolicy  # noqa: E402
from vla_insertion.core.expert.presets import make_untrained_checkpoint  # noqa: E402
from vla_insertion.core.expert.quantize import (  # noqa: E402
    action_difference, PRECISIONS, quantize_expert, validation_inputs)
from vla_insertion.core.feature_contract import FeatureContract  # noqa: E402
from vla_insertion.core.interfaces import ExpertObservation  # noqa: E402

CONTRACT = FeatureContract(model_id='Qwen/Qwen2.5-VL-3B-Instruct',
                           reduction='image_grid_pool+instruction_mean:2x4', num_tokens=41,
                           feature_dim=2048, image_width=640, image_height=360,
                           view_names=('zed_1', 'zed_2', 'zed_3', 'zed_4', 'oak'),
                           prompt='benchmark')


def observation(rng: np.random.Generator) -> ExpertObservation:
    now = time.time()
    robot = RobotState(stamp_s=now, joint_positions_rad=rng.uniform(-1, 1, 6),
                       tool_position_m=np.array([0.4, 0.0, 0.3]),
                       tool_orientation_xyzw=np.array([0.0, 0.0, 0.0, 1.0]))
    return ExpertObservation(
        features=VLFeatureData(stamp_s=now - 0.3, sequence=1, contract_hash=CONTRACT.digest,
                               model_id=CONTRACT.model_id,
                               features=rng.standard_normal((41, 2048)).astype(np.float32)),
        window=SensorWindowData(stamp_s=now, valid_samples=65, sample_rate_hz=650.0,
                                samples=rng.standard_normal((65, 7)).astype(np.float32)),
        robot=robot, now_s=now, capture_robot=robot)


def measure(calls: dict[str, Callable[[int], object]], runs: int, warmup: int
            ) -> dict[str, dict]:
    """Time each call `runs` times, round robin: a load change on a shared machine hits all."""
    for i in range(warmup):
        for call in calls.values():
            call(i)
    times: dict[str, list[float]] = {label: [] for label in calls}
    for i in range(runs):
        for label, call in calls.items():
            t0 = time.perf_counter()
            call(i)
            times[label].append((time.perf_counter() - t0) * 1e3)
    out = {}
    for label, values in times.items():
        t = np.array(values)
        out[label] = {'p50_ms': float(np.percentile(t, 50)),
                      'p99_ms': float(np.percentile(t, 99)), 'mean_ms': float(t.mean()),
                      'min_ms': float(t.min()), 'runs': runs}
    return out


def policy_calls(ckpt, precisions: list[str], steps: int | None) -> dict[str, Callable]:
    """Return one `ExpertPolicy.infer` call per precision on 8 fixed observations."""
    rng = np.random.default_rng(0)
    obs = [observation(rng) for _ in range(8)]
    calls = {}
    for precision in precisions:
        policy = ExpertPolicy(ckpt, steps=steps, precision=precision)
        calls[precision] = lambda i, policy=policy: policy.infer(obs[i % len(obs)])
    return calls


def accuracy(ckpt, precisions: list[str], count: int, steps: int | None) -> list[dict]:
    """Return the action difference of each precision against fp32 on `count` inputs."""
    inputs = validation_inputs(ckpt.model, count)
    return [{'precision': p, **action_difference(ckpt.model, quantize_expert(ckpt.model, p),
                                                 inputs, steps=steps)}
            for p in precisions if p != 'fp32']


def onnxruntime_calls(ckpt, folder: Path, threads: int) -> tuple[dict[str, Callable], dict]:
    """ONNX Runtime fp32 and dynamic int8 sessions of the regression head (session.run only).

    Returns the calls and each session's largest action difference against torch fp32.
    """
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import quantize_dynamic, QuantType
    except ImportError as exc:
        print(f'onnxruntime rows skipped: {exc}')
        return {}, {}

    class Forward(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, features, window, state, capture):
            return self.model(features, window, state, capture)

    # a model without capture_motion ignores the capture: the state stands in for it
    inputs = [(f, w, s, s if c is None else c) for f, w, s, c in validation_inputs(ckpt.model, 8)]
    names = ('features', 'window', 'state', 'capture')
    fp32, int8 = folder / 'expert.onnx', folder / 'expert-int8.onnx'
    if not int8.exists():
        torch.onnx.export(Forward(ckpt.model), inputs[0], str(fp32), input_names=list(names),
                          output_names=['actions'], dynamo=False, opset_version=17)
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    feeds = [{n: t.numpy() for n, t in zip(names, x)} for x in inputs]
    with torch.inference_mode():
        reference = [ckpt.model(*x).numpy() for x in inputs]
    calls, differences = {}, {}
    for label, path in (('ort-fp32', fp32), ('ort-int8', int8)):
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        # ORT's pool threads otherwise spin after each run and take the core from the torch
        # variant timed next in the round robin
        options.add_session_config_entry('session.intra_op.allow_spinning', '0')
        session = ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
        calls[label] = lambda i, s=session: s.run(None, feeds[i % len(feeds)])
        differences[label] = max(float(np.abs(session.run(None, f)[0] - r).max())
                                 for f, r in zip(feeds, reference))
    return calls, differences


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--runs', type=int, default=300, help='timed runs per configuration')
    parser.add_argument('--warmup', type=int, default=20, help='untimed runs first')
    parser.add_argument('--threads', type=int, nargs='+', default=[1, 2],
                        help='torch CPU thread counts to measure')
    parser.add_argument('--steps', type=int, nargs='+', default=[1, 5, 10],
                        help='flow-head ODE steps to measure')
    parser.add_argument('--precisions', nargs='+', default=list(PRECISIONS),
                        choices=PRECISIONS, help='weight precisions to measure')
    parser.add_argument('--validation', type=int, default=256,
                        help='validation inputs for the accuracy against fp32 (0: skip)')
    parser.add_argument('--onnxruntime', action='store_true',
                        help='also time ONNX Runtime fp32/int8 (needs onnxruntime and onnx)')
    args = parser.parse_args()
    rows, accuracy_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        heads = {'regression': make_untrained_checkpoint(Path(tmp) / 'reg', CONTRACT),
                 'flow': make_untrained_checkpoint(Path(tmp) / 'flow', CONTRACT, head='flow')}
        for threads in args.threads:
            torch.set_num_threads(threads)
            for head, folder in heads.items():
                ckpt = load_checkpoint(folder)
                params = count_parameters(ckpt.model, trainable_only=False)
                for steps in ([1] if head == 'regression' else args.steps):
                    calls = policy_calls(ckpt, args.precisions,
                                         steps if head == 'flow' else None)
                    differences = {}
                    if args.onnxruntime and head == 'regression':
                        ort_calls, differences = onnxruntime_calls(ckpt, Path(tmp), threads)
                        calls.update(ort_calls)
                    for label, result in measure(calls, args.runs, args.warmup).items():
                        rows.append({'head': head, 'precision': label, 'steps': steps,
                                     'threads': threads, 'params_M': params / 1e6, **result,
                                     'max_abs_vs_fp32': differences.get(label, '')})
        if args.validation:
            torch.set_num_threads(args.threads[0])
            for head, folder in heads.items():
                steps = 10 if head == 'flow' else None
                accuracy_rows += [{'head': head, **row} for row in
                                  accuracy(load_checkpoint(folder), args.precisions,
                                           args.validation, steps)]
    print_table('Action expert latency, batch 1, default size (ExpertPolicy.infer; ort rows: '
                'session.run), variants timed round robin', rows)
    if accuracy_rows:
        print_table(f'Actions against fp32 over {args.validation} validation inputs (untrained '
                    'checkpoint; action std 1, so units are action stds; flow: 10 steps)',
                    accuracy_rows)
    write_json('expert', {'rows': rows, 'accuracy': accuracy_rows,
                          'validation_inputs': args.validation, 'untrained': True,
                          'target': {'regression_p50_ms': 8.0, 'regression_p99_ms': 15.0,
                                     'regression_int8_1thread_p50_ms': 5.0}})
    return 0


if __name__ == '__main__':
    sys.exit(main())
