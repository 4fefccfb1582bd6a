r"""dagger: DAgger rounds in one command: drive, label, cache, retrain, evaluate, repeat.

    dagger artifacts/demos/episode_* --cache artifacts/cache/demos \
        --checkpoint artifacts/checkpoints/d100 --params-file config/vla_insertion.yaml \
        --vlm-model artifacts/models/tiny-qwen2.5-vl --rounds 3 --episodes 40 \
        --steps 2000 -o artifacts/dagger

The checkpoint drives `--episodes` new holes (`--seed`, from `--first-episode` on) on the
in-process sim cell through the params file's executor, the demonstrator labelling every tick;
their features join the cache; the expert is trained again on the demonstrations and every
round's bags (from the last checkpoint, or `--scratch`); the new expert is evaluated closed
loop on `--eval-episodes` held-out holes (`--eval-seed`). It stops when the held-out success
reaches `--target`, when it did not improve on the best for `--patience` rounds, or after
`--rounds`. The table of rounds is printed after each round and written to `-o`/rounds.json
and rounds.md; `-o`/checkpoint is the best round's expert. Training options not given are the
starting checkpoint's (preset, targets, batch size, learning rate, wrench jitter, seed).
core/train/dagger.py does the work; docs/training.md "DAgger".
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
import shutil
import sys

import torch

from vla_insertion.core import artifacts, bag
from vla_insertion.core.config import ConfigError, ExpertConfig, VlmConfig
from vla_insertion.core.expert.checkpoint import CheckpointError
from vla_insertion.core.orchestration.builders import executor_settings, SIM_EXECUTOR
from vla_insertion.core.params import load_config
from vla_insertion.core.train.dagger import DaggerConfig, run_dagger
from vla_insertion.core.train.dataset import TARGETS
from vla_insertion.core.train.feature_age import REFERENCE_VLM_LATENCY_S
from vla_insertion.core.train.feature_cache import FeatureCacheError
from vla_insertion.core.train.fit import FitConfig
from vla_insertion.core.train.trainer import TrainConfig
from vla_insertion.core.vlm.source import VlmLoadError

log = logging.getLogger('dagger')


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='dagger', description=__doc__.split('\n\n')[0])
    parser.add_argument('bags', nargs='+', help='the demonstrations (bag folders)')
    parser.add_argument('--checkpoint', required=True, help='the expert that drives round 1')
    parser.add_argument('--cache', required=True,
                        help="the demonstrations' feature cache (the rounds' bags join it)")
    parser.add_argument('--params-file', default='config/vla_insertion.yaml')
    parser.add_argument('--vlm-model', help='VLM folder or hub id (default: the params file, '
                        f'else {artifacts.TINY_VLM})')
    parser.add_argument('-o', '--output', default='artifacts/dagger')
    rounds = parser.add_argument_group('rounds')
    d = DaggerConfig(out='')
    rounds.add_argument('--rounds', type=int, default=d.rounds, help='round budget')
    rounds.add_argument('--episodes', type=int, default=d.episodes,
                        help='driven episodes per round')
    rounds.add_argument('--seed', type=int, default=d.seed, help='seed of the driven holes')
    rounds.add_argument('--first-episode', type=int, default=d.first_episode,
                        help='first driven episode (round k: + (k - 1) x --episodes)')
    rounds.add_argument('--eval-episodes', type=int, default=d.eval_episodes)
    rounds.add_argument('--eval-seed', type=int, default=d.eval_seed,
                        help='seed of the held-out holes')
    rounds.add_argument('--patience', type=int, default=d.patience,
                        help='stop after this many rounds without a better held-out success')
    rounds.add_argument('--target', type=float, default=d.target,
                        help='stop once the held-out success reaches this')
    rounds.add_argument('--no-eval-start', action='store_true',
                        help='do not evaluate the starting checkpoint (round 0)')
    rounds.add_argument('--workers', type=int, default=d.workers,
                        help='processes recording and evaluating')
    rounds.add_argument('--camera-fps', type=float, default=d.camera_fps)
    train = parser.add_argument_group('training (default: as the starting checkpoint)')
    train.add_argument('--steps', type=int, default=d.steps, help='steps of each round')
    train.add_argument('--scratch', action='store_true',
                       help='train each round from scratch (default: from the last checkpoint)')
    train.add_argument('--preset', help='expert size when training from scratch')
    train.add_argument('--targets', choices=TARGETS)
    train.add_argument('--feature-age', default='newest')
    train.add_argument('--batch-size', type=int)
    train.add_argument('--lr', type=float)
    train.add_argument('--wrench-jitter', type=float)
    train.add_argument('--train-seed', type=int)
    train.add_argument('--threads', type=int, default=0, help='torch threads (0: default)')
    return parser.parse_args(argv)


def fit_template(args: argparse.Namespace) -> FitConfig:
    """Return the demonstrations' FitConfig: the flags given, else the start's."""
    try:
        extra = json.loads((Path(args.checkpoint) / 'config.json').read_text())['extra']
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f'--checkpoint {args.checkpoint}: not a trained expert checkpoint '
                          f'({exc})') from exc
    trained = extra.get('train', {})
    given = {'batch_size': args.batch_size, 'lr': args.lr, 'wrench_jitter_n': args.wrench_jitter,
             'seed': args.train_seed}
    train = TrainConfig(**{**{k: v for k, v in trained.items()
                              if k in TrainConfig.__dataclass_fields__},
                           **{k: v for k, v in given.items() if v is not None},
                           'stop_after': 0, 'time_budget_s': 0.0})
    return FitConfig(bags=tuple(args.bags), cache=args.cache,
                     preset=args.preset or extra.get('preset', 'small'),
                     targets=args.targets or extra.get('targets', 'measured'),
                     horizon=int(extra.get('horizon', 8)), rate_hz=float(extra.get('rate_hz', 10)),
                     feature_age=args.feature_age, vl_period_s=REFERENCE_VLM_LATENCY_S,
                     train=train)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out = Path(args.output)
    try:
        config = DaggerConfig(
            out=str(out), rounds=args.rounds, episodes=args.episodes, seed=args.seed,
            first_episode=args.first_episode, eval_episodes=args.eval_episodes,
            eval_seed=args.eval_seed, patience=args.patience, target=args.target,
            warm=not args.scratch, steps=args.steps, evaluate_start=not args.no_eval_start,
            workers=args.workers, camera_fps=args.camera_fps)
        vlm = load_config(VlmConfig, 'vlm_node', args.params_file,
                          defaults={'model': str(artifacts.TINY_VLM)},
                          overrides={'model': args.vlm_model})
        expert = load_config(ExpertConfig, 'action_expert', args.params_file,
                             overrides={'checkpoint': args.checkpoint})
        # the sim's executor: armed, and allowed to arm on the tiny VLM's random features
        executor = executor_settings(args.params_file, overrides=SIM_EXECUTOR)
        template = fit_template(args)
        result = run_dagger(config, args.checkpoint, template, vlm=vlm, expert=expert,
                            executor=executor, say=print)
    except (bag.BagError, CheckpointError, ConfigError, FeatureCacheError, VlmLoadError,
            OSError, ValueError, RuntimeError) as exc:
        print(f'dagger: {exc}', file=sys.stderr)
        return 2
    best = out / 'checkpoint'
    shutil.rmtree(best, ignore_errors=True)
    shutil.copytree(result.checkpoint, best, ignore=shutil.ignore_patterns('last'))
    print(f'stopped: {result.stopped}\nbest: round {result.best["round"]}, held-out success '
          f'{result.best.get("held_out_success")}; its expert copied to {best}\n'
          f'wrote {out}/rounds.json and rounds.md')
    return 0


if __name__ == '__main__':
    sys.exit(main())
