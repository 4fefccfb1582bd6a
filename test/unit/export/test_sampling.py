"""Bags sampled on the frame grid (core/export/sampling.py), on small bags with known contents.

Each stream of the synthetic bag carries its own clock in its values (a joint state's first
joint is its stamp in s, a command's first target is its stamp in s, ...), so a frame's value
tells which message it came from.
"""
from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image
import pytest

from vla_insertion.core import bag, topics
from vla_insertion.core.export import ExportError, ExportOptions
from vla_insertion.core.export.sampling import (
    load_streams, newest_index, read_frames, sample_episode, STAMP_TOLERANCE_NS)
from vla_insertion.core.train.split import bag_episodes, intervals_from_episode_log

T0 = 1_700_000_000 * 10**9                   # the bag's epoch [ns]
MS = 1_000_000
JOINTS = [f'joint_{i}' for i in range(1, 7)]


def jpeg(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 16, 3), value, np.uint8)).save(buf, format='JPEG', quality=95)
    return buf.getvalue()


def write_bag(path, duration_ms: int = 2000, camera_ms: int = 200, sent_from_ms: int = 300,
              window_valid: int = 65, views=('zed_1', 'oak'), joints=JOINTS,
              command_names=JOINTS, camera_lag_ms: int = 30):
    """Joint states and commands every 10 ms, windows every 20 ms, frames every camera_ms."""
    with bag.BagWriter(path) as w:
        for entry in (topics.JOINT_STATES, topics.SENSOR_WINDOW, topics.COMMAND,
                      topics.ACTION_CHUNK):
            w.add_topic('/' + entry.name, entry.msgtype)
        for view in views:
            w.add_topic('/' + topics.camera_topic(view), topics.CAMERAS.msgtype)
        for ms in range(0, duration_ms + 1, 10):
            t = T0 + ms * MS
            w.write_msg('/' + topics.JOINT_STATES.name, t, bag.make_message(
                topics.JOINT_STATES.msgtype, header=bag.header(t),
                name=list(joints) + ['gripper'],
                position=np.r_[ms / 1000, np.zeros(len(joints) - 1), 0.5]))
            w.write_msg('/' + topics.COMMAND.name, t, bag.make_message(
                topics.COMMAND.msgtype, header=bag.header(t), joint_names=list(command_names),
                positions=np.r_[ms / 1000, np.ones(5)], velocities=np.zeros(6), gripper=1.0,
                sent=ms >= sent_from_ms, armed=ms >= sent_from_ms))
            if ms % 20 == 0:
                samples = np.tile(np.arange(65, dtype=np.float32)[:, None], (1, 7)) + ms
                samples[:65 - window_valid] = np.nan
                w.write_msg('/' + topics.SENSOR_WINDOW.name, t, bag.make_message(
                    topics.SENSOR_WINDOW.msgtype, header=bag.header(t), sample_rate_hz=650.0,
                    num_samples=65, num_channels=7,
                    channel_names=['fx', 'fy', 'fz', 'tx', 'ty', 'tz', 'distance'],
                    data=samples.ravel(), valid_samples=window_valid))
            if ms % 100 == 0:
                w.write_msg('/' + topics.ACTION_CHUNK.name, t, bag.make_message(
                    topics.ACTION_CHUNK.msgtype, header=bag.header(t), dt_s=0.1, horizon=2,
                    action_dim=7, actions=np.r_[np.full(7, ms / 1000), np.zeros(7)]
                    .astype(np.float32)))
            if ms % camera_ms == 0:
                for k, view in enumerate(views):       # logged after capture, by camera_lag
                    w.write_msg('/' + topics.camera_topic(view), t + camera_lag_ms * MS,
                                bag.make_message(
                                    topics.CAMERAS.msgtype, header=bag.header(t), format='jpeg',
                                    data=np.frombuffer(jpeg(10 * k + ms // camera_ms),
                                                       np.uint8)))
    return path


OPTIONS = ExportOptions(task='Insert the peg.', fps=10)


def test_newest_index_takes_the_last_stamp_at_or_before_each_time():
    stamps = np.array([10, 20, 20, 30], dtype=np.int64) * MS
    times = np.array([5, 10, 19, 20, 29, 31], dtype=np.int64) * MS
    assert newest_index(stamps, times).tolist() == [-1, 0, 0, 2, 2, 3]
    # a stamp a rounding later than the time counts at it, a microsecond more does not
    assert newest_index(stamps, [20 * MS - STAMP_TOLERANCE_NS])[0] == 2
    assert newest_index(stamps, [20 * MS - STAMP_TOLERANCE_NS - 1])[0] == 0


def test_frames_start_at_a_capture_when_every_stream_has_a_value(tmp_path):
    path = write_bag(tmp_path / 'b', sent_from_ms=300)
    streams = load_streams(path, OPTIONS)
    assert list(streams.cameras) == ['zed_1', 'oak']          # the cell's view order
    samples = sample_episode(streams, OPTIONS.fps)
    # the first sent command is at 300 ms: the first capture then is 400 ms; frames every
    # 100 ms until the last message of any stream (2000 ms)
    assert samples.stamps_ns[0] == T0 + 400 * MS
    assert len(samples) == 17 and samples.stamps_ns[-1] == T0 + 2000 * MS
    assert np.all(np.diff(samples.stamps_ns) == 100 * MS)
    t_s = (samples.stamps_ns - T0) / 1e9
    np.testing.assert_allclose(samples.state[:, 0], t_s, atol=1e-6)        # joints at t
    assert np.all(samples.state[:, 6] == np.float32(0.5))                   # gripper
    np.testing.assert_allclose(samples.action[:, 0], t_s, atol=1e-6)       # command at t
    assert np.all(samples.action[:, 6] == 1.0)
    # the newest window at t: stamped at t (every 20 ms), its newest 10 rows, oldest first
    first = samples.wrench[0].reshape(10, 7)
    np.testing.assert_array_equal(first[:, 0], np.arange(55, 65) + 400)
    assert streams.wrench.names[:2] == ('fx@-9', 'fy@-9') and streams.wrench.names[-1] == \
        'distance@0'
    assert streams.state.names == tuple(JOINTS) + ('gripper',)
    assert streams.action.names == tuple(JOINTS) + ('gripper',)
    # 30 commands were previews of a disarmed executor: left out, counted
    assert streams.left_out['command_not_sent'] == 30
    # frames: one capture every 200 ms at 10 fps: every other frame repeats one
    assert samples.repeated('zed_1') == 8 and samples.skipped('zed_1') == 0
    assert samples.max_age_ms['observation.images.zed_1'] == pytest.approx(100.0)
    assert samples.max_age_ms['observation.state'] == 0.0


def test_images_are_read_back_in_frame_order(tmp_path):
    path = write_bag(tmp_path / 'b', camera_ms=100)
    streams = load_streams(path, OPTIONS, views=('oak',))
    samples = sample_episode(streams, OPTIONS.fps)
    images = read_frames(streams, samples)
    assert list(images) == ['oak'] and len(images['oak']) == len(samples)
    for stamp, data in zip(samples.stamps_ns, images['oak']):
        value = np.asarray(Image.open(io.BytesIO(data))).mean()
        assert value == pytest.approx(10 + (stamp - T0) // (100 * MS), abs=1.5)
    assert samples.repeated('oak') == 0


def test_a_faster_camera_skips_captures_and_the_count_says_so(tmp_path):
    path = write_bag(tmp_path / 'b', camera_ms=50)
    samples = sample_episode(load_streams(path, OPTIONS), OPTIONS.fps)
    assert samples.skipped('zed_1') == len(samples) - 1 and samples.repeated('zed_1') == 0


def test_chunk_action_and_wrench_summary(tmp_path):
    path = write_bag(tmp_path / 'b', window_valid=5)
    options = ExportOptions(task='x', action='chunk', wrench='summary')
    streams = load_streams(path, options)
    samples = sample_episode(streams, options.fps)
    t_s = (samples.stamps_ns - T0) / 1e9
    # chunks every 100 ms: the newest one's first action
    np.testing.assert_allclose(samples.action[:, 0], np.floor(t_s * 10 + 1e-6) / 10, atol=1e-6)
    assert streams.action.names == tuple(JOINTS) + ('gripper',)
    # summary: mean, min, max of the 5 received rows (60..64 + the window's ms)
    ms = samples.stamps_ns[0] // MS - T0 // MS
    row = samples.wrench[0]
    assert streams.wrench.names[0] == 'fx.mean' and streams.wrench.names[7] == 'fx.min'
    assert row[0] == pytest.approx(62 + ms) and row[7] == 60 + ms and row[14] == 64 + ms
    # too few received rows for the newest 10: every window is left out, and that is an error
    with pytest.raises(ExportError, match='fewer received rows'):
        load_streams(path, ExportOptions(task='x', wrench_samples=10))


def test_episode_log_cuts_a_bag_into_episodes(tmp_path):
    path = write_bag(tmp_path / 'b')
    log = tmp_path / 'episodes.jsonl'
    log.write_text(''.join(json.dumps(r) + '\n' for r in [
        {'event': 'start', 'episode': 0, 'sender_time_s': (T0 + 450 * MS) / 1e9},
        {'event': 'end', 'episode': 0, 'sender_time_s': (T0 + 1000 * MS) / 1e9},
        {'event': 'start', 'episode': 1, 'sender_time_s': (T0 + 1200 * MS) / 1e9},
        {'event': 'end', 'episode': 1, 'sender_time_s': (T0 + 1500 * MS) / 1e9},
        {'event': 'start', 'episode': 2, 'sender_time_s': (T0 + 9000 * MS) / 1e9}]))
    streams = load_streams(path, OPTIONS)
    episodes = bag_episodes(str(path), intervals_from_episode_log(log), streams.span_s)
    assert len(episodes) == 2                        # the unfinished third is no episode
    cut = [sample_episode(streams, OPTIONS.fps, int(round(e.start_s * 1e9)),
                          int(round(e.end_s * 1e9))) for e in episodes]
    # each starts at the first capture inside it and ends within it
    assert [(s.stamps_ns[0] - T0) // MS for s in cut] == [600, 1200]
    assert [(s.stamps_ns[-1] - T0) // MS for s in cut] == [1000, 1500]
    # a log from another session overlaps no bag: the bag is one episode
    assert len(bag_episodes(str(path), [(1.0, 2.0)], streams.span_s)) == 1


def test_bags_that_cannot_be_exported_say_why(tmp_path):
    path = write_bag(tmp_path / 'quiet', sent_from_ms=10**6)           # never armed
    with pytest.raises(ExportError, match='--action chunk'):
        load_streams(path, OPTIONS)
    assert load_streams(path, ExportOptions(task='x', action='chunk')).action.values.size
    with pytest.raises(ExportError, match=r"no frames of view\(s\) \['zed_4'\]"):
        load_streams(write_bag(tmp_path / 'b'), OPTIONS, views=('zed_4',))
    # an episode in which the streams never all have a value has no frame
    streams = load_streams(tmp_path / 'b', OPTIONS)
    assert sample_episode(streams, 10, T0, T0 + 200 * MS) is None


def test_a_stream_whose_layout_changes_is_refused(tmp_path):
    path = tmp_path / 'b'
    with bag.BagWriter(path) as w:
        w.add_topic('/' + topics.JOINT_STATES.name, topics.JOINT_STATES.msgtype)
        for k, names in enumerate((JOINTS, JOINTS[:5])):
            t = T0 + k * MS
            w.write_msg('/' + topics.JOINT_STATES.name, t, bag.make_message(
                topics.JOINT_STATES.msgtype, header=bag.header(t), name=names,
                position=np.zeros(len(names))))
    with pytest.raises(ExportError, match='observation.state changes'):
        load_streams(path, OPTIONS)
