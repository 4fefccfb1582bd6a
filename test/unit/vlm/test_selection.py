"""Which views the VLM runs on (newest, complete, fresh, in sync, never twice) and VlmConfig."""
from __future__ import annotations

import dataclasses
import threading

import pytest

from vla_insertion.core.config import ConfigError, field_docs, VlmConfig
from vla_insertion.core.data import CameraFrame
from vla_insertion.core.params import load_config
from vla_insertion.core.vlm.selection import (
    FUTURE_STAMP, KEPT, LatestFrames, MISSING_VIEWS, NO_NEW_FRAMES, OUT_OF_ORDER, OUT_OF_SYNC,
    READY, STALE_VIEWS, UNKNOWN_VIEW)

VIEWS = ('zed_1', 'zed_2', 'oak')
TOL, MAX_AGE = 0.05, 0.5


def frame(view: str, stamp_s: float) -> CameraFrame:
    return CameraFrame(view=view, stamp_s=stamp_s, data=f'{view}@{stamp_s}'.encode())


def filled(stamps: dict[str, float]) -> LatestFrames:
    frames = LatestFrames(VIEWS, MAX_AGE)
    for view, stamp in stamps.items():
        assert frames.put(frame(view, stamp), now_s=stamp) == KEPT
    return frames


def test_complete_in_sync_set_is_run_once_in_view_order():
    frames = filled({'oak': 10.02, 'zed_1': 10.00, 'zed_2': 10.01})
    selection = frames.select(10.1, TOL, MAX_AGE)
    assert selection.cause == READY and selection.ready
    assert list(selection.frames) == list(VIEWS)
    assert selection.spread_s == pytest.approx(0.02)
    # the same set is never handed out twice
    assert frames.select(10.1, TOL, MAX_AGE).cause == NO_NEW_FRAMES
    # one new frame makes a new set, which keeps the newest of every other view
    frames.put(frame('zed_1', 10.03), 10.05)
    again = frames.select(10.1, TOL, MAX_AGE)
    assert again.ready and again.frames['zed_1'].stamp_s == 10.03
    assert again.frames['oak'].stamp_s == 10.02


def test_only_the_newest_frame_per_view_is_kept():
    frames = filled({'zed_1': 10.00})
    assert frames.put(frame('zed_1', 10.05), 10.06) == KEPT
    assert frames.put(frame('zed_1', 10.02), 10.07) == OUT_OF_ORDER, \
        'an older frame must not replace a newer, fresh one'
    assert frames.put(frame('zed_1', 10.05), 10.08) == OUT_OF_ORDER, 'a repeat is refused'
    assert frames.put(frame('front', 10.06), 10.08) == UNKNOWN_VIEW
    assert frames.newest()['zed_1'].stamp_s == 10.05


def test_a_future_stamped_frame_is_refused_and_never_holds_a_view():
    """Issue 14: a frame stamped 113 s ahead blocked its view until real time caught up."""
    frames = filled({'zed_1': 10.0, 'zed_2': 10.0, 'oak': 10.0})
    assert frames.put(frame('oak', 123.0), now_s=10.05) == FUTURE_STAMP
    assert frames.put(frame('oak', 10.16), now_s=10.05) == FUTURE_STAMP   # > 0.1 s ahead
    assert frames.put(frame('oak', 10.1), now_s=10.05) == KEPT            # within tolerance
    for view in VIEWS:
        frames.put(frame(view, 10.11), now_s=10.12)
    assert frames.select(10.12, TOL, MAX_AGE).ready


def test_an_older_stamp_replaces_a_frame_stored_longer_ago_than_the_max_age():
    """A sender that restarted or re-based its clock publishes stamps older than the last."""
    frames = filled({'zed_1': 10.0, 'zed_2': 10.0, 'oak': 10.0})
    # oak's sender re-based: its stamps are 2 s behind the held one, but fresh ones keep coming
    assert frames.put(frame('oak', 8.1), now_s=10.3) == OUT_OF_ORDER     # held one is fresh
    assert frames.put(frame('oak', 8.6), now_s=10.5) == OUT_OF_ORDER     # stored 0.5 s ago
    assert frames.put(frame('oak', 8.7), now_s=10.51) == KEPT            # > max_view_age_s
    assert frames.put(frame('oak', 8.8), now_s=10.6) == KEPT             # newer: as usual
    assert frames.newest()['oak'].stamp_s == 8.8


def test_a_held_frame_in_the_future_is_replaced_when_the_clock_went_back():
    frames = filled({'zed_1': 10.0})
    # a replay restarted: the node's clock is back at 5 s, the held frame is 5 s ahead of it
    assert frames.put(frame('zed_1', 5.0), now_s=5.01) == KEPT


