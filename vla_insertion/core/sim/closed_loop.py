"""A policy driving the simulated cell in-process: for tests, demonstrations and evaluation.

    every physics step (1 / physics_rate_hz)     SimCell.step()
    every policy_period_s                        obs = observe(cell); chunk = policy.infer(obs)
      ... latency_s (+- jitter) later            source.on_chunk(chunk, arrival)
    every command_period_s                       source.on_robot_state(measured state)
                                                 source.on_sensor_window(newest window)
                                                 cmd = source.step(now) -> cell.command(cmd)

The command source is anything with the chunk executor's interface (`on_chunk(chunk,
arrival_s)`, `on_robot_state(RobotState)`, `on_sensor_window(SensorWindowData)`, `step(now_s)`
returning an object with `positions`, `velocities`, `gripper`, `armed`, `hold` and optionally
`lead_s`, `timeout_s`), so the real executor drops in for the built-in `ChunkFollower`. Time is
the cell's clock; nothing sleeps, so it runs as fast as the CPU allows.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from vla_insertion.core.config import require, require_non_negative, require_positive
from vla_insertion.core.data import (
    ActionChunkData, DEFAULT_SENSOR_CHANNELS, NUM_JOINTS, RobotState, SensorWindowData)
from vla_insertion.core.interfaces import Model
from vla_insertion.core.sim.cell import SENSOR_NOISE, SimCell
from vla_insertion.core.sim.episode import EpisodeRecord
from vla_insertion.core.sim.reference import ReferenceObservation
from vla_insertion.core.sim.servo import ServoCommand


class CommandSource(Protocol):
    """What turns chunks into joint commands (core/executor's ChunkExecutor, ChunkFollower)."""

    def on_chunk(self, chunk: ActionChunkData, arrival_s: float) -> None: ...

    def on_robot_state(self, state: RobotState) -> None: ...

    def on_sensor_window(self, window: SensorWindowData) -> None: ...

    def step(self, now_s: float) -> Any: ...


class ChunkFollower:
    """The simplest chunk executor: the newest chunk, linearly interpolated at now + lead.

    Before the first chunk, and once `now + lead` is more than `max_extrapolation_s` past the
    newest chunk's last action, it asks the robot to hold where it is.
    """

    def __init__(self, lead_s: float = 0.05, timeout_s: float = 0.2,
                 max_extrapolation_s: float = 0.2) -> None:
        self.lead_s = lead_s
        self.timeout_s = timeout_s
        self.max_extrapolation_s = max_extrapolation_s
        self.reset()

    def reset(self) -> None:
        self._chunk: ActionChunkData | None = None
        self._joints = np.zeros(NUM_JOINTS)
        self._gripper = 1.0

    def on_chunk(self, chunk: ActionChunkData, arrival_s: float) -> None:
        if self._chunk is None or chunk.stamp_s >= self._chunk.stamp_s:
            self._chunk = chunk

    def on_robot_state(self, state: RobotState) -> None:
        self._joints = np.asarray(state.joint_positions_rad, dtype=np.float64)
        self._gripper = state.gripper

    def on_sensor_window(self, window: SensorWindowData) -> None:
        """Not used: this follower does no force monitoring."""

    def step(self, now_s: float) -> ServoCommand:
        chunk, t = self._chunk, now_s + self.lead_s
        last = -1 if chunk is None else len(chunk.actions) - 1
        if chunk is None or t > chunk.stamp_s + last * chunk.dt_s + self.max_extrapolation_s:
            return ServoCommand(self._joints.copy(), np.zeros(NUM_JOINTS), self._gripper,
                                self.lead_s, self.timeout_s, armed=True, hold=True)
        actions = np.asarray(chunk.actions, dtype=np.float64)              # (H, 7)
        x = max(0.0, (t - chunk.stamp_s) / chunk.dt_s)                      # fractional index
        if x >= last:                                  # at or past the last action: stay there
            target, velocity = actions[last], np.zeros(actions.shape[1])
        else:
            i = int(x)
            target = actions[i] + (x - i) * (actions[i + 1] - actions[i])
            velocity = (actions[i + 1] - actions[i]) / chunk.dt_s
        return ServoCommand(target[:NUM_JOINTS], velocity[:NUM_JOINTS],
                            float(np.clip(target[NUM_JOINTS], 0.0, 1.0)), self.lead_s,
                            self.timeout_s, armed=True, hold=False)


@dataclass(frozen=True)
class LoopParams:
    """Rates and delays of the in-process loop."""

    policy_period_s: float = 0.1   # time between observations given to the policy [s]
    latency_s: float = 0.1         # observation -> chunk at the command source [s]
    latency_jitter_s: float = 0.0  # latency varies uniformly by +- this [s]
    command_period_s: float = 0.01  # time between commands (and robot states to the source) [s]
    command_delay_s: float = 0.0   # command -> arrival at the robot [s]
    window_samples: int = 65       # sensor window length given to the source [samples]
    seed: int = 0                  # seed of the latency jitter and the sensor noise

    def __post_init__(self) -> None:
        for name in ('policy_period_s', 'command_period_s'):
            require_positive(name, getattr(self, name))
        for name in ('latency_s', 'latency_jitter_s', 'command_delay_s'):
            require_non_negative(name, getattr(self, name))
        require(self.latency_jitter_s <= self.latency_s,
                f'latency_jitter_s must be <= latency_s, got {self.latency_jitter_s!r}')
        require(isinstance(self.window_samples, int) and self.window_samples >= 1,
                f'window_samples must be an integer >= 1, got {self.window_samples!r}')


def reference_observation(cell: SimCell) -> ReferenceObservation:
    """Return the demonstrator's observation now: measured state and the episode's hole."""
    return ReferenceObservation(robot=cell.state().robot_state(),
                                hole_top_m=cell.spec.hole_top_m.copy(),
                                approach_offset_m=cell.spec.approach_offset_m.copy())


class ClosedLoop:
    """Drive `cell` with `policy` through `source`; advance in cell time, never sleeping."""

    def __init__(self, cell: SimCell, policy: Model, source: CommandSource | None = None,
                 params: LoopParams = LoopParams(),
                 observe: Callable[[SimCell], Any] = reference_observation) -> None:
        self.cell = cell
        self.policy = policy
        self.source = source if source is not None else ChunkFollower()
        self.params = params
        self.observe = observe
        self._rng = np.random.default_rng(params.seed)
        self._chunks: deque[tuple[float, ActionChunkData]] = deque()   # (arrival, chunk)
        self._episode = cell.spec.index
        self._next_policy_s = cell.t_s
        self._next_command_s = cell.t_s
        self.inferences = 0

    def advance_to(self, t_s: float) -> list[EpisodeRecord]:
        """Run the loop until cell time t_s; return the episodes decided meanwhile."""
        cell, p = self.cell, self.params
        decided = []
        while (cell.steps + 1) * cell.dt_s <= t_s + 1e-12:
            now = cell.t_s
            if cell.spec.index != self._episode:       # a new episode: start over
                self._episode = cell.spec.index
                self._chunks.clear()
                self.policy.reset()
                if hasattr(self.source, 'reset'):
                    self.source.reset()
            while self._chunks and self._chunks[0][0] <= now + 1e-12:
                arrival, chunk = self._chunks.popleft()
                self.source.on_chunk(chunk, arrival)
            if now >= self._next_command_s - 1e-12:
                self._next_command_s += p.command_period_s
                self.source.on_robot_state(cell.state().robot_state())
                self.source.on_sensor_window(self._sensor_window(now))
                cmd = ServoCommand.from_any(self.source.step(now))
                cell.command(cmd, now + p.command_delay_s)
            if now >= self._next_policy_s - 1e-12:
                self._next_policy_s += p.policy_period_s
                self._infer(now)
            record = cell.step()
            if record is not None:
                decided.append(record)
        return decided

    def _infer(self, now: float) -> None:
        chunk = self.policy.infer(self.observe(self.cell))
        self.inferences += 1
        p = self.params
        latency = p.latency_s + (self._rng.uniform(-p.latency_jitter_s, p.latency_jitter_s)
                                 if p.latency_jitter_s > 0 else 0.0)
        arrival = now + latency
        # chunks overtaking each other would arrive out of order; keep arrival order
        if self._chunks and arrival < self._chunks[-1][0]:
            arrival = self._chunks[-1][0]
        self._chunks.append((arrival, chunk))

    def _sensor_window(self, now: float) -> SensorWindowData:
        """Return the newest window_samples physics-rate readings with the sensor's noise."""
        n = self.params.window_samples
        samples = self.cell.history.latest(n)                          # (W, 7) oldest first
        samples += self._rng.normal(0.0, SENSOR_NOISE, samples.shape)
        return SensorWindowData(
            stamp_s=now, samples=samples.astype(np.float32),
            valid_samples=min(n, self.cell.history.count),
            sample_rate_hz=self.cell.params.physics_rate_hz,
            channel_names=DEFAULT_SENSOR_CHANNELS)

    def run_episodes(self, count: int, max_time_s: float | None = None) -> list[EpisodeRecord]:
        """Run until `count` more episodes are decided (or max_time_s of cell time passed)."""
        start = len(self.cell.records)
        limit = self.cell.t_s + (max_time_s if max_time_s is not None
                                 else count * (self.cell.params.episode.timeout_s
                                               + self.cell.params.episode.settle_s + 1.0))
        while len(self.cell.records) - start < count and self.cell.t_s < limit:
            self.advance_to(min(limit, self.cell.t_s + 1.0))
        return self.cell.records[start:start + count]
