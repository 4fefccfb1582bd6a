r"""train_expert: behaviour-clone the action expert on recorded bags (stage 1, optional stage 2).

    cache_features artifacts/bags/s* --params-file config/vla_insertion.yaml --cache C
    train_expert artifacts/bags/s* --cache C --params-file config/vla_insertion.yaml \
        --preset default --steps 20000 --out artifacts/checkpoints/trained-expert
    torchrun --standalone --nproc_per_node=4 -m vla_insertion.tools.train_expert ...   # DDP
    train_expert ... --finetune-vl lora --init-checkpoint <stage-1 checkpoint>          # stage 2

Each bag (or each episode of an `--episode-log`) is an episode; episodes, never samples, are
held out for validation. Every tick of `--rate-hz` that the expert runner's staleness rules
accept is a sample: the sensor window and robot state at the tick, the recorded joints and
gripper after it as the target, and VL features of a VLM update drawn at every use so that the
feature ages follow `--feature-age` (see core/train/feature_age.py). With `--cache` the VLM is
never loaded; without it the VLM runs here over the bags first (every `--vl-period-s`). The
trainer: AdamW with separate learning rates (action expert, sensor encoder, VL adapters),
warm-up + cosine, gradient clipping, best checkpoint by validation loss, `--resume`,
metrics.csv. The whole pipeline is `core.expert.fit.fit`; see docs/training.md.
"""
from __future__ import annotations

import argparse
import logging
import sys

import torch

from vla_insertion.core import artifacts, bag
from vla_insertion.core.config import ConfigError, ExpertConfig, VlmConfig
from vla_insertion.core.expert.checkpoint import CheckpointError
from vla_insertion.core.expert.model import ACTION_FRAMES
from vla_insertion.core.expert.presets import PRESETS
from vla_insertion.core.expert.staleness import StalenessLimits
from vla_insertion.core.params import load_config
from vla_insertion.core.train.dataset import TARGETS
from vla_insertion.core.train.feature_age import DEFAULT_AGE_SPEC, REFERENCE_VLM_LATENCY_S
from vla_insertion.core.train.feature_cache import FeatureCacheError
from vla_insertion.core.train.fit import fit, FitConfig
from vla_insertion.core.train.trainer import TrainConfig
from vla_insertion.core.vlm.source import VlmLoadError

