"""The two on-disk layouts (core/export/lerobot.py) on synthetic episodes: files, chunks, tasks."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from vla_insertion.core.export import ExportError, ExportOptions
from vla_insertion.core.export.lerobot import _Slot, LeRobotWriter, tasks_table
from vla_insertion.core.export.sampling import EpisodeSamples

NAMES = {'observation.state': ('j1', 'gripper'),
         'observation.wrench': tuple(f'w{i}' for i in range(70)),
         'action': ('j1', 'gripper')}


def episode(n: int, seed: int) -> EpisodeSamples:
    rng = np.random.default_rng(seed)           # incompressible: file sizes follow row counts
    return EpisodeSamples(
        stamps_ns=np.arange(n, dtype=np.int64) * 10**8, state=rng.random((n, 2), np.float32),
        wrench=rng.random((n, 70), np.float32), action=rng.random((n, 2), np.float32),
        frames={}, max_age_ms={})


def test_v3_starts_new_files_and_chunks_at_the_limits(tmp_path):
    options = ExportOptions(task='t', chunks_size=2, data_files_size_in_mb=1)
    writer = LeRobotWriter(tmp_path, options, NAMES)
    rows = [writer.add_episode(episode(1800, k), {}) for k in range(5)]     # ~0.6 MB each
    info = writer.finish()
    # two episodes fill a file past 1 MB; the third file is the first of chunk 1
    assert [(r['data/chunk_index'], r['data/file_index']) for r in rows] == \
        [(0, 0), (0, 0), (0, 1), (0, 1), (1, 0)]
    assert info['video_path'] is None and info['total_frames'] == 9000
    episodes = pq.read_table(tmp_path / 'meta/episodes/chunk-000/file-000.parquet').to_pylist()
    for e in episodes:
        table = pq.read_table(tmp_path / info['data_path'].format(
            chunk_index=e['data/chunk_index'], file_index=e['data/file_index'])).to_pylist()
        mine = [r for r in table if r['episode_index'] == e['episode_index']]
        assert [r['index'] for r in mine] == list(range(e['dataset_from_index'],
                                                        e['dataset_to_index']))
        assert len(mine) == e['length'] == 1800


def test_v21_has_one_file_per_episode_in_its_chunk(tmp_path):
    options = ExportOptions(task='t', version='v2.1', chunks_size=2)
    writer = LeRobotWriter(tmp_path, options, NAMES)
    for k in range(3):
        writer.add_episode(episode(5, k), {})
    info = writer.finish()
    assert info['total_chunks'] == 2 and info['total_videos'] == 0
    assert (tmp_path / 'data/chunk-001/episode_000002.parquet').is_file()
    lines = (tmp_path / 'meta' / 'episodes.jsonl').read_text().splitlines()
    assert json.loads(lines[2]) == {'episode_index': 2, 'tasks': ['t'], 'length': 5}
    assert json.loads((tmp_path / 'meta' / 'tasks.jsonl').read_text()) == \
        {'task_index': 0, 'task': 't'}
    stats = [json.loads(line) for line in
             (tmp_path / 'meta' / 'episodes_stats.jsonl').read_text().splitlines()]
    assert [s['episode_index'] for s in stats] == [0, 1, 2]
    assert stats[1]['stats']['index']['min'] == [5.0]


def test_chunk_folders_hold_chunks_size_files():
    slot = _Slot()
    seen = []
    for _ in range(5):
        seen.append((slot.chunk, slot.file))
        slot.advance(chunks_size=2)
    assert seen == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]


def test_tasks_parquet_makes_the_task_the_pandas_index():
    table = tasks_table(['a', 'b'])
    assert table.to_pylist() == [{'task_index': 0, 'task': 'a'}, {'task_index': 1, 'task': 'b'}]
    pandas = json.loads(table.schema.metadata[b'pandas'])
    assert pandas['index_columns'] == ['task']
    assert [c['name'] for c in pandas['columns']] == table.column_names


def test_a_wrong_layout_or_an_empty_export_is_refused(tmp_path):
    writer = LeRobotWriter(tmp_path, ExportOptions(task='t'), NAMES)
    with pytest.raises(ExportError, match='no episode'):
        writer.finish()
    bad = episode(3, 0)
    bad.state = np.zeros((3, 3), np.float32)
    with pytest.raises(ExportError, match='observation.state: 3 values'):
        writer.add_episode(bad, {})
