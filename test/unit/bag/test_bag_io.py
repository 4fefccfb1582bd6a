"""Bags written with core.bag read back intact with rosbags, also after a crash."""
import json
import os
from pathlib import Path
import signal
import sqlite3
import struct
import subprocess
import sys

import numpy as np
import pytest
import yaml

from vla_insertion.core import bag
from vla_insertion.core.bag import header, make_message, stamp

T0 = 1_700_000_000_000_000_000          # ns, a plausible wall-clock epoch
TYPES = {
    'cameras/zed_1/image/compressed': 'sensor_msgs/msg/CompressedImage',
    'robot/joint_states': 'sensor_msgs/msg/JointState',
    'robot/pose': 'geometry_msgs/msg/PoseStamped',
    'sensor/window': 'vla_insertion/msg/SensorWindow',
    'vla/features': 'vla_insertion/msg/VLFeatures',
    'vla/action_chunk': 'vla_insertion/msg/ActionChunk',
    'vla/stats': 'vla_insertion/msg/NodeStats',
    '/diagnostics': 'diagnostic_msgs/msg/DiagnosticArray',
}


def sample(topic: str, i: int, stamp_ns: int):
    """Build message i of a topic with content that depends on i."""
    rng = np.random.default_rng(i)
    h = header(stamp_ns, frame_id=f'f{i}')
    msgtype = TYPES[topic]
    if msgtype.endswith('CompressedImage'):
        return make_message(msgtype, header=h, format='jpeg',
                            data=rng.integers(0, 255, 100 + i, dtype=np.uint8))
    if msgtype.endswith('JointState'):
        return make_message(msgtype, header=h, name=[f'joint_{k}' for k in range(1, 7)],
                            position=rng.standard_normal(6))
    if msgtype.endswith('PoseStamped'):
        return make_message(msgtype, header=h)
    if msgtype.endswith('SensorWindow'):
        return make_message(msgtype, header=h, sample_rate_hz=650.0, num_samples=65,
                            num_channels=7, channel_names=list('abcdefg'),
                            data=rng.standard_normal(65 * 7).astype(np.float32),
                            valid_samples=65, clock_offset_s=0.25, gap_samples=i)
    if msgtype.endswith('VLFeatures'):
        return make_message(msgtype, header=h, view_stamps=[stamp(stamp_ns - 1000)],
                            view_names=['zed_1'], sequence=i, model_id='tiny',
                            contract_hash='abc', untrained=True, num_tokens=4, feature_dim=8,
                            data=rng.standard_normal(32).astype(np.float32))
    if msgtype.endswith('ActionChunk'):
        return make_message(msgtype, header=h, dt_s=0.1, horizon=8, action_dim=7,
                            actions=rng.standard_normal(56).astype(np.float32), sequence=i,
                            feature_sequence=i // 3, reuse_index=i % 3 + 1,
                            sensor_window_stamp=stamp(stamp_ns - 5))
    if msgtype.endswith('NodeStats'):
        return make_message(msgtype, header=h, node='action_expert', rate_hz=10.0,
                            published=i)
    return make_message(msgtype, header=h, status=[make_message(
        'diagnostic_msgs/msg/DiagnosticStatus', name='n', message=f'm{i}')])


def write_bag(path: Path, storage: str, n: int = 5, **kwargs) -> list:
    written = []
    with bag.BagWriter(path, storage=storage, **kwargs) as writer:
        for topic, msgtype in TYPES.items():
            writer.add_topic(topic, msgtype, [bag.qos(reliable=True, depth=2)])
        for i in range(n):
            for k, topic in enumerate(TYPES):
                log_ns = T0 + i * 100_000_000 + k * 1000
                msg = sample(topic, i, log_ns - 7)
                writer.write_msg(topic, log_ns, msg)
                written.append((topic, log_ns, msg))
    return written


def assert_same(a, b):
    """Compare two rosbags messages field by field (numpy arrays elementwise)."""
    assert type(a).__name__ == type(b).__name__
    if hasattr(a, '__dataclass_fields__'):
        for name in a.__dataclass_fields__:
            assert_same(getattr(a, name), getattr(b, name))
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, float):
        assert np.float32(a) == np.float32(b)     # float32 fields come back widened
    else:
        assert a == b


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_every_type_round_trips(tmp_path, storage):
    written = write_bag(tmp_path / 'b', storage)
    read = list(bag.read_messages(tmp_path / 'b'))
    assert len(read) == len(written)
    for (topic, log_ns, msg), (rtopic, rlog_ns, rmsg) in zip(written, read):
        assert (rtopic, rlog_ns) == (topic, log_ns)
        assert bag.header_stamp_ns(rmsg) == log_ns - 7
        assert_same(msg, rmsg)
    info = bag.bag_info(tmp_path / 'b')
    assert info.message_count == len(written)
    assert {t: s.msgtype for t, s in info.topics.items()} == TYPES


