"""export_lerobot: recorded bags to a LeRobotDataset (v3.0, or v2.1 for openpi and GR00T).

    export_lerobot artifacts/demos/episode_* -o artifacts/lerobot/insertion
    export_lerobot session_bag --episode-log episodes.jsonl --format v2.1 -o out_v21 \
        --fps 10 --action chunk --wrench summary

One episode per bag, or one per episode of a sim_cell `--episode-log`. Every frame is sampled
at --fps on the recorded capture-stamp grid (core/export/sampling.py): observation.state (6
joints + gripper), observation.wrench (the sensor window's newest --wrench-samples rows, or its
per-channel mean/min/max with --wrench summary), action (the command the executor sent, or the
first action of the newest chunk with --action chunk), one MP4 video per view
(observation.images.<view>, decoded from the recorded JPEGs and encoded with PyAV), and the task
string (--task, default: the params file's vlm_node instruction). The output folder must be new
or empty; docs/evaluation.md shows what to run next with LeRobot, openpi and GR00T.
Exit status: 0 written, 1 the bags cannot be exported as asked, 2 bad arguments.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from vla_insertion.core import bag
from vla_insertion.core.config import ConfigError, VlmConfig
from vla_insertion.core.export import (
    ACTIONS, CODECS, export_dataset, ExportError, ExportOptions, FORMATS, RECORD,
    WRENCH_MODES)
from vla_insertion.core.params import load_config

log = logging.getLogger('export_lerobot')


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog='export_lerobot', description=__doc__.split('\n\n')[0])
    p.add_argument('bags', nargs='+', help='bag folders, one episode each unless --episode-log')
    p.add_argument('-o', '--output', required=True, help='dataset folder to create (new or empty)')
    p.add_argument('--format', choices=FORMATS, default='v3.0',
                   help='LeRobotDataset version (v2.1: what openpi and GR00T read)')
    p.add_argument('--fps', type=int, default=10, help='frames per second of the dataset [Hz]')
    p.add_argument('--views', nargs='+', help='camera views to export (default: every '
                   'recorded view)')
    p.add_argument('--action', choices=ACTIONS, default='command',
                   help="command: what the executor sent; chunk: the newest chunk's first action")
    p.add_argument('--wrench', choices=WRENCH_MODES, default='newest',
                   help="newest: the window's newest rows; summary: mean, min, max per channel")
    p.add_argument('--wrench-samples', type=int, default=10,
                   help='rows of the sensor window per frame with --wrench newest [samples]')
    p.add_argument('--episode-log', default='', help='sim_cell episode log (JSON lines) cutting '
                   'the bags into episodes')
    p.add_argument('--task', help="the task string (default: the params file's vlm_node "
                   'instruction)')
    p.add_argument('--params-file', default=None, help='ROS params YAML for the default task')
    p.add_argument('--vcodec', choices=tuple(CODECS), default='h264',
                   help='video codec (yuv420p): h264 (libx264) or av1 (libsvtav1)')
    p.add_argument('--crf', type=int, default=None, help='constant rate factor (default: 23 '
                   'for h264, 30 for av1; lower is better quality)')
    p.add_argument('--robot-type', default=None, help='info.json robot_type')
    p.add_argument('-q', '--quiet', action='store_true', help='no line per episode')
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault('SVT_LOG', '2')    # libsvtav1: warnings, not its configuration dump
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format='[export_lerobot] %(message)s')
    try:
        task = args.task or load_config(VlmConfig, 'vlm_node', args.params_file).instruction
        options = ExportOptions(
            task=task, version=args.format, fps=args.fps,
            views=tuple(args.views) if args.views else None, action=args.action,
            wrench=args.wrench, wrench_samples=args.wrench_samples, vcodec=args.vcodec,
            crf=args.crf, robot_type=args.robot_type)
    except ConfigError as exc:
        print(f'export_lerobot: {exc}', file=sys.stderr)
        return 2

    def said(record: dict) -> None:
        repeated = sum(record['repeated'].values())
        log.info(f'episode {record["episode_index"]}: {record["frames"]} frames from '
                 f'{record["bag"]}#{record["bag_episode"]}'
                 + (f', {repeated} repeated image(s)' if repeated else ''))
    try:
        report = export_dataset(args.bags, args.output, options,
                                episode_log=args.episode_log or None, on_episode=said)
    except ConfigError as exc:                   # a bad episode log
        print(f'export_lerobot: {exc}', file=sys.stderr)
        return 2
    except (ExportError, bag.BagError) as exc:
        print(f'export_lerobot: {exc}', file=sys.stderr)
        return 1
    for skipped in report.skipped:
        log.warning(f'skipped {skipped["bag"]}#{skipped["bag_episode"]}: {skipped["reason"]}')
    if report.left_out:
        log.info(f'messages left out: {report.left_out}')
    print(f'{report.info["total_episodes"]} episode(s), {report.frames} frames in {args.output} '
          f'(LeRobotDataset {options.version}, {report.frames / report.seconds:.1f} frames/s); '
          f'sources in {RECORD}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
