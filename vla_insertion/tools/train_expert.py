r"""train_expert: behaviour-clone the action expert on recorded bags.

    train_expert artifacts/bags/session_01 --vlm-model artifacts/models/tiny-qwen2.5-vl \
        --vlm-params config/vla_insertion.yaml --preset small --steps 2000 \
        --out artifacts/checkpoints/trained-expert

Every bag is read and ticked exactly as `evaluate --mode open-loop` does (`evaluate.
load_recording`, `Inputs`, `open_loop_ticks`): at each tick of `--rate-hz` the newest recorded
frames go through the real VLM (every `--vl-every` ticks, features reused in between, kept in
memory), and the newest sensor window and robot state are taken. The target is what the robot
then did: the recorded joints at tick + k * dt and the recorded gripper (`core.expert.training`).
Normalisation statistics come from the data. The checkpoint is labelled trained, carries the
VLM's feature contract and, in `extra`, the bags, steps, losses and seed.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from vla_insertion.core import bag
from vla_insertion.core.config import ConfigError
from vla_insertion.core.expert.checkpoint import (
    CheckpointMeta, DEFAULT_SENSOR_CHANNELS, save_checkpoint)
from vla_insertion.core.expert.model import ActionExpert, count_parameters, ExpertModelConfig
from vla_insertion.core.expert.policy import robot_state_vector
from vla_insertion.core.expert.training import (
    chunk_targets, dataset_loss, ExpertDataset, fit_normalization, train)
from vla_insertion.tools.evaluate import (
    DEFAULT_VLM, Inputs, load_recording, open_loop_ticks, vlm_config)
from vla_insertion.tools.make_untrained_checkpoint import PRESETS

log = logging.getLogger('train_expert')

DEFAULT_OUTPUT = 'artifacts/checkpoints/trained-expert'


def collect_samples(rec, vlm, views: tuple[str, ...], horizon: int, dt_s: float,
                    rate_hz: float = 10.0, vl_every: int = 1, progress: bool = True) -> dict:
    """Run the VLM over one recording's ticks; return its samples as lists of arrays."""
    inputs = Inputs(rec, views)
    out = {'features': [], 'feature_index': [], 'windows': [], 'states': [], 'actions': [],
           'contract_hash': None}
    vlm.reset()
    features = None
    for i, t in enumerate(tqdm(open_loop_ticks(inputs, rate_hz), desc=f'VLM {rec.path.name}',
                               unit='tick', disable=not progress)):
        times = t + np.arange(horizon) * dt_s
        gripper = [inputs.robot(s).gripper for s in times]
        actions = chunk_targets(rec.trajectory, t, horizon, dt_s, gripper)
        if actions is None:                       # the chunk runs past the recording
            continue
        window = inputs.window(t)
        if window.channel_names and tuple(window.channel_names) != DEFAULT_SENSOR_CHANNELS:
            raise ValueError(f'{rec.path}: sensor channels {list(window.channel_names)} != '
                             f'{list(DEFAULT_SENSOR_CHANNELS)}')
        if features is None or i % vl_every == 0:
            features = vlm.infer(inputs.vlm(t, sequence=len(out['features'])))
            out['features'].append(np.asarray(features.features, dtype=np.float32))
            out['contract_hash'] = features.contract_hash
        out['feature_index'].append(len(out['features']) - 1)
        out['windows'].append(np.asarray(window.samples, dtype=np.float32))
        out['states'].append(robot_state_vector(inputs.robot(t)))
        out['actions'].append(actions)
    if not out['actions']:
        raise ValueError(f'{rec.path}: no tick with a complete chunk of recorded targets')
    return out


