"""LeRobotDataset v3.0 and v2.1 on disk, written from the format's published definition.

The layouts (LeRobot's docs `lerobot-dataset-v3`, its dataset metadata and the v2.1 -> v3.0
conversion notes; GR00T's data-preparation guide for meta/modality.json):

    v3.0 (many episodes per file)              v2.1 (one file per episode)
    meta/info.json                             meta/info.json
    meta/stats.json                            meta/stats.json, meta/episodes_stats.jsonl
    meta/tasks.parquet                         meta/tasks.jsonl
    meta/episodes/chunk-000/file-000.parquet   meta/episodes.jsonl
    data/chunk-XXX/file-XXX.parquet            data/chunk-XXX/episode_XXXXXX.parquet
    videos/<key>/chunk-XXX/file-XXX.mp4        videos/chunk-XXX/<key>/episode_XXXXXX.mp4
                                               meta/modality.json (GR00T's extension)

Every frame is one row: the vector features as fixed-size float32 lists, `timestamp` (float32,
frame_index / fps: the reader's clock within the episode, 0 at its first frame), `frame_index`,
`episode_index`, `index` (over the dataset) and `task_index` (int64); videos hold the image
features. In v3.0 an episode is a row range of a data file (`dataset_from_index` ..
`dataset_to_index`) and a time range of each view's video file (`from_timestamp` ..
`to_timestamp`, frames at from_timestamp + timestamp); a new file starts once one reaches
`data_files_size_in_mb` / `video_files_size_in_mb`, and a new chunk folder after `chunks_size`
files. In v2.1 episode e lives in chunk e // chunks_size. v2.1 also carries the column
`annotation.human.action.task_description` (the task index, which GR00T's loader reads as the
task annotation) and meta/modality.json, which names the slices of state and action and the
videos for GR00T. ROS-free (pyarrow, PyAV).
"""
from __future__ import annotations

from dataclasses import dataclass
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vla_insertion.core.export import stats as st
from vla_insertion.core.export.options import ExportError, ExportOptions, PIX_FMT
from vla_insertion.core.export.sampling import EpisodeSamples
from vla_insertion.core.export.video import rgb_from_image, VideoEncoder

CHUNK_FILE = 'chunk-{chunk_index:03d}/file-{file_index:03d}'
V30_DATA_PATH = 'data/' + CHUNK_FILE + '.parquet'
V30_VIDEO_PATH = 'videos/{video_key}/' + CHUNK_FILE + '.mp4'
V30_EPISODES_PATH = 'meta/episodes/' + CHUNK_FILE + '.parquet'
V21_DATA_PATH = 'data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet'
V21_VIDEO_PATH = 'videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4'
GR00T_TASK = 'annotation.human.action.task_description'   # v2.1: GR00T's task annotation
VECTORS = ('observation.state', 'observation.wrench', 'action')
INDEX_FEATURES = {'timestamp': 'float32', 'frame_index': 'int64', 'episode_index': 'int64',
                  'index': 'int64', 'task_index': 'int64'}


def image_key(view: str) -> str:
    return f'observation.images.{view}'


@dataclass
class _Slot:
    """A file being appended to (v3.0): where it is and what it holds so far."""

    chunk: int = 0
    file: int = 0
    frames: int = 0                # rows (data) or frames (video) written to it

    def advance(self, chunks_size: int) -> None:
        self.chunk, self.file = (self.chunk + 1, 0) if self.file + 1 == chunks_size else \
            (self.chunk, self.file + 1)
        self.frames = 0


