"""The whole policy in closed loop on the simulated cell, in-process, on simulated time.

    cameras (rendered) -> VLM -> features ─┐
    sensor window (650 Hz) ────────────────┼-> ExpertRunner -> chunk -> ChunkExecutor -> cell
    robot state (measured) ────────────────┘                  (the node's runner and executor)

The same components the nodes run (the VLM extractor, `ExpertRunner` with its staleness rules,
`ChunkExecutor` with its merge and safety gate, the sim cell's servo and contact), wired by a
discrete-event loop on the cell's clock instead of DDS and threads, so closed-loop experiments
are deterministic and run faster than real time on a machine without ROS. What the wall clock
would add is modelled by `PipelineTiming`: the VLM and expert latencies, transport, and the
sync / async schedule:

- async (the deployed design): the VLM runs back to back; an inference started at t on the
  newest frames (captured at t) delivers its features at t + vlm_latency + vlm_delay. The expert
  ticks at rate_hz on the newest delivered features, the sensor window and robot state at the
  tick, and its chunk reaches the executor expert_latency + transport later.
- sync (the seeds' blocking loop): a step captures the views, waits for the VLM, then ticks the
  expert on the state at that moment; the next step starts at the first tick after the chunk
  arrived, so a slow VLM leaves the executor without new chunks.

The executor steps at its control rate on the measured state and the newest window; its
commands reach the servo command_delay later. `real timing` comes from the ROS pipeline
(`core/orchestration/cell_run.py`, `closed_loop --backend ros`); this loop compares designs.

This is the one loop that steps the in-process cell with a policy: `run_episode` for the
tools (closed_loop, policy_report, record_demonstrations), and `advance_to(t)` for LiveCell,
which drives it on the wall clock behind sim_cell's streams (`--control reference`). Both take
the same physics steps on one grid: each step runs what is due at the cell's time, then steps
the cell. From an episode's outcome until one step into the next episode (the cell's
`settle_s`) the pipeline waits; the next episode starts it afresh (executor, policies).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
import math

import numpy as np

from vla_insertion.core.config import (
    require, require_non_negative, require_one_of, require_positive, SensorBridgeConfig)
from vla_insertion.core.data import ActionChunkData, CameraFrame, SensorWindowData
from vla_insertion.core.expert.inputs import LatestInputs, tick_newest
from vla_insertion.core.health import counters
from vla_insertion.core.interfaces import VlmObservation
from vla_insertion.core.sim.cell import SimCell
from vla_insertion.core.sim.episode import EpisodeRecord
from vla_insertion.core.sim.reference import reference_observation
from vla_insertion.core.sim.servo import ServoCommand

MODES = ('async', 'sync')
SENSOR_INPUTS = ('recorded', 'zeroed')   # what the learned policy's ticks get of the sensor


@dataclass(frozen=True)
class PipelineTiming:
    """What the wall clock adds between the components (modelled, deterministic)."""

    mode: str = 'async'            # async: VLM in the background; sync: blocking steps
    rate_hz: float = 10.0          # expert ticks (async) / the step grid (sync) [Hz]
    vlm_latency_s: float = 0.38    # capture -> features; the seeds' RTX 4090, 5 views [s]
    vlm_delay_s: float = 0.0       # added to every VLM inference (the 0.8 s experiment) [s]
    expert_latency_s: float = 0.01  # tick -> chunk computed [s]
    transport_s: float = 0.002     # chunk computed -> at the executor [s]
    command_delay_s: float = 0.002  # executor command -> at the robot's servo [s]
    # the windows the sensor bridge publishes (650 Hz, 65 samples)
    sensor_rate_hz: float = SensorBridgeConfig.sample_rate_hz  # window sample rate [Hz]
    window_samples: int = SensorBridgeConfig.window_size       # samples per window [samples]

    def __post_init__(self) -> None:
        require_one_of('mode', self.mode, MODES)
        for name in ('rate_hz', 'sensor_rate_hz'):
            require_positive(name, getattr(self, name))
        for name in ('vlm_latency_s', 'vlm_delay_s', 'expert_latency_s', 'transport_s',
                     'command_delay_s'):
            require_non_negative(name, getattr(self, name))
        require(isinstance(self.window_samples, int) and self.window_samples >= 1,
                f'window_samples must be an integer >= 1, got {self.window_samples!r}')

    @property
    def features_after_s(self) -> float:
        return self.vlm_latency_s + self.vlm_delay_s


@dataclass
class EpisodeMetrics:
    """One episode: the cell's outcome and what the pipeline did meanwhile."""

    record: EpisodeRecord
    chunks: int = 0                # chunks the executor received
    refused: dict = field(default_factory=dict)     # expert ticks refused, by reason
    vl_updates: int = 0
    feature_age_s: list = field(default_factory=list)   # at each published chunk [s]
    chunk_delay_s: list = field(default_factory=list)   # observation -> at the executor [s]
    executor: dict = field(default_factory=dict)    # ChunkExecutor.stats() at the episode end

    def as_dict(self) -> dict:
        ex = self.executor
        return {**self.record.as_dict(), 'chunks': self.chunks, 'refused': self.refused,
                'vl_updates': self.vl_updates,
                'feature_age_s_mean': _mean(self.feature_age_s),
                'chunk_delay_s_mean': _mean(self.chunk_delay_s),
                'starved': ex.get('starved', 0), 'jerk_rms': ex.get('jerk.rms', math.nan),
                'jerk_peak': ex.get('jerk.peak', math.nan),
                'velocity_jump_p50': ex.get('boundary.velocity_jump.p50', math.nan),
                'velocity_jump_max': ex.get('boundary.velocity_jump.max', math.nan),
                'gate': counters(ex, 'gate.')}


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else math.nan


