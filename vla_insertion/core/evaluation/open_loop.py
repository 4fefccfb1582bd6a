"""Running the policy on a recording: open loop, and the sync / threaded comparison modes.

Every mode ticks the same `ExpertRunner` the action_expert node ticks, so a tick refused by the
staleness rules on the robot is refused here too (counted in `RunResult.refused`).

- open loop (`run_open_loop`): deterministic, no wall clock. At every tick of `rate_hz` the
  newest recorded frames go through the VLM (every `vl_every` ticks, features reused between)
  and the runner; a chunk applies at its tick time.
- sync (`run_sync`): one loop in real time; each step runs the VLM on the newest views
  (blocking), then the runner; the next step starts at the next tick after that. A slow VLM
  blocks the loop, so fewer chunks are produced and the robot runs out of actions.
- threaded (`run_threaded`): the VLM runs back to back in a background thread; the runner ticks
  at `rate_hz` (DeadlineTicker on the recorded clock) on the newest features.

In the real-time modes a chunk applies from the moment it is available (computed), on the
recorded clock. `score` compares chunks with the recorded joint trajectory (core.metrics).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
import threading
import time

import numpy as np
from tqdm import tqdm

from vla_insertion.core import bag

from vla_insertion.core.bag.recording import RecordedInputs, Recording, tick_times
from vla_insertion.core.data import ActionChunkData, MODE_SYNC
from vla_insertion.core.evaluation import metrics
from vla_insertion.core.expert.runner import ExpertRunner
from vla_insertion.core.ticker import DeadlineTicker


@dataclass
class RunResult:
    """Chunks of one run on the recorded clock, with when each became available."""

    label: str
    chunks: list[ActionChunkData]
    latency_ms: list[float]
    wall_s: float = 0.0
    vl_updates: int = 0
    ticks: int = 0
    refused: dict[str, int] = field(default_factory=dict)   # reason -> ticks
    notes: list[str] = field(default_factory=list)

    def series(self) -> metrics.ChunkSeries:
        if not self.chunks:
            raise ValueError(f'{self.label}: no chunk was published (refused: {self.refused})')
        order = np.argsort([c.stamp_s for c in self.chunks], kind='stable')
        return metrics.ChunkSeries.from_chunks(
            [self.chunks[i] for i in order], latency_ms=np.asarray(self.latency_ms)[order])


def run_open_loop(rec: Recording, vlm, runner: ExpertRunner, views: tuple[str, ...],
                  rate_hz: float = 10.0, vl_every: int = 1, progress: bool = True) -> RunResult:
    """Tick the runner at every tick time on the recorded inputs; deterministic."""
    inputs = RecordedInputs(rec, views)
    ticks = tick_times(inputs, rate_hz)
    vlm.reset()
    runner.reset()
    features, chunks, latency, vl_updates = None, [], [], 0
    wall0 = time.perf_counter()
    for i, t in enumerate(tqdm(ticks, desc='open-loop', unit='tick', disable=not progress)):
        t0 = time.perf_counter()
        if features is None or i % vl_every == 0:
            features = vlm.infer(inputs.vlm(t, sequence=vl_updates))
            vl_updates += 1
        result = runner.tick(features, inputs.window(t), inputs.robot(t), t,
                             capture_robot=inputs.capture(features))
        if result.published:
            chunks.append(result.chunk)
            latency.append((time.perf_counter() - t0) * 1e3)
    return RunResult('open-loop', chunks, latency, time.perf_counter() - wall0, vl_updates,
                     len(ticks), runner.stats.refused.as_dict())


def recorded_chunks(rec: Recording) -> RunResult:
    """Return the chunks recorded in the bag; each applies when it was received."""
    if not rec.chunks:
        raise bag.BagError(f'{rec.path}: no vla/action_chunk messages recorded')
    chunks, latency = [], []
    for chunk, log_s in zip(rec.chunks, rec.chunk_log_s):
        applies = log_s - rec.log_offset_s          # receive time on the header-stamp clock
        latency.append((applies - chunk.stamp_s) * 1e3)
        chunks.append(replace(chunk, stamp_s=max(applies, chunk.stamp_s)))
    return RunResult('recorded', chunks, latency, vl_updates=len(
        {c.feature_sequence for c in rec.chunks}), ticks=len(chunks))


class BagClock:
    """Recorded time advancing with the wall clock from `start_s` [s]."""

    def __init__(self, start_s: float) -> None:
        self.start_s = start_s
        self._wall0 = time.perf_counter()

    def now(self) -> float:
        return self.start_s + (time.perf_counter() - self._wall0)


def run_sync(rec: Recording, vlm, runner: ExpertRunner, views: tuple[str, ...],
             rate_hz: float = 10.0) -> RunResult:
    """Block on the VLM and the runner at every step, in one loop, in real time."""
    inputs = RecordedInputs(rec, views)
    vlm.reset()
    runner.reset()
    runner.mode = MODE_SYNC
    clock = BagClock(inputs.first_complete_s())
    ticker = DeadlineTicker(rate_hz, clock=clock.now, max_lateness_s=0.0)
    chunks, latency, updates, ticks = [], [], 0, 0
    wall0 = time.perf_counter()
    while ticker.wait() and (t_obs := clock.now()) <= rec.end_s:
        ticks += 1
        features = vlm.infer(inputs.vlm(t_obs, updates))
        updates += 1
        result = runner.tick(features, inputs.window(t_obs), inputs.robot(t_obs), t_obs,
                             capture_robot=inputs.capture(features))
        t_avail = clock.now()
        if result.published:
            chunks.append(replace(result.chunk, stamp_s=t_avail,
                                  feature_age_s=t_avail - features.stamp_s))
            latency.append((t_avail - t_obs) * 1e3)
    return RunResult('sync', chunks, latency, time.perf_counter() - wall0, updates, ticks,
                     runner.stats.refused.as_dict())


def run_threaded(rec: Recording, vlm, runner: ExpertRunner, views: tuple[str, ...],
                 rate_hz: float = 10.0, start_timeout_s: float = 120.0) -> RunResult:
    """Run the VLM in a background thread and tick the runner at `rate_hz`, in real time."""
    inputs = RecordedInputs(rec, views)
    vlm.reset()
    runner.reset()
    clock = BagClock(inputs.first_complete_s())
    latest: list = [None]
    have_features, stop = threading.Event(), threading.Event()
    errors: list[BaseException] = []
    updates = [0]

    def vl_loop() -> None:
        try:
            while not stop.is_set():
                latest[0] = vlm.infer(inputs.vlm(min(clock.now(), rec.end_s), updates[0]))
                updates[0] += 1
                have_features.set()
        except BaseException as exc:  # reported by the tick loop
            errors.append(exc)
            have_features.set()

    worker = threading.Thread(target=vl_loop, name='vlm', daemon=True)
    worker.start()
    chunks, latency, ticks = [], [], 0
    wall0 = time.perf_counter()
    try:
        have_features.wait(start_timeout_s)
        ticker = DeadlineTicker(rate_hz, stop, clock=clock.now, max_lateness_s=0.0)
        while not errors and ticker.wait() and (t_obs := clock.now()) <= rec.end_s:
            ticks += 1
            result = runner.tick(latest[0], inputs.window(t_obs), inputs.robot(t_obs), t_obs,
                                 capture_robot=inputs.capture(latest[0]))
            if result.published:
                t_avail = clock.now()
                chunks.append(replace(result.chunk, stamp_s=t_avail))
                latency.append((t_avail - t_obs) * 1e3)
    finally:
        stop.set()
        worker.join(30.0)
    if errors:
        raise errors[0]
    return RunResult('threaded', chunks, latency, time.perf_counter() - wall0, updates[0],
                     ticks, runner.stats.refused.as_dict())


def score(rec: Recording, result: RunResult, rate_hz: float = 10.0) -> dict:
    """Return core.metrics.evaluate of one run, with its run-level numbers."""
    out = metrics.evaluate(rec.trajectory, result.series(), nominal_period_s=1.0 / rate_hz)
    out['run'] = {'label': result.label, 'wall_s': result.wall_s, 'ticks': result.ticks,
                  'vl_updates': result.vl_updates, 'refused': result.refused,
                  'notes': result.notes}
    return out
