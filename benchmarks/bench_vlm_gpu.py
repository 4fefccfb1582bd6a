"""VLM at the real size on a GPU: Qwen2.5-VL-3B architecture, random weights, bf16.

The model is built from the published 3B config (core/vlm/architecture.py, nothing downloaded)
with random weights, which cost exactly what trained ones do. For 1 and 5 views at 640x360 it
times the whole feature path of the node (VlmFeatureExtractor: decode, resize, processor,
forward without LM head, reduction) and reports forward and total p50/p99 [ms] and peak GPU
memory (torch.cuda.max_memory_allocated). Reference, original system on an RTX 4090: 311 ms (1
view), 381 ms (5 views at 640x360), ~8 GB for the whole stack.

    python benchmarks/bench_vlm_gpu.py                 # needs a CUDA GPU
    python benchmarks/bench_vlm_gpu.py --dry-run       # no GPU: config, parameters, token counts
    python benchmarks/bench_vlm_gpu.py --smoke-cpu --runs 2 --warmup 0   # timing code, tiny model
"""
from __future__ import annotations

import argparse
import io
import os
from pathlib import Path
import sys
import time

import numpy as np
from PIL import Image

# the checkout's sources first; generated messages come from install/ (extend_path)
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from report import print_table, write_json  # noqa: E402  (benchmarks/ is not a package)

os.environ.setdefault('HF_HUB_OFFLINE', '1')

VIEWS = ('zed_1', 'zed_2', 'zed_3', 'zed_4', 'oak')
REFERENCE_MS = {1: 311.0, 5: 381.0}   # RTX 4090, original system
RANDOM_3B_ID = 'random-weights/Qwen2.5-VL-3B-Instruct-architecture'


def jpeg(seed: int, width: int = 1280, height: int = 720) -> bytes:
    coarse = np.random.default_rng(seed).integers(0, 256, (9, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC).save(
        buffer, 'JPEG', quality=90)
    return buffer.getvalue()


def build_processor():
    """Return the node's processor from the real Qwen tokenizer files (no model folder)."""
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil)

    from vla_insertion.core.vlm.architecture import PUBLISHED_PREPROCESSOR_CONFIG
    from vla_insertion.core.vlm.model import ImageTextProcessor, qwen_tokenizer_dir
    from vla_insertion.core.vlm.prompt import CHAT_TEMPLATE
    return ImageTextProcessor(
        image_processor=Qwen2VLImageProcessorPil(**PUBLISHED_PREPROCESSOR_CONFIG),
        tokenizer=AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir())),
        chat_template=CHAT_TEMPLATE)


def dry_run(args) -> dict:
    """Everything that needs no GPU: the config, parameter counts and sequence lengths."""
    import torch

    from vla_insertion.core.config import VlmConfig
    from vla_insertion.core.vlm.architecture import published_3b_config
    from vla_insertion.core.vlm.contract import feature_contract_for
    from vla_insertion.core.vlm.model import build_random_model
    from vla_insertion.core.vlm.prompt import build_prompt

    model = build_random_model(published_3b_config(), dtype=torch.bfloat16, device='meta')
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for p in model.model.visual.parameters())
    processor = build_processor()
    rows = []
    for n in args.views:
        image = Image.new('RGB', (args.width, args.height), (90, 90, 90))
        inputs = processor(text=[build_prompt(VIEWS[:n], 'Insert the needle.')],
                           images=[image] * n, return_tensors='pt')
        config = VlmConfig(view_names=VIEWS[:n], image_width=args.width,
                           image_height=args.height)
        contract = feature_contract_for(config)
        rows.append({'views': n, 'sequence_tokens': int(inputs['input_ids'].shape[1]),
                     'visual_tokens': int((inputs['input_ids'] == 151655).sum()),
                     'patches': int(inputs['pixel_values'].shape[0]),
                     'feature_shape': f'{contract.num_tokens}x{contract.feature_dim}'})
    print_table(f'Qwen2.5-VL-3B (published config): {total / 1e9:.3f} B parameters '
                f'({vision / 1e9:.3f} B vision), bf16 weights {total * 2 / 2**30:.2f} GiB', rows)
    return {'parameters': total, 'vision_parameters': vision,
            'bf16_weight_gib': total * 2 / 2**30, 'inputs': rows}


