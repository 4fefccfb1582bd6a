"""VlmWorker: the VLM's scheduler, one thread running the model on the newest camera views.

    subscriptions -> VlmStats.frame_put(LatestFrames.put(...))   every frame, counted by view
    worker thread:  wait for a trigger (async: a new frame; sync: a request)
                 -> LatestFrames.select (complete, fresh, in sync; core/vlm/selection.py)
                 -> model.infer under torch.inference_mode()  (features stamped with the
                    newest view's capture time by the extractor)
                 -> publish(features)

Async mode runs again as soon as a new frame arrives, no sooner than `max_rate_hz` allows, and
never on a set already run; sync mode runs once per `request()`, on the newest views (a repeated
set is run again and counted). A set that is incomplete, stale, out of sync or does not decode
is skipped, counted by cause (`VlmStats.skipped`), and reported through `on_skip`; after a
skipped set async mode waits SKIP_BACKOFF_S before trying again. The live limits
(sync_tolerance_s, max_view_age_s, max_rate_hz) are read from `config` for every set.

`VlmStats` outlives workers (the node keeps one across lifecycle transitions) and assembles
/diagnostics and vla/stats. No ROS here: the vlm_node converts and publishes.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
import threading
import time

import torch

from vla_insertion.core.config import VlmConfig
from vla_insertion.core.data import NodeStatsData, VLFeatureData
from vla_insertion.core.health import DropCounter, HealthReport, LatencyStats, RateMeter
from vla_insertion.core.interfaces import VlmObservation
from vla_insertion.core.vlm.extractor import VlmInputError
from vla_insertion.core.vlm.selection import (
    LatestFrames, MISSING_VIEWS, NO_NEW_FRAMES, OUT_OF_SYNC, REFUSALS, STALE_VIEWS,
    ViewSelection)

WAIT_STEP_S = 0.1        # worker wake-up period to notice a stop [s]
SKIP_BACKOFF_S = 0.05    # async mode: after a skipped set, wait this long before trying again [s]
BAD_IMAGE = 'bad_image'  # skip cause: a view did not decode
SKIP_CAUSES = (MISSING_VIEWS, STALE_VIEWS, OUT_OF_SYNC, BAD_IMAGE)


class VlmStats:
    """What the VLM counts: frames, sets skipped and run, inference times, feature ages.

    Written by the subscriptions and the worker, read by the monitor (plain counters).
    """

    def __init__(self) -> None:
        self.frames: Counter[str] = Counter()     # frames received, by view
        # sets not run and frames not stored, by cause (every cause reported from the start)
        self.skipped = DropCounter(SKIP_CAUSES)
        self.refused_frames = DropCounter(REFUSALS)
        self.rate = RateMeter()
        self.inference_ms = LatencyStats()
        self.feature_age_s = LatencyStats()       # at publication: publish time - newest capture
        self.stage_ms: dict[str, float] = {}      # the model's stage times of the last set
        self.published = 0             # feature sets published, the sequence of the newest
        self.repeated_sets = 0         # sync mode: sets run again on request
        self.requests = 0              # sync mode: requests received
        self.last_skip = ''            # 'cause: detail' of the newest skip since the last report
        self.error = ''                # the unexpected error that stopped the worker
        self._published_at_report = 0

    def frame_put(self, view: str, refused: str) -> None:
        """Count a received frame; `refused`: LatestFrames.put's answer ('' when kept)."""
        self.frames[view] += 1
        if refused:
            self.refused_frames.count(refused)

    def report(self, state: str, config: VlmConfig, model, contract: str,
               stamp_s: float) -> tuple[HealthReport, NodeStatsData]:
        """Return /diagnostics and vla/stats of the node in lifecycle `state`.

        `model`: the loaded VLM (model_id, untrained), None while none is loaded; `contract`:
        the digest of the newest one loaded.
        """
        rate = self.rate.rate_hz(time.monotonic())
        latency = self.inference_ms.summary()
        age = self.feature_age_s.summary()
        published = self.published
        report = HealthReport()
        if self.error:
            report.escalate('ERROR', f'worker stopped: {self.error}')
        elif state != 'active':
            report.escalate('WARN', f'{state}: not publishing' + (
                ' (activate starts the worker)' if model is not None
                else f' (configure loads {config.model})'))
        elif published == self._published_at_report and self.last_skip:
            report.escalate('WARN', f'not publishing: {self.last_skip}')
        elif published == 0:
            report.escalate('WARN', 'no features published yet')
        self._published_at_report = published
        self.last_skip = ''
        untrained = model is not None and model.untrained
        if untrained:
            report.message += ' (untrained weights)'
        report.values = {
            'lifecycle_state': state, 'mode': config.mode,
            'model_id': model.model_id if model is not None else '',
            'contract': contract, 'untrained': untrained,
            'vl_updates': published, 'vl_rate_hz': rate,
            'inference_ms_mean': latency['mean'], 'inference_ms_p99': latency['p99'],
            'feature_age_s_mean': age['mean'], 'feature_age_s_p99': age['p99'],
            'repeated_sets': self.repeated_sets, 'requests': self.requests,
            'artificial_delay_s': config.artificial_delay_s,
            **{f'skipped.{k}': v for k, v in sorted(self.skipped.as_dict().items())},
            **{f'refused_frames.{k}': v
               for k, v in sorted(self.refused_frames.as_dict().items())},
            **{f'frames.{v}': self.frames[v] for v in config.view_names},
            **{f'stage.{k}': v for k, v in self.stage_ms.items()},
        }
        stats = NodeStatsData(
            stamp_s=stamp_s, node='', rate_hz=rate, latency_mean_ms=latency['mean'],
            latency_p99_ms=latency['p99'], input_age_s=age['mean'], published=published,
            dropped=self.skipped.total())
        return report, stats

    def status_line(self, state: str, view_names: tuple[str, ...], untrained: bool) -> str:
        """Return the one-line status a person watching the terminal wants."""
        latency = self.inference_ms.summary()
        age = self.feature_age_s.summary()
        line = f'VL updates: {self.published}'
        if latency['n']:
            line += (f' | VL avg: {latency["mean"]:.0f}ms | VL rate: '
                     f'{self.rate.rate_hz(time.monotonic()):.2f} Hz | feature age avg: '
                     f'{age["mean"] * 1e3:.0f}ms')
        line += ' | frames: ' + ' '.join(f'{v}={self.frames[v]}' for v in view_names)
        skipped = {k: v for k, v in self.skipped.as_dict().items() if v}
        if skipped:
            line += ' | skipped ' + ', '.join(f'{k}={v}' for k, v in sorted(skipped.items()))
        if untrained:
            line += ' | untrained'
        if state != 'active':
            line = f'{state} | {line}'
        return line


