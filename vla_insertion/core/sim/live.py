"""The simulated cell on the wall clock, shared by sim_cell's threads; no sockets here.

sim_cell's senders ask for the cell at their own times (the robot state at 100 Hz, the sensor
samples of a batch, a camera frame) and the command receiver hands in commands as they arrive.
`LiveCell` advances the physics on demand, under a lock, to the time asked for, so every stream
sees the same cell and no thread has to tick the physics by itself; commands take effect at
their arrival time whichever thread advances next. What advances it is the cell alone (its arm
moved by the commands received), or core/sim/loop.py's PipelineLoop stepping a policy through
the chunk executor in-process (the reference demonstrator).
"""
from __future__ import annotations

import threading
from typing import Protocol

import numpy as np

from vla_insertion.core.sim.cell import CellState, RUNNING, SETTLING, SimCell
from vla_insertion.core.sim.episode import EpisodeRecord, EpisodeSpec
from vla_insertion.core.sim.servo import ServoCommand
from vla_insertion.core.wire.episode import EpisodeMessage


class Driver(Protocol):
    """What moves the cell forward: the cell itself, or a PipelineLoop around it."""

    def advance_to(self, t_s: float) -> list[EpisodeRecord]: ...


class LiveCell:
    """A SimCell advanced on demand to the caller's time; every method is thread-safe."""

    def __init__(self, cell: SimCell, driver: Driver | None = None, control: str = 'commands'
                 ) -> None:
        self.cell = cell
        self.control = control
        self.driver: Driver = driver if driver is not None else cell   # advanced under _lock
        self._lock = threading.Lock()
        self.commands = 0                    # commands handed to the cell

    def command(self, cmd: ServoCommand, arrival_s: float) -> None:
        """Take a command that arrived at arrival_s (cell time) [s]."""
        with self._lock:
            self.cell.command(cmd, max(arrival_s, self.cell.t_s))
            self.commands += 1

    def state_at(self, t_s: float) -> CellState:
        """Return the cell at t_s (or later, if another reader already advanced past it)."""
        with self._lock:
            self.driver.advance_to(t_s)
            return self.cell.state()

    def sensor_samples(self, t_s: float, count: int, rate_hz: float,
                       rng: np.random.Generator) -> np.ndarray:
        """Return the newest `count` readings (count, 7) float32 at rate_hz up to t_s [s].

        SimCell.sensor_window's samples: the sensor every in-process reader sees.
        """
        with self._lock:
            self.driver.advance_to(t_s)
            return self.cell.sensor_window(t_s, rng, count, rate_hz).samples

    def episode_reports(self, t_s: float, status: bool) -> list[EpisodeMessage]:
        """Report starts and ends since the last call, then the current episode's status if asked.

        The messages lack sender time, session and sequence; the publisher fills them in.
        """
        with self._lock:
            self.driver.advance_to(t_s)
            events = list(self.cell.events)
            self.cell.events.clear()
            state, judge, spec = self.cell.state(), self.cell.judge, self.cell.spec
            phase, start_s = self.cell.phase, self.cell.judge.start_s
        out = []
        for kind, item in events:
            if kind == 'start':
                out.append(self._message('start', item, RUNNING, 0.0))
            else:
                out.append(self._end_message(item, state))
        if status:
            force = float(np.linalg.norm(state.force_n))
            out.append(self._message(
                'status', spec, phase, state.t_s - start_s, depth_m=state.depth_m,
                force_n=force, peak_force_n=judge.peak_force_n,
                mean_force_n=judge.mean_force_n, max_depth_m=judge.max_depth_m))
        return out

    def _message(self, event: str, spec: EpisodeSpec, phase: str, elapsed_s: float,
                 **values) -> EpisodeMessage:
        return EpisodeMessage(
            sender_time_s=0.0, event=event, episode=spec.index, seed=spec.seed,
            hole_m=tuple(float(v) for v in spec.hole_top_m), control=self.control, state=phase,
            elapsed_s=elapsed_s, **values)

    def _end_message(self, record: EpisodeRecord, state: CellState) -> EpisodeMessage:
        same = state.episode == record.index          # still settling in that episode
        values = record.as_dict()
        return EpisodeMessage(
            sender_time_s=0.0, event='end', episode=record.index, seed=record.seed,
            hole_m=record.hole_top_m, control=self.control, state=SETTLING,
            elapsed_s=record.duration_s, depth_m=state.depth_m if same else 0.0,
            force_n=float(np.linalg.norm(state.force_n)) if same else 0.0,
            peak_force_n=record.peak_force_n, mean_force_n=record.mean_force_n,
            max_depth_m=record.max_depth_m, success=record.success, reason=record.reason,
            time_to_insert_s=values['time_to_insert_s'])
