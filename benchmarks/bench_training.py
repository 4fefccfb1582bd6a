"""Training throughput on this machine: cached features against a VLM in every step.

Builds recorded sessions (the test helper's synthetic cell bags: 2 views, 10 FPS), caches them
with the tiny untrained VLM (2 views at 112 x 56, like the tests), then times optimizer steps of
the one training loop (`Trainer`) over:

    cache            stage 1 on the cache: features read from fp16 memory-mapped files
    cache (3B shape) the same with 41 x 2048 features (the shape Qwen2.5-VL-3B publishes),
                     random values written through the same cache; the cost depends on shapes
    VLM per step     stage 1 without a cache: every sample's views decoded and run through the
                     frozen tiny VLM in every step (what training without a cache would cost)
    LoRA (stage 2)   the VLM with LoRA adapters, forward and backward through the VLM

and counts, with cProfile, the calls of JPEG decoding and of the VLM forward inside the timed
steps: none on the cache. Per-step times are medians after warm-up steps.

    python benchmarks/bench_training.py                  # torch threads 1
    python benchmarks/bench_training.py --threads 2 --steps 30
"""
from __future__ import annotations

import argparse
import cProfile
from pathlib import Path
import pstats
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'benchmarks'))
sys.path.insert(0, str(ROOT / 'test'))
from conftest import write_cell_bag  # noqa: E402, I100
from report import print_table, write_json  # noqa: E402

from vla_insertion.core.config import VlmConfig  # noqa: E402
from vla_insertion.core.expert.model import ActionExpert, count_parameters  # noqa: E402
from vla_insertion.core.expert.presets import model_config  # noqa: E402
from vla_insertion.core.expert.staleness import StalenessLimits  # noqa: E402
from vla_insertion.core.feature_contract import FeatureContract  # noqa: E402
from vla_insertion.core.train.feature_cache import (  # noqa: E402
    build_cache, cache_identity, FeatureCache)
from vla_insertion.core.train.fit import FitConfig, prepare_data  # noqa: E402
from vla_insertion.core.train.trainer import TrainConfig, Trainer  # noqa: E402
from vla_insertion.core.vlm.model import write_tiny_model  # noqa: E402

VIEWS = ('zed_1', 'oak')
CONTRACT_3B = FeatureContract(model_id='Qwen/Qwen2.5-VL-3B-Instruct',
                              reduction='image_grid_pool+instruction_mean:2x4', num_tokens=41,
                              feature_dim=2048, image_width=640, image_height=360,
                              view_names=('zed_1', 'zed_2', 'zed_3', 'zed_4', 'oak'),
                              prompt='benchmark')
COUNTED = {'decode_image': 'JPEG/PNG decodes (vlm.extractor.decode_image)',
           'forward_features': 'VLM forwards (VlmFeatureExtractor.forward_features)'}


def shaped_cache(source: FeatureCache, bags: list[str], folder: Path) -> str:
    """Copy a cache's updates with random (41, 2048) fp16 features under the 3B contract."""
    identity = cache_identity(CONTRACT_3B, 'random', 'bfloat16', 0.0, 0.1, 0.5)
    cache = FeatureCache.create(folder, identity)
    rng = np.random.default_rng(0)
    for b in bags:
        updates = source.bag(b).updates
        cache.add(b, updates, rng.standard_normal((len(updates), 41, 2048)).astype(np.float16))
    return str(folder)