def test_definitions_and_hashes_are_stored(tmp_path):
    write_bag(tmp_path / 'b', 'mcap', n=1)
    from rosbags.rosbag2 import Reader
    with Reader(tmp_path / 'b') as reader:
        conns = {c.topic: c for c in reader.connections}
    chunk = conns['vla/action_chunk']
    assert 'float32[] actions' in chunk.msgdef.data
    assert 'MSG: std_msgs/Header' in chunk.msgdef.data
    assert chunk.digest == bag.get_typestore().hash_rihs01('vla_insertion/msg/ActionChunk')
    assert conns['sensor/window'].ext.offered_qos_profiles[0].depth == 2


def test_hashes_match_rosidl():
    prefixes = [p for p in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep) if p]
    found = [Path(p) / 'share/vla_insertion/msg' for p in prefixes
             if (Path(p) / 'share/vla_insertion/msg').is_dir()]
    if not found:
        pytest.skip('package not built/sourced')
    store = bag.get_typestore()
    for desc in found[0].glob('*.json'):
        want = json.loads(desc.read_text())['type_hashes'][0]['hash_string']
        assert store.hash_rihs01(f'vla_insertion/msg/{desc.stem}') == want


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_splits_read_as_one_bag(tmp_path, storage):
    written = write_bag(tmp_path / 'b', storage, n=25, split_duration_s=0.5)
    files = sorted(p.name for p in (tmp_path / 'b').iterdir())
    assert len([f for f in files if f.startswith('b_')]) == 5
    assert not [f for f in files if f.startswith('.')]
    read = [(t, s) for t, s, _m in bag.read_messages(tmp_path / 'b')]
    assert read == [(t, s) for t, s, _m in written]


def test_raw_passthrough_and_restamp(tmp_path):
    written = write_bag(tmp_path / 'a', 'mcap', n=2)
    with bag.BagWriter(tmp_path / 'b') as writer:
        for topic, msgtype, log_ns, data in bag.read_raw(tmp_path / 'a'):
            writer.add_topic(topic, msgtype)
            assert bag.cdr_header_stamp_ns(data) == log_ns - 7
            writer.write(topic, log_ns, bag.cdr_restamp(data, log_ns + 5))
    read = list(bag.read_messages(tmp_path / 'b', topics=['vla/action_chunk']))
    assert len(read) == 2
    for (_t, log_ns, msg), (_wt, wlog, wmsg) in zip(
            read, [w for w in written if w[0] == 'vla/action_chunk']):
        assert bag.header_stamp_ns(msg) == log_ns + 5 == wlog + 5
        np.testing.assert_array_equal(msg.actions, wmsg.actions)


