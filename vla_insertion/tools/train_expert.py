r"""train_expert: behaviour-clone the action expert on recorded bags.

    train_expert artifacts/bags/session_01 --vlm-model artifacts/models/tiny-qwen2.5-vl \
        --params-file config/vla_insertion.yaml --preset small --steps 2000 \
        --out artifacts/checkpoints/trained-expert

Every bag is read and ticked exactly as `evaluate --mode open-loop` does
(`core.expert.training.collect_samples` over `core.recording`): at each tick of `--rate-hz`
the expert runner's staleness rules decide whether the robot would have acted, the newest
recorded frames go through the real VLM (every `--vl-every` ticks, features reused in between,
kept in memory), and the newest sensor window and robot state are taken. The target is what the
robot then did: the recorded joints at tick + k * dt and the recorded gripper.
Normalisation statistics come from the data. The checkpoint is labelled trained, carries the
VLM's feature contract and, in `extra`, the bags, steps, losses and seed.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
import sys
import time

import torch
from tqdm import tqdm

from vla_insertion.core import artifacts, bag
from vla_insertion.core.config import ConfigError, ExpertConfig, VlmConfig
from vla_insertion.core.expert.checkpoint import CheckpointMeta, save_checkpoint
from vla_insertion.core.expert.model import ActionExpert, count_parameters
from vla_insertion.core.expert.presets import model_config, PRESETS
from vla_insertion.core.expert.runner import ExpertRunner
from vla_insertion.core.expert.staleness import StalenessLimits
from vla_insertion.core.expert.training import (
    build_dataset, collect_samples, dataset_loss, fit_normalization, train)
from vla_insertion.core.params import load_config
from vla_insertion.core.recording import load_recording

log = logging.getLogger('train_expert')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='train_expert', description=__doc__.split('\n\n')[0])
    parser.add_argument('bags', nargs='+', help='bag folders')
    parser.add_argument('--params-file', '--vlm-params', dest='params_file',
                        help='ROS params YAML: its vlm_node section configures the VLM (views, '
                        'image size, prompt), its action_expert section the staleness rules')
    parser.add_argument('--vlm-model', help='VLM folder or hub id (default: the params '
                        f'file, else {artifacts.TINY_VLM})')
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
    parser.add_argument('--out', '--output', dest='output',
                        default=str(artifacts.TRAINED_CHECKPOINT),
                        help='checkpoint folder to write')
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
        from vla_insertion.core.vlm.extractor import build_vlm
        vlm_cfg = load_config(VlmConfig, 'vlm_node', args.params_file,
                              defaults={'model': str(artifacts.TINY_VLM)},
                              overrides={'model': args.vlm_model})
        expert_cfg = load_config(ExpertConfig, 'action_expert', args.params_file)
        contract = feature_contract_for(vlm_cfg)
        torch.manual_seed(args.seed)
        vlm = build_vlm(vlm_cfg, download=False)
        t0 = time.perf_counter()
        parts = []
        for path in args.bags:
            rec = load_recording(path, views=vlm_cfg.view_names, progress=progress)
            runner = ExpertRunner(None, StalenessLimits.from_config(expert_cfg),
                                  contract_digest=contract.digest,
                                  feature_shape=(contract.num_tokens, contract.feature_dim))
            part = collect_samples(rec, vlm, runner, vlm_cfg.view_names, args.horizon, args.dt,
                                   args.rate_hz, args.vl_every, progress)
            if part['refused']:
                print(f'{path}: {sum(part["refused"].values())} of {part["ticks"]} ticks '
                      f'refused as the robot would: {part["refused"]}')
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

    cfg = model_config(args.preset, contract, horizon=args.horizon,
                       window_samples=int(dataset.windows.shape[1]))
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