def gpu_run(args, smoke_cpu: bool = False) -> dict:
    """Time the feature path; `smoke_cpu` runs the same code on the CPU with the tiny model."""
    import torch

    from vla_insertion.core.config import VlmConfig
    from vla_insertion.core.data import CameraFrame
    from vla_insertion.core.interfaces import VlmObservation
    from vla_insertion.core.vlm.architecture import published_3b_config, tiny_config
    from vla_insertion.core.vlm.extractor import VlmFeatureExtractor
    from vla_insertion.core.vlm.model import build_random_model
    from vla_insertion.core.vlm.source import ModelSource

    cuda = not smoke_cpu
    device = torch.device('cuda' if cuda else 'cpu')
    dtype = torch.bfloat16 if cuda else torch.float32
    architecture = published_3b_config() if cuda else tiny_config()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    model = build_random_model(architecture, dtype=dtype, device=device,
                               attn_implementation=args.attn)
    weights_gib = torch.cuda.memory_allocated(device) / 2**30 if cuda else float('nan')
    processor = build_processor()
    source = ModelSource(folder=Path('.'), model_id=RANDOM_3B_ID, untrained=True,
                         config=architecture)
    images = [jpeg(i) for i in range(len(VIEWS))]
    results = []
    for n in args.views:
        config = VlmConfig(model=RANDOM_3B_ID, device=device.type, dtype=str(dtype)[6:],
                           attn_implementation=args.attn, view_names=VIEWS[:n],
                           image_width=args.width, image_height=args.height)
        extractor = VlmFeatureExtractor.from_loaded(config, source, model, processor)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        forward, total = [], []
        for run in range(args.warmup + args.runs):
            frames = {v: CameraFrame(view=v, stamp_s=time.time(), data=images[i])
                      for i, v in enumerate(VIEWS[:n])}
            extractor.infer(VlmObservation(frames=frames, sequence=run))
            if run >= args.warmup:
                forward.append(extractor.last_timings['forward_ms'])
                total.append(extractor.last_timings['total_ms'])
        results.append({
            'views': n, 'forward_p50_ms': float(np.percentile(forward, 50)),
            'forward_p99_ms': float(np.percentile(forward, 99)),
            'total_p50_ms': float(np.percentile(total, 50)),
            'total_p99_ms': float(np.percentile(total, 99)),
            'reference_ms': REFERENCE_MS.get(n, float('nan')),
            'peak_gib': torch.cuda.max_memory_allocated(device) / 2**30 if cuda
            else float('nan')})
    name = torch.cuda.get_device_name(device) if cuda else 'CPU smoke test, tiny model'
    print_table(f'Qwen2.5-VL-3B random weights, {dtype}, {args.attn}, {name}, '
                f'{args.width}x{args.height}, {args.runs} runs (weights {weights_gib:.2f} GiB)',
                results)
    return {'device': name, 'attn': args.attn, 'weights_gib': weights_gib, 'results': results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--dry-run', action='store_true',
                        help='no GPU: build the config, count parameters and tokens only')
    parser.add_argument('--views', type=int, nargs='+', default=[1, 5])
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=360)
    parser.add_argument('--runs', type=int, default=20)
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--attn', default='sdpa', choices=('sdpa', 'eager', 'flash_attention_2'))
    parser.add_argument('--smoke-cpu', action='store_true',
                        help='check the timing code on the CPU with the tiny model (no GPU)')
    args = parser.parse_args(argv)

    import torch
    summary = {'dry_run': dry_run(args)}
    if args.smoke_cpu:
        gpu_run(args, smoke_cpu=True)
        return 0
    if args.dry_run:
        write_json('vlm_gpu_dry_run', summary)
        return 0
    if not torch.cuda.is_available():
        print('no CUDA GPU: run with --dry-run, or on a machine with a GPU')
        return 2
    summary.update(gpu_run(args))
    write_json('vlm_gpu', summary)
    return 0


if __name__ == '__main__':
    sys.exit(main())