CRASH = """
import os, signal, sys, time
sys.path.insert(0, {root!r})
sys.path.insert(0, {test_dir!r})
from test_bag_io import TYPES, T0, sample
from vla_insertion.core import bag
writer = bag.BagWriter({path!r}, storage={storage!r}, split_duration_s=1.0,
                       flush_period_s=0.0)
for topic, msgtype in TYPES.items():
    writer.add_topic(topic, msgtype)
for i in range(25):
    for topic in TYPES:
        t = T0 + i * 100_000_000
        writer.write_msg(topic, t, sample(topic, i, t - 7))
writer.flush()
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_killed_writer_leaves_a_readable_bag(tmp_path, storage):
    path = tmp_path / 'killed'
    code = CRASH.format(root=str(Path(__file__).resolve().parents[3]),
                        test_dir=str(Path(__file__).parent), path=str(path), storage=storage)
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    # splits 0 and 1 (stamps 0..1.9 s) were completed before the kill: readable as they are
    before = list(bag.read_messages(path))
    assert len(before) == 20 * len(TYPES)
    # the flushed active split (stamps 2.0..2.4 s) is salvaged by recovery
    assert bag.recover_bag(path) == 5 * len(TYPES)
    after = list(bag.read_messages(path))
    assert len(after) == 25 * len(TYPES)
    stamps = sorted({s for _t, s, _m in after})
    assert stamps == [T0 + i * 100_000_000 for i in range(25)]
    assert all(bag.header_stamp_ns(m) == s - 7 for _t, s, m in after)


def test_truncated_mcap_split_is_salvaged_up_to_the_cut(tmp_path):
    path = tmp_path / 'cut'
    writer = bag.BagWriter(path, flush_period_s=0.0)
    writer.add_topic('vla/action_chunk', TYPES['vla/action_chunk'])
    for i in range(10):
        writer.write_msg('vla/action_chunk', T0 + i, sample('vla/action_chunk', i, T0 + i))
        writer.flush()                    # one chunk per message
    writer._writer.storage.bio.flush()
    active = next((path / '.active_0').rglob('*.mcap'))
    data = active.read_bytes()
    active.write_bytes(data[:len(data) - 100])   # cut inside the last chunk
    with pytest.raises(bag.BagError, match='recover'):
        bag.bag_info(path)
    assert bag.recover_bag(path) == 9
    assert [s for _t, s, _m in bag.read_messages(path)] == [T0 + i for i in range(9)]


def test_split_by_time_writes_one_bag_per_range(tmp_path):
    written = write_bag(tmp_path / 'all', 'mcap', n=10)
    ranges = [('first', T0, T0 + 250_000_000), ('last', T0 + 700_000_000, T0 + 10**12),
              ('none', T0 - 10**9, T0 - 1)]
    bags = bag.split_by_time(tmp_path / 'all', ranges, tmp_path / 'split')
    assert [p.name for p in bags] == ['first', 'last', 'none']
    for path, (_, start, end) in zip(bags, ranges):
        want = [(t, n) for t, n, _ in written if start <= n <= end]
        got = [(t.lstrip('/'), n) for t, _, n, _ in bag.read_raw(path)]
        assert sorted(got) == sorted((t.lstrip('/'), n) for t, n in want)
    assert bag.bag_info(bags[0]).message_count == 3 * len(TYPES)      # i = 0, 1, 2
    assert bag.bag_info(bags[2]).message_count == 0


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_metadata_is_rosbag2s(tmp_path, monkeypatch, storage):
    """ros_distro, one offered profile per publisher, each file's own metadata naming it."""
    monkeypatch.setenv('ROS_DISTRO', 'jazzy')
    path = tmp_path / 'meta'
    with bag.BagWriter(path, storage=storage, split_duration_s=1e-6) as writer:
        writer.add_topic('/vla/action_chunk', TYPES['vla/action_chunk'],
                         [bag.qos(depth=2), bag.qos(depth=2)])      # two publishers
        for i, t in enumerate((T0, T0 + 10**6)):           # 1 ms apart: two splits
            writer.write_msg('/vla/action_chunk', t, sample('vla/action_chunk', i, t))
    info = yaml.safe_load((path / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    assert info['ros_distro'] == 'jazzy'
    (topic,) = info['topics_with_message_count']
    offered = topic['topic_metadata']['offered_qos_profiles']
    assert [(q['history'], q['depth']) for q in offered] == [('keep_last', 2)] * 2
    names = info['relative_file_paths']
    assert names == [f'meta_0.{STORAGE_EXT[storage]}', f'meta_1.{STORAGE_EXT[storage]}']
    for name in names:                # the metadata stored inside each file
        inner = _embedded_metadata(path / name, storage)
        assert inner['relative_file_paths'] == [name] and inner['ros_distro'] == 'jazzy'
    assert bag.qos(depth=0).history.name == 'UNKNOWN'     # what discovery reports
    assert len(list(bag.read_raw(path))) == 2      # readers match files and metadata


STORAGE_EXT = {'mcap': 'mcap', 'sqlite3': 'db3'}


def _embedded_metadata(file, storage: str) -> dict:
    """Return the rosbag2 metadata stored inside one bag file (sqlite3 table, MCAP record)."""
    if storage == 'sqlite3':
        conn = sqlite3.connect(file)
        try:
            ((text,),) = conn.execute('SELECT metadata FROM metadata').fetchall()
        finally:
            conn.close()
        return yaml.safe_load(text)
    data, pos = file.read_bytes(), 8                       # after the magic
    while pos + 9 <= len(data):
        op, length = data[pos], struct.unpack_from('<Q', data, pos + 1)[0]
        body = data[pos + 9:pos + 9 + length]
        if op == 0x0C:                                     # Metadata: name, map<str, str>
            name_len, = struct.unpack_from('<I', body, 0)
            p = 4 + name_len + 4                           # skip the map's byte length
            key_len, = struct.unpack_from('<I', body, p)
            value_len, = struct.unpack_from('<I', body, p + 4 + key_len)
            value = body[p + 8 + key_len:p + 8 + key_len + value_len].decode()
            return yaml.safe_load(value)
        pos += 9 + length
    raise AssertionError(f'{file}: no metadata record')
