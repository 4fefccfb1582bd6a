"""The simulated cell, or its servo alone, on the wall clock, shared by threads; no sockets.

sim_cell's senders ask for the cell at their own times (the robot state at 100 Hz, the sensor
samples of a batch, a camera frame) and the command receiver hands in commands as they arrive.
`LiveCell` advances the physics on demand, under a lock, to the time asked for, so every stream
sees the same cell and no thread has to tick the physics by itself; commands take effect at
their arrival time whichever thread advances next. What advances it is the cell alone (its arm
moved by the commands received), or core/sim/loop.py's PipelineLoop stepping a policy through
the chunk executor in-process (the reference demonstrator).

`LiveServo` is the same for the arm's joint servo alone (no contact, no episodes): the robot
that robot_receiver's `sim` backend drives (core/robot/backends.py). Both take commands through
`command(cmd, arrival_s)` and say where the arm is through `joints_at(t_s)`.
"""
from __future__ import annotations

from dataclasses import dataclass
import threading
from typing import Protocol

import numpy as np

from vla_insertion.core.config import require_positive
from vla_insertion.core.sim.cell import CellState, RUNNING, SETTLING, SimCell
from vla_insertion.core.sim.episode import EpisodeRecord, EpisodeSpec
from vla_insertion.core.sim.kinematics import HOME_RAD
from vla_insertion.core.sim.servo import JointServo, ServoCommand, ServoParams
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

    def joints_at(self, t_s: float) -> np.ndarray:
        """Return the arm's joints [rad] and gripper at t_s, (7,)."""
        with self._lock:
            self.driver.advance_to(t_s)
            servo = self.cell.servo
            return np.append(servo.q, servo.gripper)

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


@dataclass(frozen=True)
class ServoState:
    """The servo at one time."""

    t_s: float                     # servo time [s]
    positions: np.ndarray          # (6,) joints [rad]
    velocities: np.ndarray         # (6,) joint velocities [rad/s]
    gripper: float                 # 0 open .. 1 closed
    hold_reason: str | None        # why it holds (core/sim/servo.py), None while following


class LiveServo:
    """A JointServo stepped on demand at `rate_hz` to the caller's time; thread-safe.

    Times are the caller's time base [s] from 0 (e.g. time.monotonic() - t0). A command takes
    effect at its arrival time, or now if the servo was already stepped past it. It starts at
    `q` (default: the sim's home pose) at rest, holding until the first command.
    """

    def __init__(self, params: ServoParams = ServoParams(), rate_hz: float = 1000.0,
                 q: np.ndarray | None = None, gripper: float = 1.0) -> None:
        require_positive('rate_hz', rate_hz)
        self.servo = JointServo(params)
        self.servo.reset(HOME_RAD if q is None else q, gripper)      # at rest, holding
        self.dt_s = 1.0 / rate_hz
        self.steps = 0                       # steps since the start: time without drift
        self.commands = 0                    # commands handed to the servo
        self._lock = threading.Lock()

    def _advance(self, t_s: float) -> None:
        while (self.steps + 1) * self.dt_s <= t_s + 1e-12:
            self.servo.step(self.steps * self.dt_s, self.dt_s)
            self.steps += 1

    def command(self, cmd: ServoCommand, arrival_s: float) -> None:
        """Take a command that arrived at arrival_s [s]."""
        with self._lock:
            self._advance(arrival_s)
            self.servo.command(cmd, max(arrival_s, self.steps * self.dt_s))
            self.commands += 1

    def state_at(self, t_s: float) -> ServoState:
        """Return the servo at t_s (or later, if another caller already stepped past it)."""
        with self._lock:
            self._advance(t_s)
            s = self.servo
            return ServoState(self.steps * self.dt_s, s.q.copy(), s.v.copy(), s.gripper,
                              s.hold_reason)

    def joints_at(self, t_s: float) -> np.ndarray:
        """Return the arm's joints [rad] and gripper at t_s, (7,)."""
        state = self.state_at(t_s)
        return np.append(state.positions, state.gripper)