def build_dataset(parts: list[dict]) -> ExpertDataset:
    """Concatenate the samples of several recordings into one dataset."""
    features, index, windows, states, actions = [], [], [], [], []
    for part in parts:
        index.extend(np.asarray(part['feature_index']) + len(features))
        features.extend(part['features'])
        windows.extend(part['windows'])
        states.extend(part['states'])
        actions.extend(part['actions'])
    return ExpertDataset.from_arrays(np.stack(features), np.stack(windows), np.stack(states),
                                     np.stack(actions), feature_index=index)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='train_expert', description=__doc__.split('\n\n')[0])
    parser.add_argument('bags', nargs='+', help='bag folders')
    parser.add_argument('--vlm-params', help='ROS params YAML; its vlm_node entry configures the '
                        'VLM (views, image size, prompt)')
    parser.add_argument('--vlm-model', help=f'VLM folder or hub id (default {DEFAULT_VLM})')
    parser.add_argument('--preset', choices=sorted(PRESETS), default='small',
                        help='expert size: small or default (~20.7M parameters)')
    parser.add_argument('--steps', type=int, default=2000, help='optimizer steps')
    parser.add_argument('--lr', type=float, default=1e-3, help='peak learning rate (AdamW)')
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--seed', type=int, default=0, help='weights, batches and noise')
    parser.add_argument('--horizon', type=int, default=8, help='actions per chunk')
    parser.add_argument('--dt', type=float, default=0.1, help='time between actions [s]')
    parser.add_argument('--rate-hz', type=float, default=10.0, help='tick rate over the bags')
    parser.add_argument('--vl-every', type=int, default=1,
                        help='run the VLM every N ticks, reuse features between')
    parser.add_argument('--threads', type=int, default=0,
                        help='torch threads (0: leave the default)')
    parser.add_argument('--out', '--output', dest='output', default=DEFAULT_OUTPUT,
                        help=f'checkpoint folder to write (default {DEFAULT_OUTPUT})')
    parser.add_argument('--no-progress', action='store_true')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    progress = not args.no_progress
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.vl_every < 1 or args.steps < 1:
        print('train_expert: --vl-every and --steps must be >= 1', file=sys.stderr)
        return 2
    try:
        from vla_insertion.core.vlm import feature_contract_for
        from vla_insertion.core.vlm.extractor import VlmFeatureExtractor
        vlm_cfg = vlm_config(args.vlm_params, args.vlm_model)
        contract = feature_contract_for(vlm_cfg)
        torch.manual_seed(args.seed)
        vlm = VlmFeatureExtractor(vlm_cfg, download=False)
        t0 = time.perf_counter()
        parts = []
        for path in args.bags:
            rec = load_recording(path, progress=progress)
            part = collect_samples(rec, vlm, vlm_cfg.view_names, args.horizon, args.dt,
                                   args.rate_hz, args.vl_every, progress)
            if part['contract_hash'] != contract.digest:
                raise ValueError(f'the VLM produced features with contract '
                                 f'{part["contract_hash"]}, expected {contract.digest}')
            parts.append(part)
        dataset = build_dataset(parts)
        vl_s = time.perf_counter() - t0
    except (bag.BagError, ConfigError, OSError, ValueError, RuntimeError) as exc:
        print(f'train_expert: {exc}', file=sys.stderr)
        return 2
    print(f'{len(dataset)} samples from {len(args.bags)} bag(s), {dataset.features.shape[0]} '
          f'VL feature sets {tuple(dataset.features.shape[1:])} in {vl_s:.1f} s')

    cfg = ExpertModelConfig(**{**PRESETS[args.preset], 'feature_tokens': contract.num_tokens,
                               'feature_dim': contract.feature_dim, 'horizon': args.horizon,
                               'window_samples': int(dataset.windows.shape[1])})
    torch.manual_seed(args.seed)
    model = ActionExpert(cfg)
    fit_normalization(model, dataset)
    start_loss = dataset_loss(model, dataset, seed=args.seed)
    print(f'loss at start: {start_loss:.4f} (normalised MSE over the dataset)')
    bar = tqdm(total=args.steps, desc='training', unit='step', disable=not progress)

    def on_step(step: int, loss: float) -> None:
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f'{loss:.4f}')

    t0 = time.perf_counter()
    losses = train(model, dataset, args.steps, lr=args.lr, batch_size=args.batch_size,
                   seed=args.seed, callback=on_step)
    bar.close()
    train_s = time.perf_counter() - t0
    end_loss = dataset_loss(model, dataset, seed=args.seed)
    print(f'loss at end: {end_loss:.4f} (last step {losses[-1]:.4f}) after {args.steps} steps '
          f'in {train_s:.1f} s')
    meta = CheckpointMeta(
        model=cfg, contract=contract, dt_s=float(args.dt), untrained=False,
        description=f'behaviour cloning on {len(args.bags)} bag(s), {len(dataset)} samples, '
                    f'preset {args.preset}, {count_parameters(model)} parameters',
        extra={'bags': [str(Path(p)) for p in args.bags], 'samples': len(dataset),
               'steps': args.steps, 'lr': args.lr, 'batch_size': args.batch_size,
               'seed': args.seed, 'preset': args.preset, 'vl_every': args.vl_every,
               'rate_hz': args.rate_hz, 'start_loss': start_loss, 'final_loss': end_loss,
               'final_step_loss': losses[-1], 'train_s': train_s})
    folder = save_checkpoint(args.output, model, meta)
    print(f'wrote trained expert checkpoint {folder} (contract {contract.digest})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