def test_missing_views_are_named():
    selection = filled({'zed_1': 10.0}).select(10.0, TOL, MAX_AGE)
    assert selection.cause == MISSING_VIEWS and not selection.frames
    assert selection.missing == ('zed_2', 'oak')
    assert 'zed_2' in selection.describe() and 'oak' in selection.describe()


def test_stale_views_are_refused_and_named():
    frames = filled({'zed_1': 9.0, 'zed_2': 10.0, 'oak': 10.0})
    selection = frames.select(10.2, sync_tolerance_s=2.0, max_view_age_s=MAX_AGE)
    assert selection.cause == STALE_VIEWS and selection.stale == ('zed_1',)
    # everything stale once time moves on without new frames
    frames.put(frame('zed_1', 10.0), 10.2)
    assert frames.select(11.0, TOL, MAX_AGE).stale == VIEWS


def test_views_out_of_sync_are_refused_naming_the_laggard():
    frames = filled({'zed_1': 10.00, 'zed_2': 10.02, 'oak': 10.10})
    selection = frames.select(10.1, TOL, MAX_AGE)
    assert selection.cause == OUT_OF_SYNC
    assert selection.lagging == ('zed_1', 'zed_2')
    assert selection.spread_s == pytest.approx(0.10)
    # the laggards catch up: the newest set is within tolerance again
    frames.put(frame('zed_1', 10.09), 10.11)
    frames.put(frame('zed_2', 10.11), 10.11)
    assert frames.select(10.12, TOL, MAX_AGE).ready


def test_sync_mode_may_rerun_a_set_but_flags_it():
    frames = filled({'zed_1': 10.0, 'zed_2': 10.0, 'oak': 10.0})
    first = frames.select(10.1, TOL, MAX_AGE, require_new=False)
    assert first.ready and not first.repeated
    second = frames.select(10.1, TOL, MAX_AGE, require_new=False)
    assert second.ready and second.repeated
    # a stale set is refused in sync mode too
    assert frames.select(11.0, TOL, MAX_AGE, require_new=False).cause == STALE_VIEWS


def test_wait_for_new_wakes_on_a_frame_from_another_thread():
    frames = LatestFrames(VIEWS)
    assert not frames.wait_for_new(0.01)
    timer = threading.Timer(0.05, frames.put, args=(frame('oak', 1.0), 1.0))
    timer.start()
    try:
        assert frames.wait_for_new(5.0)
    finally:
        timer.join()
    frames.select(1.0, TOL, MAX_AGE)
    assert not frames.wait_for_new(0.01), 'select() consumes the notification'


def test_reset_forgets_frames_and_the_last_set():
    frames = filled({'zed_1': 10.0, 'zed_2': 10.0, 'oak': 10.0})
    assert frames.select(10.0, TOL, MAX_AGE).ready
    frames.reset()
    assert frames.select(10.0, TOL, MAX_AGE).cause == MISSING_VIEWS


# --- VlmConfig ------------------------------------------------------------------------------

def test_defaults_match_the_original_system():
    config = VlmConfig()
    assert config.view_names == ('zed_1', 'zed_2', 'zed_3', 'zed_4', 'oak')
    assert (config.image_width, config.image_height) == (640, 360)
    assert config.model == 'Qwen/Qwen2.5-VL-3B-Instruct'
    assert config.mode == 'async' and config.attn_implementation == 'sdpa'
    docs = field_docs(VlmConfig)
    assert set(docs) == {f.name for f in dataclasses.fields(VlmConfig)}, 'a field lacks a comment'


@pytest.mark.parametrize('change', [
    {'model': ''}, {'device': 'gpu'}, {'dtype': 'float64'}, {'device': 'cpu', 'dtype': 'float16'},
    {'attn_implementation': 'flash'}, {'view_names': ()}, {'view_names': ('a', 'a')},
    {'image_width': 20}, {'image_height': 360.0}, {'instruction': ' '}, {'pool_grid_h': 0},
    {'pool_grid_w': 100}, {'sync_tolerance_s': 0.0}, {'max_view_age_s': -1.0},
    {'max_rate_hz': -2.0}, {'max_rate_hz': float('nan')}, {'mode': 'batch'},
    {'torch_threads': -1}, {'warmup_runs': -1}, {'artificial_delay_s': -0.1},
])
def test_invalid_values_are_refused(change):
    with pytest.raises(ConfigError):
        VlmConfig(**change)


def test_params_yaml_loads_into_the_config(tmp_path):
    params = tmp_path / 'params.yaml'
    params.write_text('vlm_node:\n  ros__parameters:\n    view_names: [a, b]\n'
                      '    sync_tolerance_s: 1\n    mode: sync\n')
    config = load_config(VlmConfig, 'vlm_node', params)
    assert config.view_names == ('a', 'b') and config.sync_tolerance_s == 1.0
    assert config.mode == 'sync'
