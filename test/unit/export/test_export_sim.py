"""A recorded sim session exported to LeRobotDataset v3.0 and v2.1, read back (pyarrow, PyAV).

The session: two demonstration episodes of the in-process closed loop (core/train/demonstrations:
the reference through the real executor on the sim cell), one bag each, with the topics a live
recording has. What the export should hold is worked out here from the bags' messages directly,
then compared with what the files hold: every required metadata field, every frame's state,
wrench and action equal to the newest message at that frame's stamp, every video's frame count,
timestamps and pixels, the episode boundaries and the statistics.
"""
from __future__ import annotations

import bisect
import io
import json
import math
from pathlib import Path

import av
import numpy as np
from PIL import Image
import pyarrow.parquet as pq
import pytest

from vla_insertion.core import bag, topics
from vla_insertion.core.config import VlmConfig
from vla_insertion.core.export import export_dataset, ExportOptions, RECORD
from vla_insertion.core.params import load_config
from vla_insertion.core.train.demonstrations import DemoStreams, record_episodes
from vla_insertion.tools import export_lerobot

pytestmark = pytest.mark.slow           # records two sim episodes (a few seconds of CPU)

ROOT = Path(__file__).resolve().parents[3]
VIEWS = ('zed_1', 'oak')
FPS = 10
TASK = 'Insert the peg into the hole.'
PSNR_FLOOR_DB = 30.0                    # h264 at crf 23 against the recorded JPEGs
V3_INFO = {'codebase_version', 'robot_type', 'total_episodes', 'total_frames', 'total_tasks',
           'chunks_size', 'data_files_size_in_mb', 'video_files_size_in_mb', 'fps', 'splits',
           'data_path', 'video_path', 'features'}
V21_INFO = {'codebase_version', 'robot_type', 'total_episodes', 'total_frames', 'total_tasks',
            'total_videos', 'total_chunks', 'chunks_size', 'fps', 'splits', 'data_path',
            'video_path', 'features'}
INDEX_COLUMNS = {'timestamp': 'float32', 'frame_index': 'int64', 'episode_index': 'int64',
                 'index': 'int64', 'task_index': 'int64'}
STATS = {'min', 'max', 'mean', 'std', 'count', 'q01', 'q10', 'q50', 'q90', 'q99'}