class VlmWorker:
    """Run `model` on the newest complete set of `frames` in a daemon thread; see the module.

    `model`: infer(VlmObservation) -> VLFeatureData (and `last_timings`); `clock()`: the
    node's time [s] (the selection's age limits and the feature ages); `publish(features)`:
    the node's publisher; `on_skip(cause, detail)`: told of every skipped set (a warning);
    `on_error(message)`: told of the unexpected error that stops the worker (then raised).
    `config` holds the live limits: replace it to change them.
    """

    def __init__(self, model, frames: LatestFrames, config: VlmConfig, stats: VlmStats, *,
                 clock: Callable[[], float], publish: Callable[[VLFeatureData], None],
                 on_skip: Callable[[str, str], None] = lambda cause, detail: None,
                 on_error: Callable[[str], None] = lambda message: None) -> None:
        self.model, self.frames, self.config, self.stats = model, frames, config, stats
        self.sync = config.mode == 'sync'        # not live: fixed for this worker
        self._clock, self._publish = clock, publish
        self._on_skip, self._on_error = on_skip, on_error
        self._request = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._waiting = False          # the thread waits for a trigger (not selecting, running)

    # --- the thread -------------------------------------------------------------------------

    def start(self) -> VlmWorker:
        self._thread = threading.Thread(target=self._run, name='vlm_worker', daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the thread and wait for it (at most one inference) up to `timeout_s`."""
        self._stop.set()
        self._request.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout=timeout_s)

    @property
    def idle(self) -> bool:
        """True while the thread waits for a trigger and none is pending: all caught up.

        Pending: a frame not yet looked at (async) or a request (sync). What arrives later
        makes it busy again; tests and a caller draining the worker wait on this.
        """
        pending = self._request.is_set() if self.sync else self.frames.wait_for_new(0.0)
        return self._waiting and not pending

    def request(self) -> None:
        """Sync mode: run once, now, on the newest views (VlmStats.requests is the caller's)."""
        self._request.set()

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:
            self.stats.error = f'{type(exc).__name__}: {exc}'
            self._on_error(self.stats.error)
            raise

    def _loop(self) -> None:
        stop, frames = self._stop, self.frames
        next_start = time.monotonic()
        while not stop.is_set():
            cfg = self.config                  # live limits: read for every set
            period_s = 1.0 / cfg.max_rate_hz if cfg.max_rate_hz > 0 else 0.0
            self._waiting = True
            if self.sync:  # one run per request, on the newest views
                if not self._request.wait(WAIT_STEP_S):
                    continue
                self._waiting = False
                self._request.clear()
            else:  # one run per new set, no sooner than max_rate_hz allows
                if not frames.wait_for_new(WAIT_STEP_S):
                    continue
                self._waiting = False
                if period_s and stop.wait(max(0.0, next_start - time.monotonic())):
                    break
            selection = self.select()
            if not selection.ready:
                if selection.cause != NO_NEW_FRAMES:   # skipped: try again a little later
                    stop.wait(0.0 if self.sync else SKIP_BACKOFF_S)
                continue
            next_start = time.monotonic() + period_s
            self.run(selection)

    # --- one set ----------------------------------------------------------------------------

    def select(self) -> ViewSelection:
        """Return the newest set of views to run, or why there is none (a skip is counted).

        Async mode never hands out a set already run (cause NO_NEW_FRAMES, not a skip).
        """
        cfg = self.config
        selection = self.frames.select(self._clock(), cfg.sync_tolerance_s,
                                       cfg.max_view_age_s, require_new=not self.sync)
        if not selection.ready and selection.cause != NO_NEW_FRAMES:
            self._skip(selection.cause, selection.describe())
        return selection

    def run(self, selection: ViewSelection) -> VLFeatureData | None:
        """Run the model on a ready selection and publish; None: a view did not decode."""
        stats = self.stats
        stats.repeated_sets += int(selection.repeated)
        obs = VlmObservation(frames=selection.frames, sequence=stats.published + 1)
        try:
            with torch.inference_mode():
                features = self.model.infer(obs)
        except VlmInputError as exc:
            self._skip(BAD_IMAGE, str(exc))
            return None
        self._publish(features)
        stats.published += 1
        stats.rate.tick(time.monotonic())
        stats.inference_ms.add(features.inference_ms)
        stats.feature_age_s.add(self._clock() - features.stamp_s)
        stats.stage_ms = dict(self.model.last_timings)
        return features

    def _skip(self, cause: str, detail: str) -> None:
        self.stats.skipped.count(cause)
        self.stats.last_skip = f'{cause}: {detail}'
        self._on_skip(cause, detail)
