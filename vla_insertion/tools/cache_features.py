r"""cache_features: run the VLM once over recorded bags and store its features for training.

    cache_features artifacts/bags/session_* --params-file config/vla_insertion.yaml \
        --cache artifacts/cache/features

The VLM runs where the VLM node would have run live: back to back on the newest complete,
in-sync set of views, one update every `--vl-period-s` of recorded time (default: the reference
GPU's measured 0.385 s per update; 0 = every new set of views). Features are stored as float16
in `<cache>/features/*.npy` with a JSON manifest (contract, weights, schedule, per bag: path,
file sizes and times, update stamps). Bags already cached with unchanged files are skipped; a
cache made under another contract or settings is refused, naming the field (exit 2).
See docs/training.md.
"""
from __future__ import annotations

import argparse
import logging
import sys

import torch

from vla_insertion.core import artifacts, bag
from vla_insertion.core.config import ConfigError, VlmConfig
from vla_insertion.core.params import load_config
from vla_insertion.core.train.feature_age import REFERENCE_VLM_LATENCY_S
from vla_insertion.core.train.feature_cache import build_cache, FeatureCacheError
from vla_insertion.core.vlm.source import VlmLoadError

DEFAULT_CACHE = artifacts.ROOT / 'cache' / 'features'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='cache_features', description=__doc__.split('\n\n')[0])
    parser.add_argument('bags', nargs='+', help='bag folders')
    parser.add_argument('--cache', default=str(DEFAULT_CACHE), help='cache folder')
    parser.add_argument('--params-file', help='ROS params YAML: its vlm_node section configures '
                        'the VLM (model, views, image size, prompt, sync tolerance)')
    parser.add_argument('--vlm-model', help='VLM folder or hub id (default: the params file, '
                        f'else {artifacts.TINY_VLM})')
    parser.add_argument('--vl-period-s', type=float, default=REFERENCE_VLM_LATENCY_S,
                        help='recorded time between VLM updates [s] (the live VLM period); '
                        '0 = every new set of views')
    parser.add_argument('--content-hash', action='store_true',
                        help='fingerprint bags by SHA-256 of their files (default: size and '
                        'modification time)')
    parser.add_argument('--force', action='store_true', help='compute cached bags again')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: default)')
    parser.add_argument('--no-progress', action='store_true')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.vl_period_s < 0:
        print('cache_features: --vl-period-s must be >= 0', file=sys.stderr)
        return 2
    try:
        vlm_cfg = load_config(VlmConfig, 'vlm_node', args.params_file,
                              defaults={'model': str(artifacts.TINY_VLM)},
                              overrides={'model': args.vlm_model,
                                         **({'torch_threads': args.threads}
                                            if args.threads > 0 else {})})
        cache = build_cache(args.bags, vlm_cfg, args.cache, args.vl_period_s,
                            content_hash=args.content_hash, force=args.force,
                            progress=not args.no_progress, report=print)
    except (bag.BagError, ConfigError, FeatureCacheError, VlmLoadError, OSError,
            ValueError) as exc:
        print(f'cache_features: {exc}', file=sys.stderr)
        return 2
    entries = [cache.entry(b) for b in args.bags]
    print(f'cache {cache.folder}: {len(entries)} bag(s), {sum(e["count"] for e in entries)} VL '
          f'updates, contract {cache.contract.digest} ({cache.contract.num_tokens} x '
          f'{cache.contract.feature_dim}, float16)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
