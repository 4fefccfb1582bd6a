"""Recorded bags to one LeRobotDataset: episodes, their frames, the files, and a record of both.

Each bag is one episode, or, with a sim_cell episode log, one per logged episode that overlaps
it (core/train/split.py, as training cuts them). Every bag must carry the same views and the
same state, wrench and action layouts as the first. Beside LeRobot's files the export writes
meta/vla_insertion.json: the options, and for every episode its bag, its first and last frame's
header stamp [ns] (frame k stands for start_stamp_ns + k / fps), the frames each view repeated or
skipped, the oldest value each stream gave a frame [ms]; the episodes that had no frame; the
messages left out by cause. LeRobot and the trainers ignore that file.

The dataset is written into `<root>.partial` and renamed to `root` once complete, so a failed
or interrupted export never leaves a folder that looks like a dataset.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
import json
import math
from pathlib import Path
import shutil
import time

from vla_insertion.core.export.lerobot import LeRobotWriter
from vla_insertion.core.export.options import ExportError, ExportOptions
from vla_insertion.core.export.sampling import load_streams, read_frames, sample_episode
from vla_insertion.core.train.split import bag_episodes, intervals_from_episode_log

RECORD = 'meta/vla_insertion.json'      # the export's own record, beside LeRobot's metadata


@dataclass
class ExportReport:
    """What an export wrote, and what it could not."""

    root: Path
    info: dict                     # meta/info.json
    episodes: list[dict]           # per written episode: source, stamps, frames, repeats, ages
    skipped: list[dict]            # episodes without a frame: bag, interval, reason
    left_out: dict[str, int]       # messages left out, by cause, over every bag
    seconds: float                 # wall time of the export [s]

    @property
    def frames(self) -> int:
        return int(self.info['total_frames'])


def _ns(t_s: float) -> int | None:
    return int(round(t_s * 1e9)) if math.isfinite(t_s) else None


def _finite(t_s: float) -> float | None:
    return t_s if math.isfinite(t_s) else None


def export_dataset(bags: Sequence[str | Path], root: str | Path, options: ExportOptions,
                   episode_log: str | Path | None = None,
                   on_episode: Callable[[dict], None] | None = None) -> ExportReport:
    """Export bags into a new (absent or empty) folder `root` as a LeRobotDataset."""
    start = time.perf_counter()
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ExportError(f'{root} exists and is not an empty folder')
    intervals = intervals_from_episode_log(episode_log) if episode_log else None
    partial = root.with_name(root.name + '.partial')
    shutil.rmtree(partial, ignore_errors=True)       # what an interrupted export left
    try:
        info, episodes, skipped, left_out = _export(bags, partial, options, intervals,
                                                    on_episode)
        (partial / RECORD).write_text(json.dumps({
            'exporter': 'vla_insertion export_lerobot', 'options': asdict(options),
            'episode_log': str(episode_log) if episode_log else None, 'episodes': episodes,
            'skipped': skipped, 'left_out': left_out}, indent=2) + '\n', encoding='utf-8')
        if root.exists():
            root.rmdir()
        partial.rename(root)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return ExportReport(root, info, episodes, skipped, left_out, time.perf_counter() - start)


def _export(bags: Sequence[str | Path], root: Path, options: ExportOptions,
            intervals: list[tuple[float, float]] | None,
            on_episode: Callable[[dict], None] | None) -> tuple[dict, list, list, dict]:
    views, writer = options.views, None
    episodes, skipped, left_out = [], [], Counter()
    for path in bags:
        streams = load_streams(path, options, views)
        views = tuple(streams.cameras)               # the first bag's views, for every bag
        left_out.update(streams.left_out)
        names = {'observation.state': streams.state.names,
                 'observation.wrench': streams.wrench.names, 'action': streams.action.names}
        if writer is None:
            writer = LeRobotWriter(root, options, names)
        elif names != writer.names:
            raise ExportError(f"{path}: columns {names} differ from the first bag's "
                              f'{writer.names}')
        for episode in bag_episodes(str(path), intervals, streams.span_s):
            samples = sample_episode(streams, options.fps, _ns(episode.start_s),
                                     _ns(episode.end_s))
            if samples is None:
                skipped.append({'bag': str(path), 'bag_episode': episode.index,
                                'start_s': _finite(episode.start_s),
                                'end_s': _finite(episode.end_s),
                                'reason': 'no frame time at which every stream has a value'})
                continue
            row = writer.add_episode(samples, read_frames(streams, samples))
            record = {'episode_index': row['episode_index'], 'bag': str(path),
                      'bag_episode': episode.index,
                      'start_stamp_ns': int(samples.stamps_ns[0]),
                      'end_stamp_ns': int(samples.stamps_ns[-1]), 'frames': len(samples),
                      'repeated': {v: samples.repeated(v) for v in samples.frames},
                      'skipped': {v: samples.skipped(v) for v in samples.frames},
                      'max_age_ms': samples.max_age_ms}
            episodes.append(record)
            if on_episode is not None:
                on_episode(record)
    if writer is None or not writer.episodes:
        raise ExportError('no episode has a frame at which every stream has a value '
                          f'({len(skipped)} episode(s) skipped)')
    return writer.finish(), episodes, skipped, dict(left_out)
