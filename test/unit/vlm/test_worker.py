"""VlmWorker and VlmStats: the VLM's scheduler, on a fake model and a fake clock (no ROS).

Thread tests wait on conditions (bounded); nothing here asserts a time.
"""
from dataclasses import replace
import threading

import numpy as np
import pytest
from support import wait_for

from vla_insertion.core.config import VlmConfig
from vla_insertion.core.data import CameraFrame, VLFeatureData
from vla_insertion.core.vlm.extractor import VlmInputError
from vla_insertion.core.vlm.selection import LatestFrames, MISSING_VIEWS, OUT_OF_SYNC
from vla_insertion.core.vlm.worker import BAD_IMAGE, VlmStats, VlmWorker

VIEWS = ('zed_1', 'oak')
NOW = 1000.0


class FakeVlm:
    """Features stamped with the newest view's capture; `bad`: frames that do not decode."""

    untrained, model_id = True, 'fake-vlm'

    def __init__(self) -> None:
        self.observations = []
        self.last_timings: dict[str, float] = {}
        self.fail: Exception | None = None

    def infer(self, obs) -> VLFeatureData:
        if self.fail is not None:
            raise self.fail
        if any(f.data == b'bad' for f in obs.frames.values()):
            raise VlmInputError('a view did not decode')
        self.observations.append(obs)
        self.last_timings = {'total_ms': 2.0}
        stamps = tuple(f.stamp_s for f in obs.frames.values())
        return VLFeatureData(stamp_s=max(stamps), features=np.zeros((4, 8), np.float32),
                             sequence=obs.sequence, contract_hash='c', model_id=self.model_id,
                             view_names=tuple(obs.frames), view_stamps_s=stamps,
                             inference_ms=2.0)


class Cell:
    """A worker on a fake model with a settable clock; records what it publishes and skips."""

    def __init__(self, **config) -> None:
        self.now = NOW
        self.config = VlmConfig(view_names=VIEWS, sync_tolerance_s=0.05, max_view_age_s=1.0,
                                **config)
        self.frames = LatestFrames(VIEWS, self.config.max_view_age_s)
        self.model, self.stats = FakeVlm(), VlmStats()
        self.published: list[VLFeatureData] = []
        self.skips: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.worker = VlmWorker(self.model, self.frames, self.config, self.stats,
                                clock=lambda: self.now, publish=self.published.append,
                                on_skip=lambda *skip: self.skips.append(skip),
                                on_error=self.errors.append)

    def put(self, stamps: dict[str, float], data: bytes = b'jpeg') -> None:
        for view, stamp in stamps.items():
            self.stats.frame_put(view, self.frames.put(
                CameraFrame(view=view, stamp_s=stamp, data=data), self.now))

    def put_set(self, stamp: float, spread_s: float = 0.01, **kwargs) -> None:
        self.put({v: stamp - spread_s * i for i, v in enumerate(VIEWS)}, **kwargs)

    def run_once(self) -> VLFeatureData | None:
        selection = self.worker.select()
        return self.worker.run(selection) if selection.ready else None


@pytest.fixture
def cells():
    """Build cells; stop their workers after the test."""
    made = []

    def make(**config) -> Cell:
        made.append(Cell(**config))
        return made[-1]
    yield make
    for cell in made:
        cell.worker.stop(timeout_s=10.0)


def test_a_complete_in_sync_set_is_run_published_and_counted(cells):
    cell = cells()
    cell.put_set(NOW - 0.02)
    features = cell.run_once()
    assert cell.published == [features] and features.sequence == 1
    assert features.stamp_s == NOW - 0.02 and cell.model.observations[0].sequence == 1
    assert cell.stats.published == 1 and cell.stats.stage_ms == {'total_ms': 2.0}
    assert cell.stats.feature_age_s.summary()['mean'] == pytest.approx(0.02)
    assert cell.stats.inference_ms.summary()['mean'] == 2.0
    # async mode: the same set is never run again, and that is not a skip
    assert cell.run_once() is None and len(cell.published) == 1 and cell.skips == []
    cell.put({'oak': NOW - 0.015})
    assert cell.run_once().sequence == 2


