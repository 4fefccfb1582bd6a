"""VLM per-stage latency on the CPU, tiny untrained model, 1 and 5 views, both preprocessings.

Stages, each p50/p99 [ms]: JPEG decode, resize to 640x360, processor (tokenizer + image
patches), forward (vision tower + language model, no LM head), reduction, publish (features ->
VLFeatures message), and the whole inference, for `preprocessing: processor` (the stock Hugging
Face processor, "before") and `preprocessing: fast` (core/vlm/preprocess.py, "after") side by
side. The two extractors run alternately on the same frames, so load changes on a shared machine
hit both alike. With the fast path the processor's bicubic resize (Pillow, on the thread pool)
is counted under resize, the rest (cached ids, pixels) under processor; `preprocess` is decode +
resize + processor, the whole cost before the forward pass. The largest feature difference
between the paths is printed too (they must agree).

VL feature age at publication = publication time - capture stamp of the newest view; cameras run
at --camera-fps, so when a run starts the newest frame of each view is between 0 and one frame
period old (drawn uniformly, as with free-running cameras), then inference and conversion add
their time.

    python benchmarks/bench_vlm.py                       # tiny model, 1 and 5 views, 1 thread
    python benchmarks/bench_vlm.py --runs 50 --threads 2 --source-size 640x360
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

STAGES = ('decode', 'resize', 'processor', 'forward', 'reduction', 'publish', 'total')
PATHS = ('processor', 'fast')          # "before" and "after"


def scene_jpeg(rng: np.random.Generator, width: int, height: int, quality: int = 90) -> bytes:
    """Return a JPEG with camera-like content: smooth shading, edges and sensor noise."""
    coarse = rng.integers(0, 256, (9, 16, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    pixels = np.asarray(image, dtype=np.int16)
    pixels[height // 3: height // 2, width // 4: width // 2] = 30       # a dark object
    pixels += rng.integers(-6, 7, pixels.shape, dtype=np.int16)          # sensor noise
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, 'JPEG',
                                                                   quality=quality)
    return buffer.getvalue()


def percentiles(values: list[float]) -> tuple[float, float]:
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def bench_views(model: str, views: tuple[str, ...], args, to_msg) -> dict:
    from vla_insertion.core.config import VlmConfig
    from vla_insertion.core.data import CameraFrame
    from vla_insertion.core.interfaces import VlmObservation
    from vla_insertion.core.vlm.extractor import VlmFeatureExtractor

    extractors = {path: VlmFeatureExtractor(VlmConfig(
        model=model, device='cpu', view_names=views, torch_threads=args.threads, warmup_runs=0,
        preprocessing=path, preprocess_threads=args.preprocess_threads)) for path in args.paths}
    rng = np.random.default_rng(0)
    width, height = args.source_size
    images = [scene_jpeg(rng, width, height) for _ in range(8)]
    period = 1.0 / args.camera_fps
    samples = {path: {s: [] for s in (*STAGES, 'preprocess', 'feature_age')}
               for path in args.paths}
    max_difference = 0.0
    for run in range(args.warmup + args.runs):
        outputs = {}
        for path, extractor in extractors.items():     # alternately: same load for both
            start = time.time()
            frames = {v: CameraFrame(view=v, stamp_s=start - rng.uniform(0.0, period),
                                     data=images[(run + i) % len(images)])
                      for i, v in enumerate(views)}
            features = extractor.infer(VlmObservation(frames=frames, sequence=run + 1))
            t = time.perf_counter()
            if to_msg is not None:
                to_msg(features)
            publish_ms = (time.perf_counter() - t) * 1e3
            age_s = time.time() - features.stamp_s
            outputs[path] = features.features
            if run < args.warmup:
                continue
            timings, stage = extractor.last_timings, samples[path]
            for name in STAGES[:5]:
                stage[name].append(timings[f'{name}_ms'])
            stage['preprocess'].append(sum(timings[f'{n}_ms']
                                           for n in ('decode', 'resize', 'processor')))
            stage['publish'].append(publish_ms)
            stage['total'].append(timings['total_ms'] + publish_ms)
            stage['feature_age'].append(age_s * 1e3)
        if len(outputs) == 2:
            max_difference = max(max_difference,
                                 float(np.abs(outputs['fast'] - outputs['processor']).max()))
    for extractor in extractors.values():
        extractor.close()
    return {'views': len(views), 'visual_tokens': 299 * len(views),
            'feature_shape': list(features.features.shape),
            'max_feature_difference': max_difference,
            'stages_ms': {path: {k: dict(zip(('p50', 'p99'), percentiles(v)))
                                 for k, v in stage.items()} for path, stage in samples.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='',
                        help='model folder (default: write/reuse the tiny model in '
                             'artifacts/models/tiny-qwen2.5-vl)')
    parser.add_argument('--views', type=int, nargs='+', default=[1, 5],
                        help='numbers of views to run (default: 1 5)')
    parser.add_argument('--runs', type=int, default=30, help='measured runs per case')
    parser.add_argument('--warmup', type=int, default=3, help='unmeasured runs first')
    parser.add_argument('--threads', type=int, default=1,
                        help='torch CPU threads (the node default is 1)')
    parser.add_argument('--preprocess-threads', type=int, default=2,
                        help='fast path: threads decoding and resizing views (node default 2)')
    parser.add_argument('--paths', nargs='+', default=list(PATHS), choices=PATHS,
                        help='preprocessing paths to compare (default: both)')
    parser.add_argument('--camera-fps', type=float, default=30.0,
                        help='camera frame rate for the feature-age model [Hz]')
    parser.add_argument('--source-size', type=lambda s: tuple(int(v) for v in s.split('x')),
                        default=(1280, 720), help='camera JPEG size WxH (default: 1280x720)')
    args = parser.parse_args(argv)

    from vla_insertion.core.vlm.model import DEFAULT_TINY_FOLDER, write_tiny_model
    root = Path(__file__).resolve().parents[1]
    model = args.model or str(write_tiny_model(root / DEFAULT_TINY_FOLDER))
    try:  # the publish stage needs the generated messages (source install/setup.bash)
        from vla_insertion.conversions import vl_features_to_msg as to_msg
    except ImportError as exc:
        print(f'publish stage skipped: {exc}')
        to_msg = None
    all_views = ('zed_1', 'zed_2', 'zed_3', 'zed_4', 'oak')
    results = [bench_views(model, all_views[:n], args, to_msg) for n in args.views]

    rows = []
    for result in results:
        stages = result['stages_ms']
        for stage in (*STAGES[:5], 'preprocess', 'publish', 'total', 'feature_age'):
            row = {'views': result['views'], 'stage': stage}
            for path in args.paths:
                row[f'{path}_p50'] = stages[path][stage]['p50']
                row[f'{path}_p99'] = stages[path][stage]['p99']
            rows.append(row)
    print_table(f'VLM stages [ms], tiny untrained model, CPU, {args.threads} torch thread(s), '
                f'fast path {args.preprocess_threads} preprocessing thread(s), '
                f'{args.source_size[0]}x{args.source_size[1]} JPEG -> 640x360, '
                f'{args.runs} runs', rows)
    for result in results:
        print(f'{result["views"]} view(s): largest feature difference fast vs processor '
              f'{result["max_feature_difference"]:.2e}')
    write_json('vlm', {'model': model, 'untrained': True, 'threads': args.threads,
                       'preprocess_threads': args.preprocess_threads, 'runs': args.runs,
                       'source_size': list(args.source_size), 'camera_fps': args.camera_fps,
                       'results': results})
    return 0


if __name__ == '__main__':
    sys.exit(main())
