"""Benchmark: export throughput of export_lerobot (recorded bags -> LeRobotDataset).

Records demonstration episodes of the in-process closed loop (the topics of a live recording:
cameras as JPEG, joints and commands at 100 Hz, sensor windows), by default the cell's 5 views
at 640 x 360 and 10 FPS, then times:

    read      the bags read and sampled on the frame grid, every frame's JPEGs read back
    decode    those JPEGs decoded to RGB (PIL), once per capture
    export    the whole export (read, decode, encode, stats, parquet, metadata), per format
              and codec, after an untimed warm-up export per codec

Reported: dataset frames per second of wall time (one frame = every view's image + state,
wrench, action) and images per second, the CPU time of the process (the encoders' threads
included) and frames per CPU second, which a shared machine disturbs less, the dataset's size,
and the time per stage. Single-threaded Python; libx264 and libsvtav1 use their own threads.

    python benchmarks/bench_export_lerobot.py
    python benchmarks/bench_export_lerobot.py --episodes 4 --codecs h264 --formats v3.0
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
import sys
import tempfile
import time

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'benchmarks'))
from report import print_table, write_json  # noqa: E402

from vla_insertion.core.data import DEFAULT_VIEWS  # noqa: E402, I100
from vla_insertion.core.export import export_dataset, ExportOptions  # noqa: E402
from vla_insertion.core.export.sampling import (  # noqa: E402
    load_streams, read_frames, sample_episode)
from vla_insertion.core.export.video import rgb_from_image  # noqa: E402
from vla_insertion.core.train.demonstrations import DemoStreams, record_episodes  # noqa: E402


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob('*') if p.is_file()) / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--episodes', type=int, default=2)
    p.add_argument('--views', type=int, default=len(DEFAULT_VIEWS), help='1..5 of the cell')
    p.add_argument('--width', type=int, default=640)
    p.add_argument('--height', type=int, default=360)
    p.add_argument('--fps', type=int, default=10, help='camera and dataset rate [Hz]')
    p.add_argument('--formats', nargs='+', default=['v3.0', 'v2.1'])
    p.add_argument('--codecs', nargs='+', default=['h264', 'av1'])
    args = p.parse_args()
    views = DEFAULT_VIEWS[:args.views]
    with tempfile.TemporaryDirectory(prefix='bench_export_') as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        manifest = record_episodes(tmp / 'bags', args.episodes, DemoStreams(
            views, width=args.width, height=args.height, camera_fps=float(args.fps)), seed=1,
            keep_failures=True)
        record_s = time.perf_counter() - t
        bags = [tmp / 'bags' / e['bag'] for e in manifest]

        options = ExportOptions(task='benchmark', fps=args.fps)
        t = time.perf_counter()
        images = []
        for path in bags:
            streams = load_streams(path, options)
            samples = sample_episode(streams, args.fps)
            images += [data for frames in read_frames(streams, samples).values()
                       for data in frames]
        read_s = time.perf_counter() - t
        unique = list({id(d): d for d in images}.values())
        t = time.perf_counter()
        for data in unique:
            rgb_from_image(data)
        decode_s = time.perf_counter() - t

        os.environ.setdefault('SVT_LOG', '2')          # libsvtav1: no configuration dump
        for codec in args.codecs:                      # warm-up (imports, encoder start), untimed
            export_dataset(bags[:1], tmp / f'warmup_{codec}', ExportOptions(
                task='benchmark', fps=args.fps, vcodec=codec))
        rows = []
        for version in args.formats:
            for codec in args.codecs:
                out = tmp / f'{version}_{codec}'
                cpu = time.process_time()
                report = export_dataset(bags, out, ExportOptions(
                    task='benchmark', version=version, fps=args.fps, vcodec=codec))
                cpu = time.process_time() - cpu
                rows.append({'format': version, 'codec': codec, 'views': len(views),
                             'size': f'{args.width}x{args.height}',
                             'episodes': report.info['total_episodes'],
                             'frames': report.frames, 'images': report.frames * len(views),
                             'seconds': report.seconds,
                             'frames_per_s': report.frames / report.seconds,
                             'images_per_s': report.frames * len(views) / report.seconds,
                             'cpu_s': cpu, 'frames_per_cpu_s': report.frames / cpu,
                             'dataset_mb': folder_mb(out)})
        frames = rows[0]['frames'] if rows else 0
        stages = [{'stage': 'record (in-process sim)', 'seconds': record_s, 'rate': '-'},
                  {'stage': 'read + sample bags', 'seconds': read_s,
                   'rate': f'{frames / read_s:.1f} frames/s'},
                  {'stage': f'decode {len(unique)} JPEGs', 'seconds': decode_s,
                   'rate': f'{len(unique) / decode_s:.1f} images/s'}]
    print_table(f'export_lerobot: {args.episodes} episodes, {len(views)} views '
                f'{args.width}x{args.height}, {args.fps} FPS', rows)
    print_table('stages (once, before the exports)', stages)
    write_json('bench_export_lerobot', {'args': vars(args), 'results': rows, 'stages': stages})


if __name__ == '__main__':
    main()