def test_sets_not_ready_or_not_decoding_are_skipped_by_cause(cells):
    cell = cells()
    cell.put({'zed_1': NOW - 0.01})
    assert cell.run_once() is None
    cell.put({'oak': NOW - 0.3})
    assert cell.run_once() is None
    cell.put_set(NOW - 0.01, data=b'bad')
    assert cell.run_once() is None
    assert [cause for cause, _ in cell.skips] == [MISSING_VIEWS, OUT_OF_SYNC, BAD_IMAGE]
    assert cell.stats.skipped.as_dict() == {MISSING_VIEWS: 1, 'stale_views': 0,
                                            OUT_OF_SYNC: 1, BAD_IMAGE: 1}
    assert cell.stats.last_skip == f'{BAD_IMAGE}: a view did not decode'
    assert cell.published == []


def test_the_live_limits_are_read_for_every_set(cells):
    cell = cells()
    cell.put_set(NOW - 0.01, spread_s=0.2)
    assert cell.run_once() is None and cell.skips[-1][0] == OUT_OF_SYNC
    cell.worker.config = replace(cell.config, sync_tolerance_s=0.5)
    cell.put({'zed_1': NOW - 0.01})                 # a new frame of the same spread
    assert cell.run_once() is not None


def test_the_async_thread_runs_each_new_set_once(cells):
    cell = cells()
    cell.worker.start()
    cell.put_set(NOW - 0.02)
    assert wait_for(lambda: cell.stats.published == 1 and cell.worker.idle, 30.0)
    cell.put_set(NOW - 0.01)
    assert wait_for(lambda: cell.stats.published == 2 and cell.worker.idle, 30.0)
    cell.put({'zed_1': NOW - 0.01})                 # a duplicate: refused, nothing new to run
    assert cell.stats.refused_frames.as_dict()['out_of_order'] == 1 and cell.worker.idle
    assert [f.sequence for f in cell.published] == [1, 2] and cell.skips == []
    cell.worker.stop(timeout_s=10.0)
    assert not cell.worker._thread.is_alive()


def test_the_sync_thread_runs_once_per_request_on_the_newest_views(cells):
    cell = cells(mode='sync')
    cell.worker.start()
    cell.put_set(NOW - 0.02)
    assert wait_for(lambda: cell.worker.idle, 30.0)
    assert cell.published == []                    # frames alone do not run it
    for n in (1, 2):
        cell.worker.request()
        assert wait_for(lambda: cell.stats.published == n and cell.worker.idle, 30.0)
    assert cell.stats.repeated_sets == 1           # the second request ran the same set again
    assert [f.stamp_s for f in cell.published] == [NOW - 0.02] * 2


def test_an_unexpected_error_stops_the_worker_and_is_reported(cells, monkeypatch):
    cell = cells()
    cell.model.fail = RuntimeError('CUDA out of memory')
    raised = []
    monkeypatch.setattr(threading, 'excepthook', raised.append)   # the thread re-raises it
    cell.worker.start()
    cell.put_set(NOW - 0.02)
    assert wait_for(lambda: not cell.worker._thread.is_alive(), 30.0)
    assert cell.errors == ['RuntimeError: CUDA out of memory'] == [cell.stats.error]
    assert isinstance(raised[0].exc_value, RuntimeError)
    report, _ = cell.stats.report('active', cell.config, cell.model, 'c', NOW)
    assert report.level == 'ERROR' and 'worker stopped: RuntimeError' in report.message


def test_the_report_says_why_nothing_is_published_and_counts_every_cause(cells):
    cell = cells()
    report, stats = cell.stats.report('inactive', cell.config, None, '', NOW)
    assert report.level == 'WARN' and 'configure loads' in report.message
    cell.put({'zed_1': NOW - 0.01})
    cell.run_once()
    report, stats = cell.stats.report('active', cell.config, cell.model, 'c', NOW)
    assert report.level == 'WARN' and report.message.startswith(
        'not publishing: missing_views: missing views: oak')
    assert report.message.endswith('(untrained weights)')
    values = report.values
    assert values['skipped.missing_views'] == 1 and values['skipped.stale_views'] == 0
    assert values['frames.zed_1'] == 1 and values['frames.oak'] == 0
    assert values['refused_frames.future_stamp'] == 0 and values['vl_updates'] == 0
    assert stats.dropped == 1 and stats.published == 0
    cell.put({'oak': NOW - 0.012})
    cell.run_once()
    report, stats = cell.stats.report('active', cell.config, cell.model, 'c', NOW)
    assert (report.level, report.message) == ('OK', 'ok (untrained weights)')
    assert report.values['vl_updates'] == 1 and stats.published == 1
    assert 'VL updates: 1' in cell.stats.status_line('active', VIEWS, untrained=True)
