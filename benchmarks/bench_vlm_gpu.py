"""VLM at the real size on a GPU: the Qwen2.5-VL-3B architecture in bf16, eager and compiled.

The model is built from the published 3B config (core/vlm/architecture.py, nothing downloaded)
with random weights, which cost exactly what trained ones do. Each case times the node's whole
feature path (VlmFeatureExtractor: decode, resize, preprocessing, forward without LM head,
reduction) and reports forward, preprocessing and total p50/p99 [ms], the first call [s] (which
includes compiling) and peak GPU memory (torch.cuda.max_memory_allocated). Cases, in this order
(the most informative first, so a short budget still answers the main question):

    eager          fast preprocessing, 1 and 5 views
    eager-stock    the stock Hugging Face processor, 5 views (the preprocessing before issue 13)
    compile        torch.compile (inductor, no CUDA graphs) of the vision tower and the
                   language model (core/vlm/compile.py), 5 then 1 views
    cudagraphs     the same with mode='reduce-overhead' (CUDA graphs), 5 then 1 views

`--budget-s` (default 240 s from the start of the model construction, so that the whole
command with imports and the dry-run table stays under 5 minutes on an H100/H200-class GPU)
guards the run: a case is not started when the time is spent, and a case still running when it
runs out (a long compile) is stopped; the table is printed and the JSON written either way,
skipped cases marked. A case that fails records its error and the
run goes on. Reference, original system on an RTX 4090: 311 ms (1 view), 381 ms (5 views at
640x360), ~8 GB for the whole stack.

    python benchmarks/bench_vlm_gpu.py                 # needs a CUDA GPU; ~5 min
    python benchmarks/bench_vlm_gpu.py --budget-s 120 --cases eager compile
    python benchmarks/bench_vlm_gpu.py --dry-run       # no GPU: config, parameters, token counts
    python benchmarks/bench_vlm_gpu.py --smoke-cpu --runs 2 --warmup 0   # the code, tiny model

`--smoke-cpu` runs the same cases on the CPU with the tiny model; its compile case uses the
'eager' dynamo backend (graph capture without code generation, seconds instead of minutes) and
CUDA graphs are skipped: it checks the code, not the speed.
"""
from __future__ import annotations

import argparse
import io
import os
from pathlib import Path
import signal
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
# (name, preprocessing, compile mode or None for eager)
CASES = {'eager': ('fast', None), 'eager-stock': ('processor', None),
         'compile': ('fast', 'default'), 'cudagraphs': ('fast', 'reduce-overhead')}


class BudgetSpent(Exception):
    """The --budget-s time ran out during a case."""