class LeRobotWriter:
    """Write episodes of sampled frames as a LeRobotDataset (options.version) into `root`."""

    def __init__(self, root: str | Path, options: ExportOptions,
                 names: dict[str, tuple[str, ...]]) -> None:
        """`names`: what each column of observation.state, observation.wrench, action is."""
        self.root, self.options, self.names = Path(root), options, names
        self.v3 = options.version == 'v3.0'
        self.episodes: list[dict] = []           # per episode: its metadata row
        self.episode_stats: list[dict] = []      # per episode: {feature: {statistic: array}}
        self.total_frames = 0
        self._columns: dict[str, list[np.ndarray]] = {}   # every frame's values (stats.json)
        self._histograms: dict[str, st.ImageHistogram] = {}
        self._sizes: dict[str, tuple[int, int]] = {}       # view -> (height, width)
        self._codec = ''
        self._data_slot, self._data_writer = _Slot(), None
        self._video_slots: dict[str, _Slot] = {}
        self._encoders: dict[str, VideoEncoder] = {}

    # --- per episode ------------------------------------------------------------------------

    def add_episode(self, samples: EpisodeSamples, images: dict[str, list[bytes]]) -> dict:
        """Write one episode's frames, rows and videos; return its metadata row."""
        n, index = len(samples), len(self.episodes)
        columns = {
            'observation.state': samples.state, 'observation.wrench': samples.wrench,
            'action': samples.action,
            'timestamp': (np.arange(n) / self.options.fps).astype(np.float32),
            'frame_index': np.arange(n, dtype=np.int64),
            'episode_index': np.full(n, index, dtype=np.int64),
            'index': np.arange(self.total_frames, self.total_frames + n, dtype=np.int64),
            'task_index': np.zeros(n, dtype=np.int64)}
        if not self.v3:
            columns[GR00T_TASK] = columns['task_index']
        for key in VECTORS:
            if columns[key].shape[1] != len(self.names[key]):
                raise ExportError(f'{key}: {columns[key].shape[1]} values for names '
                                  f'{list(self.names[key])}')
        stats = {key: st.vector_stats(values) for key, values in columns.items()}
        row = {'episode_index': index, 'tasks': [self.options.task], 'length': n}
        row.update(self._write_rows(index, columns))
        for view in images:
            stats[image_key(view)], placed = self._write_video(index, view, images[view])
            row.update(placed)
        if self.v3:
            row['meta/episodes/chunk_index'], row['meta/episodes/file_index'] = 0, 0
        for key, values in columns.items():
            self._columns.setdefault(key, []).append(values)
        self.episodes.append(row)
        self.episode_stats.append(stats)
        self.total_frames += n
        return row

    def _write_rows(self, index: int, columns: dict[str, np.ndarray]) -> dict:
        table = pa.table({key: _arrow(values) for key, values in columns.items()})
        if not self.v3:
            path = self.root / V21_DATA_PATH.format(
                episode_chunk=index // self.options.chunks_size, episode_index=index)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, path)
            return {}
        slot = self._data_slot
        if self._data_writer is not None and \
                _size_mb(self._data_path(slot)) >= self.options.data_files_size_in_mb:
            self._data_writer.close()
            self._data_writer = None
            slot.advance(self.options.chunks_size)
        if self._data_writer is None:
            path = self._data_path(slot)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data_writer = pq.ParquetWriter(path, table.schema)
        self._data_writer.write_table(table)        # one row group per episode
        slot.frames += table.num_rows
        return {'data/chunk_index': slot.chunk, 'data/file_index': slot.file,
                'dataset_from_index': self.total_frames,
                'dataset_to_index': self.total_frames + table.num_rows}

    def _data_path(self, slot: _Slot) -> Path:
        return self.root / V30_DATA_PATH.format(chunk_index=slot.chunk, file_index=slot.file)

    def _write_video(self, index: int, view: str, images: list[bytes]
                     ) -> tuple[dict[str, np.ndarray], dict]:
        """Encode one view's frames; return their statistics and where they went."""
        key, fps = image_key(view), self.options.fps
        histogram = st.ImageHistogram()
        first = rgb_from_image(images[0])
        size = self._sizes.setdefault(view, first.shape[:2])
        if first.shape[:2] != size:
            raise ExportError(f'{view}: {first.shape[1]} x {first.shape[0]} images after '
                              f'{size[1]} x {size[0]} ones (one size per view)')
        if self.v3:
            slot = self._video_slots.setdefault(view, _Slot())
            encoder = self._encoders.get(view)
            if encoder is not None and encoder.size_mb >= self.options.video_files_size_in_mb:
                encoder.close()
                encoder = None
                slot.advance(self.options.chunks_size)
            if encoder is None:
                encoder = self._encoders[view] = self._encoder(self.root / V30_VIDEO_PATH.format(
                    video_key=key, chunk_index=slot.chunk, file_index=slot.file), size)
        else:
            encoder = self._encoder(self.root / V21_VIDEO_PATH.format(
                episode_chunk=index // self.options.chunks_size, video_key=key,
                episode_index=index), size)
        start = encoder.frames
        previous, rgb = None, first
        for data in images:
            if data is not previous:                 # a repeated capture is decoded once
                rgb = first if previous is None else rgb_from_image(data)
                previous = data
            encoder.add(rgb)
            histogram.add(rgb)
        self._codec = encoder.codec
        self._histograms.setdefault(key, st.ImageHistogram()).merge(histogram)
        if not self.v3:
            encoder.close()
            return histogram.stats(), {}
        slot.frames = encoder.frames
        return histogram.stats(), {
            f'videos/{key}/chunk_index': slot.chunk, f'videos/{key}/file_index': slot.file,
            f'videos/{key}/from_timestamp': start / fps,
            f'videos/{key}/to_timestamp': encoder.frames / fps}

    def _encoder(self, path: Path, size: tuple[int, int]) -> VideoEncoder:
        name, options = self.options.encoder
        return VideoEncoder(path, self.options.fps, size[1], size[0], name, options)

    # --- the end ----------------------------------------------------------------------------

    def finish(self) -> dict:
        """Close the files and write the metadata; return info.json's content."""
        if not self.episodes:
            raise ExportError('no episode to write')
        if self._data_writer is not None:
            self._data_writer.close()
        for encoder in self._encoders.values():
            encoder.close()
        meta = self.root / 'meta'
        meta.mkdir(parents=True, exist_ok=True)
        totals = {key: st.vector_stats(np.concatenate(parts))
                  for key, parts in self._columns.items()}
        totals.update({key: h.stats() for key, h in self._histograms.items()})
        _write_json(meta / 'stats.json', st.to_json(totals))
        info = self.info()
        if self.v3:
            rows = [{**row, **{f'stats/{key}/{name}': value for key, feature in
                               st.to_json(stats).items() for name, value in feature.items()}}
                    for row, stats in zip(self.episodes, self.episode_stats)]
            pq.write_table(pa.Table.from_pylist(rows), _mkdir(
                self.root / V30_EPISODES_PATH.format(chunk_index=0, file_index=0)))
            pq.write_table(tasks_table([self.options.task]), meta / 'tasks.parquet')
        else:
            _write_jsonl(meta / 'episodes.jsonl', self.episodes)
            _write_jsonl(meta / 'tasks.jsonl', [{'task_index': 0, 'task': self.options.task}])
            _write_jsonl(meta / 'episodes_stats.jsonl', [
                {'episode_index': row['episode_index'], 'stats': st.to_json(stats)}
                for row, stats in zip(self.episodes, self.episode_stats)])
            _write_json(meta / 'modality.json', self.modality())
        _write_json(meta / 'info.json', info)
        return info

    def features(self) -> dict[str, dict]:
        """Return info.json's features: every column and video, with dtype, shape and names."""
        features = {key: {'dtype': 'float32', 'shape': [len(self.names[key])],
                          'names': list(self.names[key])} for key in VECTORS}
        for view, (height, width) in self._sizes.items():
            features[image_key(view)] = {
                'dtype': 'video', 'shape': [height, width, 3],
                'names': ['height', 'width', 'channels'],
                'info': {'video.height': height, 'video.width': width,
                         'video.codec': self._codec, 'video.pix_fmt': PIX_FMT,
                         'video.is_depth_map': False, 'video.fps': self.options.fps,
                         'video.channels': 3, 'has_audio': False}}
        features.update({key: {'dtype': dtype, 'shape': [1], 'names': None}
                         for key, dtype in INDEX_FEATURES.items()})
        if not self.v3:
            features[GR00T_TASK] = {'dtype': 'int64', 'shape': [1], 'names': None}
        return features

    def info(self) -> dict:
        o, count = self.options, len(self.episodes)
        info = {'codebase_version': o.version, 'robot_type': o.robot_type,
                'total_episodes': count, 'total_frames': self.total_frames, 'total_tasks': 1}
        if self.v3:
            info.update({'chunks_size': o.chunks_size,
                         'data_files_size_in_mb': o.data_files_size_in_mb,
                         'video_files_size_in_mb': o.video_files_size_in_mb, 'fps': o.fps,
                         'splits': {'train': f'0:{count}'}, 'data_path': V30_DATA_PATH,
                         'video_path': V30_VIDEO_PATH if self._sizes else None})
        else:
            info.update({'total_videos': count * len(self._sizes),
                         'total_chunks': math.ceil(count / o.chunks_size),
                         'chunks_size': o.chunks_size, 'fps': o.fps,
                         'splits': {'train': f'0:{count}'}, 'data_path': V21_DATA_PATH,
                         'video_path': V21_VIDEO_PATH if self._sizes else None})
        info['features'] = self.features()
        return info

    def modality(self) -> dict:
        """Return GR00T's meta/modality.json: slices of state and action, videos, the task."""
        joints = len(self.names['observation.state']) - 1
        wrench = len(self.names['observation.wrench'])
        return {
            'state': {'joints': {'start': 0, 'end': joints},
                      'gripper': {'start': joints, 'end': joints + 1},
                      'wrench': {'start': 0, 'end': wrench,
                                 'original_key': 'observation.wrench'}},
            'action': {'joints': {'start': 0, 'end': len(self.names['action']) - 1},
                       'gripper': {'start': len(self.names['action']) - 1,
                                   'end': len(self.names['action'])}},
            'video': {view: {'original_key': image_key(view)} for view in self._sizes},
            'annotation': {GR00T_TASK.removeprefix('annotation.'): {}}}


def tasks_table(tasks: list[str]) -> pa.Table:
    """Return meta/tasks.parquet: `task_index` by `task`, the task string as pandas' index.

    LeRobot reads the file with pandas and looks tasks up by index, so the schema carries the
    pandas metadata that makes the `task` column the index.
    """
    pandas_meta = {
        'index_columns': ['task'],
        'column_indexes': [{'name': None, 'field_name': None, 'pandas_type': 'unicode',
                            'numpy_type': 'object', 'metadata': {'encoding': 'UTF-8'}}],
        'columns': [{'name': 'task_index', 'field_name': 'task_index', 'pandas_type': 'int64',
                     'numpy_type': 'int64', 'metadata': None},
                    {'name': 'task', 'field_name': 'task', 'pandas_type': 'unicode',
                     'numpy_type': 'object', 'metadata': None}],
        'creator': {'library': 'pyarrow', 'version': pa.__version__},
        'pandas_version': '2.2.3'}
    table = pa.table({'task_index': pa.array(range(len(tasks)), pa.int64()),
                      'task': pa.array(tasks, pa.string())})
    return table.replace_schema_metadata({'pandas': json.dumps(pandas_meta)})


def _arrow(values: np.ndarray) -> pa.Array:
    """Return a column: (n,) as scalars, (n, dim) as fixed-size lists of dim."""
    if values.ndim == 1:
        return pa.array(values)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def _size_mb(path: Path) -> float:
    return path.stat().st_size / 2**20 if path.exists() else 0.0


def _mkdir(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _write_json(path: Path, content) -> None:
    path.write_text(json.dumps(content, indent=4) + '\n', encoding='utf-8')


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text(''.join(json.dumps(row) + '\n' for row in rows), encoding='utf-8')