@dataclass
class _Episode:
    """What the loop carries from step to step within one episode."""

    index: int                     # the cell's episode
    next_command: float            # next executor step [s]
    next_tick: float               # next expert tick [s]
    vlm_free: float                # when the VLM can start again (async) [s]
    metrics: EpisodeMetrics = field(default_factory=lambda: EpisodeMetrics(record=None))
    chunks: deque = field(default_factory=deque)      # (arrival [s], ActionChunkData)
    vl_pending: deque = field(default_factory=deque)  # (ready [s], features) in flight
    features: object = None        # the newest delivered features
    sync_tick: tuple | None = None  # (when, features) of a step blocked on the VLM (sync)
    sync_busy_until: float = -math.inf  # the blocked step's chunk arrives then (sync) [s]


class PipelineLoop:
    """Drive `cell` with the VLM, the expert runner and the chunk executor; never sleeps.

    `vlm` implements `infer(VlmObservation) -> VLFeatureData` (None: the policy is not the
    learned one, e.g. the reference demonstrator through `reference`); `runner` is an
    ExpertRunner; `executor` a ChunkExecutor (armed at the start of each episode).

    `labeller` (the demonstrator, while the learned policy drives: DAgger) answers the
    observation of every tick too; `on_label(t, chunk)` gets its chunk, which drives nothing.

    `sensor_input`: 'zeroed' gives the learned policy's ticks a sensor window of zeros (the
    ablation of policy_report: what the sensor is worth); the executor's force monitor and a
    labeller still feel the real one.
    """

    def __init__(self, cell: SimCell, executor, timing: PipelineTiming = PipelineTiming(), *,
                 vlm=None, runner=None, renderer=None, views: tuple[str, ...] = (),
                 reference=None, labeller=None, jpeg_quality: int = 80, seed: int = 0,
                 sensor_input: str = 'recorded') -> None:
        require((vlm is not None and runner is not None and renderer is not None)
                or reference is not None, 'give a vlm, runner and renderer, or a reference')
        require_one_of('sensor_input', sensor_input, SENSOR_INPUTS)
        self.sensor_input = sensor_input
        self.cell, self.executor, self.timing = cell, executor, timing
        self.vlm, self.runner, self.renderer = vlm, runner, renderer
        self.inputs = LatestInputs()      # what the action_expert node holds, fed in-process
        self.views, self.reference, self.quality = tuple(views), reference, jpeg_quality
        self.labeller = labeller
        self._seed = seed
        self._rng = np.random.default_rng(seed)     # the sensor's noise; again per episode
        self._command_period = executor.config.period_s
        self._tick_period = 1.0 / timing.rate_hz
        self.observer = None          # observer(t): every physics step (e.g. a bag recorder)
        self.on_chunk = None          # on_chunk(t, chunk): every chunk reaching the executor
        self.on_label = None          # on_label(t, chunk): the labeller's answer at every tick
        self.on_command = None        # on_command(t, command): every control step (vla/command)
        self._episode: _Episode | None = None   # None until the first step
        # the pipeline waits until then [s]: the cell settles. It starts on every episode one
        # step after the episode's start, the first one too, so that an episode plays the
        # same as the first of a run or after others (runs split by episode ranges)
        self._resume_s = cell.t_s + cell.dt_s

    # --- the pieces the nodes would do ------------------------------------------------------

    def window(self, t: float) -> SensorWindowData:
        """Return the sensor window at t: the newest window_samples at sensor_rate_hz.

        The cell's history starts at the episode's start (SimCell._start_episode): earlier
        samples repeat its first reading.
        """
        p = self.timing
        return self.cell.sensor_window(t, self._rng, p.window_samples, p.sensor_rate_hz)

    def _capture(self, t: float, sequence: int) -> VlmObservation:
        state = self.cell.state()
        frames = {view: CameraFrame(view=view, stamp_s=t, data=self.renderer.render_jpeg(
            i, state, self.quality)) for i, view in enumerate(self.views)}
        return VlmObservation(frames=frames, sequence=sequence)

    def _tick(self, t: float, features, metrics: EpisodeMetrics) -> ActionChunkData | None:
        """One expert tick at t: the learned runner, or the reference demonstrator.

        Both see the same sensor window of the tick (the demonstrator decides on its force);
        a labeller sees what the policy sees.
        """
        window = self.window(t)
        if self.labeller is not None and self.on_label is not None:
            self.on_label(t, self.labeller.infer(reference_observation(self.cell, window)))
        if self.reference is not None:
            return self.reference.infer(reference_observation(self.cell, window))
        # the node's input lookup (newest of each, robot at the capture, aligned prefix)
        if self.executor.config.merge == 'prefix':
            committed = self.executor.committed_prefix(t)
            self.inputs.put_prefix(None if committed is None else ActionChunkData(
                stamp_s=committed[0], actions=committed[1], dt_s=self.executor.chunk_dt_s))
        self.inputs.put_features(features)
        self.inputs.put_window(window if self.sensor_input == 'recorded' else replace(
            window, samples=np.zeros_like(window.samples)))
        self.inputs.put_robot(self.cell.state().robot_state(t))
        result, _ = tick_newest(self.runner, self.inputs, t)
        if not result.published:
            reason = result.decision.reason
            metrics.refused[reason] = metrics.refused.get(reason, 0) + 1
            return None
        metrics.feature_age_s.append(result.chunk.feature_age_s)
        return result.chunk

    # --- the loop: one physics step at a time ---------------------------------------------

    @property
    def metrics(self) -> EpisodeMetrics | None:
        """Return what the pipeline did in the current episode (or the decided one, settling)."""
        return None if self._episode is None else self._episode.metrics

    def advance_to(self, t_s: float) -> list[EpisodeRecord]:
        """Run the loop until cell time t_s [s]; return the episodes decided meanwhile.

        The Driver of core/sim/live.py's LiveCell (sim_cell --control reference), which asks
        for its streams' wall-clock times; run_episode takes the same steps.
        """
        cell = self.cell
        decided = []
        while (cell.steps + 1) * cell.dt_s <= t_s + 1e-12:
            record = self._step()
            if record is not None:
                decided.append(record)
        return decided

    def run_episode(self, max_time_s: float | None = None) -> EpisodeMetrics:
        """Run the current episode to its outcome (or max_time_s of cell time).

        Returns once the cell has settled into the next episode, so that a caller sees the
        next episode's index in `cell.spec` (a recorder names its bag by it).
        """
        cell = self.cell
        self.advance_to(self._resume_s)        # an episode decided meanwhile: let it settle
        index = cell.spec.index
        limit = cell.t_s + (max_time_s if max_time_s is not None else
                            cell.params.episode.timeout_s + 1.0)
        while cell.t_s < limit:
            record = self._step()
            if record is not None and record.index == index:
                metrics = self._episode.metrics
                self.advance_to(self._resume_s)
                return metrics
        raise RuntimeError(f'episode {index} was not decided within {limit:.1f} s of cell time')

    def run_episodes(self, count: int,
                     on_episode: Callable[[EpisodeMetrics], None] | None = None
                     ) -> list[EpisodeMetrics]:
        """Run the next `count` episodes; `on_episode` gets each one's metrics as it ends."""
        out = []
        for _ in range(count):
            out.append(self.run_episode())
            if on_episode is not None:
                on_episode(out[-1])
        return out

    def _begin(self) -> None:
        """Start the pipeline on the cell's current episode: every component afresh.

        The sensor's noise is seeded by (seed, episode), as the cell seeds the episode: an
        episode plays the same whatever ran before it, so a run split over processes by
        episode ranges gives the episodes of one run.
        """
        self._rng = np.random.default_rng([self._seed, self.cell.spec.index])
        self.executor.reset()
        if self.vlm is not None:
            self.vlm.reset()
            self.runner.reset()
            self.inputs.clear()
        for policy in (self.reference, self.labeller):
            if policy is not None:
                policy.reset()
        t = self.cell.t_s
        self._episode = _Episode(self.cell.spec.index, next_command=t, next_tick=t, vlm_free=t)

    def _step(self) -> EpisodeRecord | None:
        """One physics step: what the pipeline does at the cell's time, then the cell's step."""
        cell, p = self.cell, self.timing
        if (cell.steps + 1) * cell.dt_s <= self._resume_s + 1e-12:
            return cell.step()              # settling: the arm is held, the pipeline waits
        if self._episode is None or self._episode.index != cell.spec.index:
            self._begin()
        ep, metrics, t = self._episode, self._episode.metrics, cell.t_s
        # the VLM in the background: back to back on the newest frames
        if self.vlm is not None and p.mode == 'async' and t >= ep.vlm_free - 1e-12:
            out = self.vlm.infer(self._capture(t, metrics.vl_updates))
            metrics.vl_updates += 1
            ep.vlm_free = t + p.features_after_s
            ep.vl_pending.append((ep.vlm_free, out))
        while ep.vl_pending and ep.vl_pending[0][0] <= t + 1e-12:
            ep.features = ep.vl_pending.popleft()[1]
        # the expert on its grid; sync: a step blocks on the VLM, then ticks
        if t >= ep.next_tick - 1e-12 and t >= ep.sync_busy_until - 1e-12 and ep.sync_tick is None:
            ep.next_tick += self._tick_period * max(1, math.ceil(
                (t - ep.next_tick) / self._tick_period + 1e-9))
            if self.vlm is not None and p.mode == 'sync':
                out = self.vlm.infer(self._capture(t, metrics.vl_updates))
                metrics.vl_updates += 1
                ep.sync_tick = (t + p.features_after_s, out)
            else:
                self._deliver(t, ep.features, metrics, ep.chunks)
        if ep.sync_tick is not None and t >= ep.sync_tick[0] - 1e-12:
            ep.features = ep.sync_tick[1]
            ep.sync_tick = None
            ep.sync_busy_until = self._deliver(t, ep.features, metrics, ep.chunks)
        while ep.chunks and ep.chunks[0][0] <= t + 1e-12:
            arrival, chunk = ep.chunks.popleft()
            if self.on_chunk is not None:
                self.on_chunk(arrival, chunk)
            if self.executor.on_chunk(chunk, arrival):
                metrics.chunks += 1
                metrics.chunk_delay_s.append(arrival - chunk.stamp_s)
        # the executor at its control rate
        if t >= ep.next_command - 1e-12:
            ep.next_command += self._command_period
            robot = cell.state().robot_state(t)
            self.executor.on_robot_state(robot)
            self.executor.on_tool_pose(robot.tool_pose)
            if self.runner is not None:     # the features' capture falls between ticks
                self.inputs.put_robot(robot)
            self.executor.on_sensor_window(self.window(t))
            command = self.executor.step(t)
            if command.valid:
                cell.command(ServoCommand.from_any(command), t + p.command_delay_s)
            if self.on_command is not None:
                self.on_command(t, command)
        if self.observer is not None:
            self.observer(t)
        record = cell.step()
        if record is not None and record.index == ep.index:
            metrics.record = record
            metrics.executor = self.executor.stats()
            # the cell holds the arm for settle_s, then starts the next episode; the pipeline
            # starts on it one step later
            self._resume_s = cell.t_s + cell.params.episode.settle_s + cell.dt_s
        return record

    def _deliver(self, t: float, features, metrics: EpisodeMetrics, chunks: deque) -> float:
        """Tick at t; queue the chunk for its arrival at the executor; return that time."""
        arrival = t + self.timing.expert_latency_s + self.timing.transport_s
        chunk = self._tick(t, features, metrics)
        if chunk is not None:
            chunks.append((arrival, chunk))
        return arrival