@pytest.fixture(scope='module')
def session(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp('session')
    manifest = record_episodes(out, 2, DemoStreams(VIEWS, width=160, height=96, camera_fps=FPS),
                               seed=3, keep_failures=True)
    return [out / e['bag'] for e in manifest]


class Truth:
    """A bag's streams as plain sorted lists, read here without the exporter's code."""

    def __init__(self, path: Path) -> None:
        self.joints, self.windows, self.commands = [], [], []
        self.frames = {v: [] for v in VIEWS}
        for topic, _log, msg in bag.read_messages(path):
            stamp = bag.header_stamp_ns(msg)
            entry = topics.find(topic)
            if entry is topics.JOINT_STATES:
                names = list(msg.name)
                pos = dict(zip(names, msg.position))
                self.joints.append((stamp, [pos[n] for n in names if n != 'gripper']
                                    + [pos['gripper']]))
            elif entry is topics.SENSOR_WINDOW:
                rows = np.asarray(msg.data).reshape(msg.num_samples, msg.num_channels)
                self.windows.append((stamp, rows[-10:].ravel()))
            elif entry is topics.COMMAND and msg.sent:
                self.commands.append((stamp, list(msg.positions) + [msg.gripper]))
            elif entry is topics.CAMERAS:
                self.frames[topics.view_of(topic)].append((stamp, bytes(msg.data)))
        for items in (self.joints, self.windows, self.commands, *self.frames.values()):
            items.sort(key=lambda item: item[0])

    @staticmethod
    def at(items: list, stamp: int):
        i = bisect.bisect_right([s for s, _ in items], stamp) - 1
        assert i >= 0, f'nothing at or before {stamp}'
        return items[i][1]

    def episode_bounds(self) -> tuple[int, int]:
        """Return the first and last frame stamp: the grid's rule, from the lists."""
        streams = [self.joints, self.windows, self.commands, *self.frames.values()]
        begin = max(s[0][0] for s in streams)
        end = min(s[-1][0] for s in streams)
        first = next(s for s, _ in self.frames[VIEWS[0]] if s >= begin)
        return first, first + (end - first) * FPS // 10**9 * 10**9 // FPS


@pytest.fixture(scope='module')
def truths(session) -> list[Truth]:
    return [Truth(p) for p in session]


@pytest.fixture(scope='module', params=['v3.0', 'v2.1'])
def exported(request, session, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param) / 'dataset'
    report = export_dataset(session, root, ExportOptions(task=TASK, version=request.param,
                                                         fps=FPS))
    return request.param, root, report


def rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def read_layout(version: str, root: Path) -> tuple[dict, list[dict], list, dict]:
    """Return info, episode rows, data rows (as dicts) and tasks, per the format."""
    info = json.loads((root / 'meta' / 'info.json').read_text())
    assert info['codebase_version'] == version
    assert set(info) >= (V3_INFO if version == 'v3.0' else V21_INFO)
    if version == 'v3.0':
        episodes = pq.read_table(root / 'meta/episodes/chunk-000/file-000.parquet').to_pylist()
        files = sorted({(e['data/chunk_index'], e['data/file_index']) for e in episodes})
        rows = [r for c, f in files for r in pq.read_table(root / info['data_path'].format(
            chunk_index=c, file_index=f)).to_pylist()]
        tasks_file = pq.ParquetFile(root / 'meta' / 'tasks.parquet')
        pandas = json.loads(tasks_file.schema_arrow.metadata[b'pandas'])
        assert pandas['index_columns'] == ['task']          # pandas reads `task` as the index
        tasks = {r['task_index']: r['task'] for r in tasks_file.read().to_pylist()}
    else:
        lines = (root / 'meta' / 'episodes.jsonl').read_text().splitlines()
        episodes = [json.loads(line) for line in lines]
        rows = [r for e in episodes for r in pq.read_table(root / info['data_path'].format(
            episode_chunk=e['episode_index'] // info['chunks_size'],
            episode_index=e['episode_index'])).to_pylist()]
        tasks = {t['task_index']: t['task'] for t in map(
            json.loads, (root / 'meta' / 'tasks.jsonl').read_text().splitlines())}
    return info, episodes, rows, tasks


def video_frames(version: str, root: Path, info: dict, episode: dict, view: str
                 ) -> list[tuple[float, np.ndarray]]:
    """Return (time in the episode [s], RGB) of an episode's frames of one view, by PyAV."""
    key = f'observation.images.{view}'
    if version == 'v3.0':
        path = root / info['video_path'].format(video_key=key,
                                                chunk_index=episode[f'videos/{key}/chunk_index'],
                                                file_index=episode[f'videos/{key}/file_index'])
        start, stop = episode[f'videos/{key}/from_timestamp'], \
            episode[f'videos/{key}/to_timestamp']
    else:
        path = root / info['video_path'].format(
            episode_chunk=episode['episode_index'] // info['chunks_size'], video_key=key,
            episode_index=episode['episode_index'])
        start, stop = 0.0, math.inf
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == 'h264' and stream.pix_fmt == 'yuv420p'
        assert int(stream.base_rate) == FPS
        return [(frame.time - start, frame.to_ndarray(format='rgb24'))
                for frame in container.decode(stream)
                if start - 1e-4 <= frame.time < stop - 1e-4]


def test_export_reads_back_as_the_bags_say(exported, session, truths):
    version, root, report = exported
    info, episodes, rows, tasks = read_layout(version, root)
    record = json.loads((root / RECORD).read_text())

    # info and features: every required field, our columns with their names
    features = info['features']
    assert info['fps'] == FPS and info['total_tasks'] == 1 and tasks == {0: TASK}
    assert info['total_episodes'] == 2 == len(episodes)
    assert info['total_frames'] == len(rows) == sum(e['length'] for e in episodes)
    assert info['splits'] == {'train': '0:2'}
    for key, dtype in INDEX_COLUMNS.items():
        assert features[key] == {'dtype': dtype, 'shape': [1], 'names': None}
    assert features['observation.state']['names'] == [f'joint_{i}' for i in range(1, 7)] + \
        ['gripper']
    assert features['action']['shape'] == [7] and features['observation.wrench']['shape'] == [70]
    for view in VIEWS:
        video = features[f'observation.images.{view}']
        assert video['dtype'] == 'video' and video['shape'] == [96, 160, 3]
        assert video['names'] == ['height', 'width', 'channels']
        assert video['info']['video.codec'] == 'h264' and video['info']['video.fps'] == FPS
    if version == 'v2.1':
        assert info['total_videos'] == 4 and info['total_chunks'] == 1
        modality = json.loads((root / 'meta' / 'modality.json').read_text())
        assert modality['state']['gripper'] == {'start': 6, 'end': 7}
        assert modality['video']['oak'] == {'original_key': 'observation.images.oak'}
        assert all(r['annotation.human.action.task_description'] == 0 for r in rows)

    # rows: indices and timestamps as LeRobot's loader checks them
    assert [r['index'] for r in rows] == list(range(len(rows)))
    assert all(r['task_index'] == 0 for r in rows)
    stamps_of = {}
    for e, (episode, source, truth) in enumerate(zip(episodes, record['episodes'], truths)):
        assert episode['episode_index'] == e and episode['tasks'] == [TASK]
        mine = [r for r in rows if r['episode_index'] == e]
        n = episode['length']
        assert len(mine) == n and [r['frame_index'] for r in mine] == list(range(n))
        assert [r['timestamp'] for r in mine] == [np.float32(k / FPS) for k in range(n)]
        if version == 'v3.0':
            assert (episode['dataset_from_index'], episode['dataset_to_index']) == \
                (mine[0]['index'], mine[-1]['index'] + 1)
            assert (episode['meta/episodes/chunk_index'],
                    episode['meta/episodes/file_index']) == (0, 0)
        # episode boundaries: one episode per bag, on the grid the bag's streams allow
        assert source['bag'] == str(session[e])
        assert (source['start_stamp_ns'], source['end_stamp_ns']) == truth.episode_bounds()
        stamps = [source['start_stamp_ns'] + round(k * 1e9 / FPS) for k in range(n)]
        stamps_of[e] = stamps
        # every frame's values are the bag's newest at the frame's stamp
        for row, stamp in zip(mine, stamps):
            assert row['observation.state'] == list(np.float32(truth.at(truth.joints, stamp)))
            assert row['observation.wrench'] == list(np.float32(truth.at(truth.windows, stamp)))
            assert row['action'] == list(np.float32(truth.at(truth.commands, stamp)))
        # every view's video: one frame per row, at its timestamp, showing the frame at stamp
        for view in VIEWS:
            frames = video_frames(version, root, info, episode, view)
            assert len(frames) == n
            for k, (t, image) in enumerate(frames):
                assert t == pytest.approx(k / FPS, abs=1e-4)
                expected = rgb(truth.at(truth.frames[view], stamps[k]))
                assert psnr_db(image, expected) > PSNR_FLOOR_DB, (view, e, k)

    # statistics: over every frame, as the bags give them
    stats = json.loads((root / 'meta' / 'stats.json').read_text())
    assert set(stats) == set(features)
    for key, feature in stats.items():
        assert set(feature) == STATS, key
    states = np.array([np.float32(truth.at(truth.joints, s))
                       for truth, e in zip(truths, stamps_of) for s in stamps_of[e]])
    np.testing.assert_allclose(stats['observation.state']['mean'], states.mean(axis=0),
                               rtol=1e-6, atol=1e-7)
    assert stats['observation.state']['min'] == list(states.min(axis=0).astype(float))
    assert stats['observation.state']['count'] == [len(rows)]
    pixels = np.concatenate([rgb(truths[e].at(truths[e].frames['oak'], s)).reshape(-1, 3)
                             for e in stamps_of for s in stamps_of[e]]) / 255.0
    np.testing.assert_allclose(np.ravel(stats['observation.images.oak']['mean']),
                               pixels.mean(axis=0), rtol=1e-9)
    assert np.shape(stats['observation.images.oak']['std']) == (3, 1, 1)
    assert stats['timestamp']['max'] == [pytest.approx((max(e['length'] for e in episodes)
                                                        - 1) / FPS)]
    # per episode too: v3.0 as stats/<feature>/<statistic> columns, v2.1 as JSON lines
    if version == 'v3.0':
        first = episodes[0]['stats/observation.state/max']
    else:
        lines = (root / 'meta' / 'episodes_stats.jsonl').read_text().splitlines()
        first = json.loads(lines[0])['stats']['observation.state']['max']
    n0 = episodes[0]['length']
    assert first == list(states[:n0].max(axis=0).astype(float))
    # the record says what was left out: previews before the executor had a robot state
    assert set(record['left_out']) <= {'command_not_sent', 'command_invalid'}
    assert report.frames == len(rows) and report.skipped == []


def test_tool_exports_with_the_params_file_task(session, tmp_path):
    params = ROOT / 'config' / 'vla_insertion.yaml'
    out = tmp_path / 'cli'
    code = export_lerobot.main([*map(str, session), '-o', str(out), '--format', 'v2.1',
                                '--action', 'chunk', '--wrench', 'summary', '--views', 'oak',
                                '--params-file', str(params), '-q'])
    assert code == 0
    info = json.loads((out / 'meta' / 'info.json').read_text())
    assert info['features']['observation.wrench']['shape'] == [21]     # mean, min, max x 7
    assert [k for k in info['features'] if k.startswith('observation.images.')] == \
        ['observation.images.oak']
    task = json.loads((out / 'meta' / 'tasks.jsonl').read_text().splitlines()[0])['task']
    assert task == load_config(VlmConfig, 'vlm_node', params).instruction
    assert not (tmp_path / 'cli.partial').exists()
    # an existing dataset is never overwritten
    assert export_lerobot.main([str(session[0]), '-o', str(out), '-q']) == 1
    assert json.loads((out / 'meta' / 'info.json').read_text()) == info