log = logging.getLogger('train_expert')


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog='train_expert', description=__doc__.split('\n\n')[0])
    p.add_argument('bags', nargs='+', help='bag folders')
    p.add_argument('--params-file', '--vlm-params', dest='params_file',
                   help='ROS params YAML: its vlm_node section configures the VLM (views, image '
                   'size, prompt), its action_expert section the staleness rules')
    p.add_argument('--vlm-model', help='VLM folder or hub id (default: the params file, else '
                   f'{artifacts.TINY_VLM})')
    p.add_argument('--cache', default='', help='feature cache folder (cache_features); the VLM '
                   'is then not loaded')
    p.add_argument('--vl-period-s', type=float, default=None,
                   help=f'without --cache: recorded time between VLM updates [s] (default '
                   f'{REFERENCE_VLM_LATENCY_S}, or --vl-every / --rate-hz)')
    p.add_argument('--vl-every', type=int, default=None,
                   help='without --cache: a VLM update every N ticks (old name of the period)')
    p.add_argument('--feature-age', default=DEFAULT_AGE_SPEC,
                   help='feature-age model: uniform:LOW:WIDTH, json:FILE, bag:FOLDER or newest')
    p.add_argument('--preset', choices=sorted(PRESETS), default='small',
                   help='expert size: small (tests), medium (the demo) or default (~19.4M)')
    p.add_argument('--head', choices=('regression', 'flow'), default='regression')
    p.add_argument('--flow-steps', type=int, default=10, help='flow head: ODE steps')
    p.add_argument('--prefix-conditioning', action='store_true',
                   help='flow head: train to continue a committed prefix (training-time RTC)')
    p.add_argument('--max-prefix', type=int, default=None,
                   help='with --prefix-conditioning: prefixes of 0..N actions (default H / 2)')
    p.add_argument('--action-frame', choices=ACTION_FRAMES, default='delta',
                   help='the network predicts joint targets relative to the measured joints '
                   '(delta) or the targets themselves')
    p.add_argument('--horizon', type=int, default=8, help='actions per chunk')
    p.add_argument('--dt', type=float, default=0.1, help='time between actions [s]')
    p.add_argument('--rate-hz', type=float, default=10.0, help='tick rate over the bags')
    p.add_argument('--targets', choices=TARGETS, default='measured',
                   help='measured: what the robot did after each tick; chunks: a sample at '
                   "each recorded vla/action_chunk (a demonstrator's), that chunk the target")
    p.add_argument('--val-fraction', type=float, default=0.2,
                   help='share of episodes held out for validation')
    p.add_argument('--val-bags', nargs='*', default=[], help='hold out these bags instead')
    p.add_argument('--episode-log', default='', help='sim_cell episode log cutting bags into '
                   'episodes')
    p.add_argument('--steps', type=int, default=2000, help='optimizer steps of the run')
    p.add_argument('--batch-size', type=int, default=64, help='global batch [samples]')
    p.add_argument('--lr', type=float, default=1e-3, help='peak learning rate, action expert')
    p.add_argument('--sensor-lr', type=float, default=0.0,
                   help='peak learning rate, sensor encoder (0: --lr)')
    p.add_argument('--vl-lr', type=float, default=1e-5, help='peak learning rate, VL adapters')
    p.add_argument('--weight-decay', type=float, default=1e-4)
    p.add_argument('--warmup-steps', type=int, default=100)
    p.add_argument('--min-lr-ratio', type=float, default=0.05,
                   help='the cosine ends at this fraction of the peak')
    p.add_argument('--grad-clip', type=float, default=1.0, help='0: no clipping')
    p.add_argument('--wrench-jitter', type=float, default=0.0,
                   help='half the training windows get force offsets U(+-N) and torque '
                   'offsets U(+-0.1 N), the targets unchanged: for a demonstrator that does '
                   "not react to force, as the sim's [N]")
    p.add_argument('--val-every', type=int, default=100, help='validation every N steps')
    p.add_argument('--save-every', type=int, default=500, help='resumable state every N steps')
    p.add_argument('--stop-after', type=int, default=0,
                   help='end this run after N steps (resumable)')
    p.add_argument('--time-budget-s', type=float, default=0.0,
                   help='end this run after this long (resumable)')
    p.add_argument('--resume', action='store_true', help='continue the run saved in --out')
    p.add_argument('--init-checkpoint', '--stage1-checkpoint', dest='init_checkpoint',
                   default='', help='start from this checkpoint (stage 2: from stage 1)')
    p.add_argument('--finetune-vl', choices=('none', 'lora'), default='none',
                   help='lora: stage 2, LoRA on the VLM trained with the expert (no cache)')
    p.add_argument('--lora-rank', type=int, default=16)
    p.add_argument('--lora-alpha', type=float, default=32.0)
    p.add_argument('--lora-dropout', type=float, default=0.05)
    p.add_argument('--no-gradient-checkpointing', action='store_true')
    p.add_argument('--device', choices=('cpu', 'cuda', 'auto'), default='cpu')
    p.add_argument('--seed', type=int, default=0, help='weights, batches, draws and noise')
    p.add_argument('--threads', type=int, default=0, help='torch threads (0: the default)')
    p.add_argument('--out', '--output', dest='output', default=str(artifacts.TRAINED_CHECKPOINT),
                   help='output folder: the best checkpoint, last/, metrics.csv')
    p.add_argument('--no-progress', action='store_true')
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    period = args.vl_period_s if args.vl_period_s is not None else \
        (args.vl_every / args.rate_hz if args.vl_every else REFERENCE_VLM_LATENCY_S)
    try:
        if args.vl_every is not None and args.vl_every < 1:
            raise ConfigError('--vl-every must be >= 1')
        train = TrainConfig(
            steps=args.steps, batch_size=args.batch_size, lr=args.lr, sensor_lr=args.sensor_lr,
            vl_lr=args.vl_lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
            min_lr_ratio=args.min_lr_ratio, grad_clip=args.grad_clip, seed=args.seed,
            max_prefix=(args.max_prefix if args.max_prefix is not None else args.horizon // 2)
            if args.prefix_conditioning else 0,
            val_every=args.val_every, save_every=args.save_every, stop_after=args.stop_after,
            time_budget_s=args.time_budget_s, wrench_jitter_n=args.wrench_jitter)
        cfg = FitConfig(
            bags=tuple(args.bags), out=args.output, cache=args.cache, preset=args.preset,
            head=args.head, flow_steps=args.flow_steps,
            prefix_conditioning=args.prefix_conditioning, action_frame=args.action_frame,
            horizon=args.horizon, dt_s=args.dt,
            rate_hz=args.rate_hz, targets=args.targets, feature_age=args.feature_age,
            vl_period_s=period,
            val_fraction=args.val_fraction, val_bags=tuple(args.val_bags),
            episode_log=args.episode_log, resume=args.resume,
            init_checkpoint=args.init_checkpoint, finetune_vl=args.finetune_vl,
            lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            gradient_checkpointing=not args.no_gradient_checkpointing, device=args.device,
            train=train)
        limits = StalenessLimits.from_config(
            load_config(ExpertConfig, 'action_expert', args.params_file))
        vlm_cfg, expected = None, None
        if not args.cache or args.finetune_vl == 'lora' or args.params_file or args.vlm_model:
            vlm_cfg = load_config(VlmConfig, 'vlm_node', args.params_file,
                                  defaults={'model': str(artifacts.TINY_VLM)},
                                  overrides={'model': args.vlm_model})
        if args.cache and vlm_cfg is not None and args.finetune_vl == 'none':
            from vla_insertion.core.vlm import feature_contract_for
            try:  # the VLM is not needed with a cache: only check it when it is here
                expected = feature_contract_for(vlm_cfg)
            except VlmLoadError as exc:
                print(f'the cache is not checked against the VLM of the params file: {exc}')
        result = fit(cfg, vlm_config=vlm_cfg, limits=limits, expected_contract=expected,
                     progress_bar=not args.no_progress, report=print)
    except (bag.BagError, CheckpointError, ConfigError, FeatureCacheError, VlmLoadError,
            OSError, ValueError, RuntimeError) as exc:
        print(f'train_expert: {exc}', file=sys.stderr)
        return 2
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    print(f'wrote trained expert checkpoint {result.checkpoint} ({result.samples} training, '
          f'{result.val_samples} validation samples)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