def jpeg(seed: int, width: int = 1280, height: int = 720) -> bytes:
    coarse = np.random.default_rng(seed).integers(0, 256, (9, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(coarse).resize((width, height), Image.BICUBIC).save(
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


def _on_alarm(signum, frame):
    raise BudgetSpent()


def _is_budget(exc: BaseException | None) -> bool:
    # torch.compile re-raises exceptions from inside a trace wrapped in its own error types
    while exc is not None:
        if isinstance(exc, BudgetSpent):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def run_case(model, processor, source, architecture, name: str, views: int, args, cuda: bool,
             device, dtype) -> dict:
    """Time one case; the model is compiled (or not) as the case says, then restored."""
    import torch

    from vla_insertion.core.config import VlmConfig
    from vla_insertion.core.data import CameraFrame
    from vla_insertion.core.interfaces import VlmObservation
    from vla_insertion.core.vlm.compile import compile_model, uncompile_model
    from vla_insertion.core.vlm.extractor import VlmFeatureExtractor

    preprocessing, mode = CASES[name]
    config = VlmConfig(model=RANDOM_3B_ID, device=device.type, dtype=str(dtype)[6:],
                       attn_implementation=args.attn, view_names=VIEWS[:views],
                       image_width=args.width, image_height=args.height,
                       preprocessing=preprocessing, torch_compile='off')
    extractor = VlmFeatureExtractor.from_loaded(config, source, model, processor)
    if mode is not None:
        compile_model(model, mode, backend=args.compile_backend)
    images = [jpeg(i) for i in range(views)]
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    samples = {'forward': [], 'processor': [], 'total': []}
    first_s = float('nan')
    try:
        for run in range(1 + args.warmup + args.runs):
            frames = {v: CameraFrame(view=v, stamp_s=time.time(), data=images[i])
                      for i, v in enumerate(VIEWS[:views])}
            t = time.perf_counter()
            extractor.infer(VlmObservation(frames=frames, sequence=run))
            if run == 0:
                first_s = time.perf_counter() - t           # includes compiling
            elif run > args.warmup:
                for stage in samples:
                    samples[stage].append(extractor.last_timings[f'{stage}_ms'])
    finally:
        extractor.close()
        if mode is not None:
            uncompile_model(model)
    row = {'case': name, 'views': views, 'preprocessing': preprocessing,
           'first_call_s': first_s}
    for stage, values in samples.items():
        row[f'{stage}_p50_ms'] = float(np.percentile(values, 50))
        row[f'{stage}_p99_ms'] = float(np.percentile(values, 99))
    row['reference_ms'] = REFERENCE_MS.get(views, float('nan'))
    row['peak_gib'] = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else float('nan')
    return row


def timed_run(args, smoke_cpu: bool = False) -> dict:
    """Run the cases within the budget; `smoke_cpu`: the same code on the CPU, tiny model."""
    import torch

    from vla_insertion.core.vlm.architecture import published_3b_config, tiny_config
    from vla_insertion.core.vlm.model import build_random_model
    from vla_insertion.core.vlm.source import ModelSource

    start = time.monotonic()
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
    build_s = time.monotonic() - start
    plan = []
    for name in args.cases:
        counts = sorted(args.views, reverse=True) if CASES[name][1] else list(args.views)
        if name == 'eager-stock':
            counts = [max(args.views)]
        plan += [(name, n) for n in counts]
    rows = []
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    try:
        for name, views in plan:
            left = args.budget_s - (time.monotonic() - start)
            skip = None
            if left <= 0:
                skip = 'skipped: budget spent'
            elif name == 'cudagraphs' and not cuda:
                skip = 'skipped: CUDA graphs need a GPU'
            if skip:
                rows.append({'case': name, 'views': views, 'note': skip})
                continue
            signal.setitimer(signal.ITIMER_REAL, left)
            try:
                row = run_case(model, processor, source, architecture, name, views, args,
                               cuda, device, dtype)
                row['note'] = ''
            except Exception as exc:  # one failing mode must not lose the others' numbers
                note = ('stopped: budget spent' if _is_budget(exc) else
                        f'error: {type(exc).__name__}: {" ".join(str(exc).split())[:160]}')
                row = {'case': name, 'views': views, 'note': note}
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            rows.append(row)
            if CASES[name][1]:
                import torch._dynamo
                torch._dynamo.reset()   # free the compiled graphs before the next mode
    finally:
        signal.signal(signal.SIGALRM, previous)
    name = torch.cuda.get_device_name(device) if cuda else 'CPU smoke test, tiny model'
    columns = ('case', 'views', 'forward_p50_ms', 'forward_p99_ms', 'processor_p50_ms',
               'total_p50_ms', 'total_p99_ms', 'first_call_s', 'peak_gib', 'reference_ms',
               'note')
    print_table(f'Qwen2.5-VL-3B random weights, {dtype}, {args.attn}, {name}, '
                f'{args.width}x{args.height}, {args.runs} runs, weights {weights_gib:.2f} GiB, '
                f'built in {build_s:.0f} s, whole run {time.monotonic() - start:.0f} s '
                f'(budget {args.budget_s:.0f} s)',
                [{c: row.get(c, '') for c in columns} for row in rows])
    return {'device': name, 'attn': args.attn, 'dtype': str(dtype), 'weights_gib': weights_gib,
            'build_s': build_s, 'budget_s': args.budget_s,
            'compile_backend': args.compile_backend, 'results': rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--dry-run', action='store_true',
                        help='no GPU: build the config, count parameters and tokens only')
    parser.add_argument('--views', type=int, nargs='+', default=[1, 5])
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=360)
    parser.add_argument('--runs', type=int, default=20)
    parser.add_argument('--warmup', type=int, default=3,
                        help='untimed runs after the first call (which compiles)')
    parser.add_argument('--attn', default='sdpa', choices=('sdpa', 'eager', 'flash_attention_2'))
    parser.add_argument('--cases', nargs='+', default=list(CASES), choices=list(CASES),
                        help='cases to run, in this order (default: all)')
    parser.add_argument('--budget-s', type=float, default=240.0,
                        help='time for the whole run including the model build [s]')
    parser.add_argument('--compile-backend', default=None,
                        help='torch.compile backend (default inductor; eager with --smoke-cpu)')
    parser.add_argument('--smoke-cpu', action='store_true',
                        help='check the timing code on the CPU with the tiny model (no GPU)')
    args = parser.parse_args(argv)
    args.compile_backend = args.compile_backend or ('eager' if args.smoke_cpu else 'inductor')

    import torch
    if args.smoke_cpu:
        write_json('vlm_gpu_smoke', {'smoke': timed_run(args, smoke_cpu=True)})
        return 0
    summary = {'dry_run': dry_run(args)}
    if args.dry_run:
        write_json('vlm_gpu_dry_run', summary)
        return 0
    if not torch.cuda.is_available():
        print('no CUDA GPU: run with --dry-run, or on a machine with a GPU')
        return 2
    summary.update(timed_run(args))
    write_json('vlm_gpu', summary)
    return 0


if __name__ == '__main__':
    sys.exit(main())
