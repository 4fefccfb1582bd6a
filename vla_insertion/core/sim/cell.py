"""The simulated cell: servo-driven arm, peg contact and episodes, stepped at a fixed rate.

One physics step (1 / physics_rate_hz):

    servo.step            joints follow the newest command (or hold)
    FK(servo joints)      the free tip pose, where the arm would be without the block
    contact.update        project the tip onto what the block allows -> measured tip, force
    q_meas = q + J^+ [tip - free tip; 0]   the measured joints that put the tip there
    judge.update          success / timeout / over-force / dropped

Commands carry an arrival time on the cell's clock and take effect at the first step that
reaches it, so the result depends only on the commands and their times, not on how often the
caller advances the cell. After an episode's outcome the servo holds for `settle_s`; then the
arm is put back at home at rest, gripper closed on the peg, with the next episode's hole.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
import math

import numpy as np

from vla_insertion.core.config import require, require_positive, SensorBridgeConfig
from vla_insertion.core.data import DEFAULT_SENSOR_CHANNELS, RobotState, SensorWindowData
from vla_insertion.core.sim.contact import ContactModel, ContactParams, FREE
from vla_insertion.core.sim.episode import (
    episode_spec, EpisodeJudge, EpisodeParams, EpisodeRecord, EpisodeSpec)
from vla_insertion.core.sim.kinematics import (
    euler_xyz_deg, forward_kinematics, jacobian)
from vla_insertion.core.sim.servo import JointServo, ServoCommand, ServoParams
from vla_insertion.core.wire.robot import quaternion_from_euler_xyz

RUNNING = 'running'            # the episode is undecided
SETTLING = 'settling'          # decided; the arm holds until the next episode starts
SENSOR_NOISE = np.array([0.05] * 3 + [0.002] * 3 + [1e-4])   # 1 sigma of fx..tz, distance


class SensorHistory:
    """The noise-free sensor reading (7,) of each of the last `capacity` physics steps."""

    def __init__(self, capacity: int) -> None:
        self._times = np.full(capacity, -np.inf)                  # (N,) [s]
        self._readings = np.full((capacity, 7), np.nan)           # (N, 7), a ring
        self._head = 0                                            # next row to write
        self.count = 0

    def append(self, t_s: float, reading: np.ndarray) -> None:
        self._times[self._head] = t_s
        self._readings[self._head] = reading
        self._head = (self._head + 1) % len(self._times)
        self.count = min(self.count + 1, len(self._times))

    def clear(self) -> None:
        """Forget every reading (readers then see only what is appended after)."""
        self._times[:] = -np.inf
        self._readings[:] = np.nan
        self._head = 0
        self.count = 0

    def at(self, times_s: np.ndarray) -> np.ndarray:
        """Return the readings (T, 7) of the newest step at or before each time (T,) [s]."""
        order = (self._head + np.arange(len(self._times))) % len(self._times)
        times = self._times[order]                                # oldest first
        i = np.searchsorted(times, np.asarray(times_s), side='right') - 1
        return self._readings[order[np.clip(i, len(times) - self.count, len(times) - 1)]]


@dataclass(frozen=True)
class CellParams:
    """Physics rate and the parameters of the parts."""

    physics_rate_hz: float = 1000.0   # fixed integration rate [Hz]
    history_s: float = 1.0            # sensor readings kept for readers (SensorHistory) [s]
    servo: ServoParams = field(default_factory=ServoParams)
    contact: ContactParams = field(default_factory=ContactParams)
    episode: EpisodeParams = field(default_factory=EpisodeParams)

    def __post_init__(self) -> None:
        require_positive('physics_rate_hz', self.physics_rate_hz)
        require(100.0 <= self.physics_rate_hz <= 10_000.0,
                f'physics_rate_hz must be in 100..10000 Hz, got {self.physics_rate_hz!r}')
        require_positive('history_s', self.history_s)


@dataclass(frozen=True)
class CellState:
    """The cell as measured at one step; the renderer draws it, the streams report it."""

    t_s: float                     # cell time [s]
    episode: int                   # episode index
    phase: str                     # RUNNING or SETTLING
    joints_rad: np.ndarray         # (6,) measured joint angles [rad]
    tip_m: np.ndarray              # (3,) measured peg tip in the base frame [m]
    rotation: np.ndarray           # (3, 3) tool orientation in the base frame
    gripper: float                 # 0 open .. 1 closed
    hole_top_m: np.ndarray         # (3,) centre of the hole's opening [m]
    force_n: np.ndarray            # (3,) contact force on the peg, base axes [N]
    torque_nm: np.ndarray          # (3,) about the flange [N m]
    distance_m: float              # laser distance below the tip [m]
    depth_m: float                 # tip below the hole's opening while in the hole [m]
    contact: str                   # contact mode (core.sim.contact.MODES)
    holding: str | None            # why the servo holds, None while it follows commands

    @property
    def rotation_deg(self) -> np.ndarray:
        """Tool rx ry rz (3,), fixed axes R = Rz Ry Rx [deg]."""
        return euler_xyz_deg(self.rotation)

    @property
    def peg_in_hole(self) -> bool:
        """The gripper let go of the peg in the hole: it stays there (the renderer's view)."""
        return self.gripper < 0.5 and self.depth_m > 0.0

    def sensor_reading(self) -> np.ndarray:
        """Noise-free reading (7,): fx fy fz [N], tx ty tz [N m], distance [m]."""
        return np.concatenate([self.force_n, self.torque_nm, [self.distance_m]])

    def robot_state(self, stamp_s: float | None = None) -> RobotState:
        """Return the measured state as the pipeline sees it (SI), stamped `stamp_s` or t_s."""
        rx, ry, rz = np.radians(self.rotation_deg)
        return RobotState(stamp_s=self.t_s if stamp_s is None else stamp_s,
                          joint_positions_rad=self.joints_rad.copy(),
                          tool_position_m=self.tip_m.copy(),
                          tool_orientation_xyzw=quaternion_from_euler_xyz(rx, ry, rz),
                          gripper=self.gripper)


class SimCell:
    """Arm, contact and episodes of a run with `seed`, from episode `first_episode` on."""

    def __init__(self, params: CellParams = CellParams(), seed: int = 0,
                 first_episode: int = 0) -> None:
        self.params = params
        self.seed = seed
        self.dt_s = 1.0 / params.physics_rate_hz
        self.steps = 0                           # physics steps since the start
        self.servo = JointServo(params.servo)
        self.contact = ContactModel(np.zeros(3), params.contact)
        self.records: list[EpisodeRecord] = []   # every decided episode, oldest first
        self.events: deque[tuple[str, object]] = deque()   # ('start', spec) / ('end', record)
        self.history = SensorHistory(max(1, int(round(params.history_s * params.physics_rate_hz))))
        self._pending: deque[tuple[float, ServoCommand]] = deque()
        self._settle_until = math.inf
        self._start_episode(first_episode)

    @property
    def t_s(self) -> float:
        """Cell time [s]: steps times the physics period (no drift from adding floats)."""
        return self.steps * self.dt_s

    def _start_episode(self, index: int) -> None:
        self.spec: EpisodeSpec = episode_spec(self.seed, index, self.params.episode)
        self.servo.reset(self.spec.start_rad, gripper=1.0)
        self.servo.force_hold(False)
        self._pending.clear()
        self.phase = RUNNING
        self._settle_until = math.inf
        self.judge = EpisodeJudge(self.spec, self.params.episode, self.t_s)
        self._measure(first=True)
        # the arm was put at the start pose in no time, so the readings before belong to the
        # previous episode: a peg held against the block after an over-force end would reach
        # the new episode's first sensor windows and trip the executor's force limit at once.
        # Readers see the start pose's reading from the start on (at() repeats the oldest one
        # for earlier times).
        self.history.clear()
        self.history.append(self.t_s, self._state.sensor_reading())
        self.events.append(('start', self.spec))

    def command(self, cmd: ServoCommand, arrival_s: float) -> None:
        """Queue a command that arrives at arrival_s [s] (cell time; commands in time order)."""
        self._pending.append((arrival_s, cmd))

    def step(self) -> EpisodeRecord | None:
        """Advance one physics period; return the record if an episode was decided in it."""
        t0 = self.t_s
        t1 = (self.steps + 1) * self.dt_s
        while self._pending and self._pending[0][0] <= t1:
            arrival, cmd = self._pending.popleft()
            self.servo.command(cmd, max(arrival, t0))
        self.servo.step(t0, self.dt_s)
        self.steps += 1
        self._measure()
        self.history.append(t1, self._state.sensor_reading())
        record = None
        if self.phase == RUNNING:
            record = self.judge.update(t1, float(np.linalg.norm(self._state.force_n)),
                                       self._state.depth_m, self._state.gripper)
            if record is not None:
                self.records.append(record)
                self.events.append(('end', record))
                self.phase = SETTLING
                self.servo.force_hold(True)
                self._settle_until = t1 + self.params.episode.settle_s
        elif t1 >= self._settle_until - 1e-12:
            self._start_episode(self.spec.index + 1)
        return record

    def advance_to(self, t_s: float) -> list[EpisodeRecord]:
        """Step while the next step ends at or before t_s; the records decided meanwhile."""
        decided = []
        while (self.steps + 1) * self.dt_s <= t_s + 1e-12:
            record = self.step()
            if record is not None:
                decided.append(record)
        return decided

    def _measure(self, first: bool = False) -> None:
        q = self.servo.q
        if first or not np.array_equal(q, self._fk_q):   # a holding arm keeps its frames
            self._fk_q, self._frames = q.copy(), forward_kinematics(q)   # (8, 4, 4)
        frames = self._frames
        free_tip, rotation = frames[7, :3, 3], frames[7, :3, :3]
        if first:
            self.contact.reset(self.spec.hole_top_m, free_tip)
        result = self.contact.update(free_tip, rotation[:, 2], self.dt_s)
        if result.mode != FREE and not np.array_equal(result.tip_m, free_tip):
            # the joints that move the tip onto the constraint without turning the tool;
            # damped least squares, so a singular pose bends the tool rather than crashing
            delta = np.r_[result.tip_m - free_tip, 0.0, 0.0, 0.0]
            jac = jacobian(frames)                                     # (6, 6)
            q = q + jac.T @ np.linalg.solve(jac @ jac.T + 1e-10 * np.eye(6), delta)
        self._state = CellState(
            t_s=self.t_s, episode=self.spec.index, phase=self.phase, joints_rad=q.copy(),
            tip_m=result.tip_m, rotation=rotation, gripper=self.servo.gripper,
            hole_top_m=self.spec.hole_top_m, force_n=result.force_n,
            torque_nm=result.torque_nm, distance_m=result.distance_m, depth_m=result.depth_m,
            contact=result.mode, holding=self.servo.hold_reason)

    def state(self) -> CellState:
        """Return the cell as measured after the latest step."""
        return self._state

    def sensor_window(self, t_s: float, rng: np.random.Generator,
                      samples: int = SensorBridgeConfig.window_size,
                      rate_hz: float = SensorBridgeConfig.sample_rate_hz) -> SensorWindowData:
        """Return what the sensor reports up to t_s [s]: `samples` readings at `rate_hz`.

        Every reader of the sensor asks here (PipelineLoop's windows, sim_cell's sensor stream
        through LiveCell), so they all see one sensor: each reading is the newest physics step
        at or before its time (a zero-order hold of the physics rate), plus the sensor's noise
        drawn from `rng` (a reader's own generator, so its run repeats per seed), with the
        laser distance clamped at 0 as the device reports it. The defaults are the sensor
        bridge's window (650 Hz, 65 samples); the history covers `history_s` back.
        """
        times = t_s - np.arange(samples - 1, -1, -1) / rate_hz                  # (W,) oldest first
        readings = self.history.at(times)                                       # (W, 7)
        noisy = readings + rng.normal(0.0, SENSOR_NOISE, readings.shape)
        noisy[:, 6] = np.maximum(noisy[:, 6], 0.0)
        valid = int(np.isfinite(noisy).all(axis=1).sum())
        return SensorWindowData(stamp_s=t_s, samples=noisy.astype(np.float32),
                                valid_samples=valid, sample_rate_hz=rate_hz,
                                channel_names=DEFAULT_SENSOR_CHANNELS)