def time_steps(model: ActionExpert, data, cfg: TrainConfig, warmup: int, vl=None) -> dict:
    """Median seconds per step after `warmup` steps, and the counted calls in the timed ones."""
    stamps = []
    profile = cProfile.Profile()

    def on_step(info: dict) -> None:
        stamps.append(time.perf_counter())
        if info['step'] == warmup:
            profile.enable()
    trainer = Trainer(model, data, cfg, vl=vl, on_step=on_step, progress_bar=False)
    trainer.run()
    profile.disable()
    counts = dict.fromkeys(COUNTED, 0)
    for (_file, _line, name), (calls, *_rest) in pstats.Stats(profile).stats.items():
        if name in counts:
            counts[name] += calls
    step_s = float(np.median(np.diff(stamps[warmup - 1:])))
    return {'step_ms': step_s * 1e3, 'steps_per_s': 1.0 / step_s,
            'samples_per_s': cfg.batch_size / step_s,
            **{f'calls_{k}': v for k, v in counts.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--threads', type=int, default=1, help='torch CPU threads')
    parser.add_argument('--steps', type=int, default=40, help='timed steps on the cache')
    parser.add_argument('--vlm-steps', type=int, default=4, help='timed steps with the VLM')
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--lora-batch-size', type=int, default=8)
    parser.add_argument('--bags', type=int, default=3, help='synthetic 6 s sessions')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows, extra = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = write_tiny_model(tmp / 'tiny', seed=0)
        vlm = VlmConfig(model=str(model_dir), view_names=VIEWS, image_width=112, image_height=56,
                        torch_threads=args.threads, device='cpu')
        bags = []
        for i in range(args.bags):
            bags.append(str(tmp / f'bag{i}'))
            write_cell_bag(bags[-1], 6.0, VIEWS, seed=i)
        started = time.perf_counter()
        cache = build_cache(bags, vlm, tmp / 'cache', 0.0, report=lambda _m: None)
        updates = sum(cache.entry(b)['count'] for b in bags)
        extra['cache_build'] = {'updates': updates, 'seconds': time.perf_counter() - started,
                                'ms_per_update': (time.perf_counter() - started) / updates * 1e3}
        big = shaped_cache(cache, bags, tmp / 'cache3b')
        limits = StalenessLimits()
        warm = 3
        for preset in ('small', 'default'):
            for name, folder in (('cache', str(tmp / 'cache')), ('cache (3B shape)', big)):
                cfg = FitConfig(bags=tuple(bags), cache=folder, val_fraction=0.0, preset=preset)
                data = prepare_data(cfg, None, limits).train
                contract = FeatureCache.load(folder).contract
                torch.manual_seed(0)
                model = ActionExpert(model_config(preset, contract))
                model.set_normalization(data.normalization())
                train = TrainConfig(steps=args.steps + warm, batch_size=args.batch_size,
                                    warmup_steps=0, val_every=0, save_every=0)
                rows.append({'features': name, 'preset': preset,
                             'params_M': count_parameters(model) / 1e6,
                             'batch': args.batch_size,
                             **time_steps(model, data, train, warm)})

        # the VLM in every step: frozen (stage 1 without a cache) and with LoRA (stage 2)
        from vla_insertion.core.train import stage2
        for mode, batch in (('VLM per step', args.batch_size),
                            ('LoRA (stage 2)', args.lora_batch_size)):
            cfg = FitConfig(bags=tuple(bags), val_fraction=0.0, finetune_vl='lora')
            prepared = prepare_data(cfg, vlm, limits)
            extractor = prepared.extractor
            if mode == 'VLM per step':
                for p in extractor.model.parameters():
                    p.requires_grad_(False)
                module = extractor.model
            else:
                module = stage2.apply_lora(extractor, stage2.LoraSettings(rank=16))
            vl = stage2.LoraFeatures(extractor, module, prepared.bank, prepared.recordings)
            torch.manual_seed(0)
            model = ActionExpert(model_config('small', prepared.contract))
            model.set_normalization(prepared.train.normalization())
            train = TrainConfig(steps=args.vlm_steps + 1, batch_size=batch, warmup_steps=0,
                                val_every=0, save_every=0)
            rows.append({'features': mode, 'preset': 'small',
                         'params_M': count_parameters(model) / 1e6, 'batch': batch,
                         **time_steps(model, prepared.train, train, 1, vl=vl)})
    print(f'\ncache build: {extra["cache_build"]["updates"]} VL updates in '
          f'{extra["cache_build"]["seconds"]:.1f} s '
          f'({extra["cache_build"]["ms_per_update"]:.0f} ms each, tiny VLM, 2 views 112 x 56)')
    print_table(f'Training steps, CPU, torch threads {args.threads} (medians after warm-up)',
                rows)
    write_json('training', {'rows': rows, **extra, 'threads': args.threads})
    return 0


if __name__ == '__main__':
    sys.exit(main())
