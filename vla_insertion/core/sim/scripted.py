"""The scripted cell (`sim_cell --control scripted`): the arm plays a fixed trajectory.

Open loop, whatever any policy says: the recordings of the first demonstrations were made this
way and this module reproduces them. Everything is a pure function of time, so the camera, robot
and sensor senders of `sim_cell` stay consistent without sharing state: `SimScene.state_at(t)`
gives the joints, the tool pose and the contact state, `SimScene.sensor_sample(state, rng)` the
force/torque + distance reading.

The arm is a UR5e-like 6-axis arm (standard DH). Each episode moves the peg tip along
minimum-jerk Cartesian segments (home -> above the hole -> contact -> inserted -> hold ->
release -> home) with the tool pointing down; joint angles come from a batched damped
least-squares IK solved once per episode variant at start-up.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vla_insertion.core.sim.geometry import (
    BLOCK_SIZE_M, HOLE_CENTRE_M, HOLE_DEPTH_M, INSERT_DEPTH_M)
from vla_insertion.core.sim.kinematics import (
    DOWN_EULER_XYZ_DEG, forward_kinematics, HOME_DEG, min_jerk, solve_ik, TOOL_LENGTH_M)
from vla_insertion.core.wire.episode import EpisodeMessage

# (end of segment as a fraction of the episode, waypoint name); the peg tip reaches the
# waypoint at that fraction along a minimum-jerk profile
SEGMENTS = (
    (0.06, 'home'), (0.36, 'above'), (0.46, 'contact'), (0.68, 'inserted'),
    (0.78, 'inserted'), (0.80, 'released'), (1.00, 'home'),
)
RELEASE_AT = 0.78              # gripper starts opening (fraction of the episode)
GRIPPER_MOVE_S = 0.2           # gripper open/close time [s]


@dataclass(frozen=True)
class SceneState:
    """The cell at one instant."""

    t_s: float                 # time since the scene started [s]
    episode: int
    phase: float               # fraction of the episode, 0..1
    joints_rad: np.ndarray     # (6,)
    tip_m: np.ndarray          # (3,) peg tip (while held) in the base frame [m]
    rotation_deg: np.ndarray   # (3,) tool rx ry rz, fixed axes R = Rz Ry Rx [deg]
    gripper: float             # 0 open .. 1 closed
    hole_top_m: np.ndarray     # (3,) centre of the hole's opening [m]
    peg_in_hole: bool          # released: the peg stays in the hole, drawn there
    depth_m: float             # peg tip below the hole's opening, 0 above it [m]
    misalignment_m: np.ndarray  # (2,) tip x y minus hole x y [m]


class SimScene:
    """Episodes of approach, insertion and retreat; a few seeded variants of the hole position."""

    def __init__(self, episode_s: float = 10.0, seed: int = 0, variants: int = 4,
                 table_rate_hz: float = 100.0) -> None:
        self.episode_s = float(episode_s)
        rng = np.random.default_rng(seed)
        self._rate = table_rate_hz
        n = int(round(self.episode_s * table_rate_hz)) + 1
        self._phase = np.linspace(0.0, 1.0, n)
        home_tip = forward_kinematics(np.radians(HOME_DEG))[7, :3, 3]
        self.holes: list[np.ndarray] = []
        self._tips: list[np.ndarray] = []       # (n, 3) per variant
        self._joints: list[np.ndarray] = []     # (n, 6) per variant
        for _ in range(variants):
            hole = np.r_[HOLE_CENTRE_M + rng.uniform(-0.03, 0.03, 2), BLOCK_SIZE_M[2]]
            offset = rng.uniform(-0.0015, 0.0015, 2)   # approach misalignment, corrected
            tips = self._tip_path(home_tip, hole, offset)
            self.holes.append(hole)
            self._tips.append(tips)
            self._joints.append(solve_ik(tips, np.radians(HOME_DEG)))

    def _tip_path(self, home: np.ndarray, hole: np.ndarray, offset: np.ndarray) -> np.ndarray:
        lateral = np.r_[offset, 0.0]
        points = {'home': home, 'above': hole + lateral + [0, 0, 0.06],
                  'contact': hole + lateral * 0.5, 'inserted': hole - [0, 0, INSERT_DEPTH_M],
                  'released': hole + [0, 0, 0.01]}
        path = np.empty((self._phase.size, 3))
        start, start_at = home, 0.0
        for end_at, name in SEGMENTS:
            inside = (self._phase >= start_at) & (self._phase <= end_at)
            s = min_jerk((self._phase[inside] - start_at) / (end_at - start_at))[:, None]
            path[inside] = start + s * (points[name] - start)
            start, start_at = points[name], end_at
        return path

    def state_at(self, t_s: float) -> SceneState:
        episode, local = divmod(max(t_s, 0.0), self.episode_s)
        variant = int(episode) % len(self.holes)
        x = local * self._rate
        i = min(int(x), self._phase.size - 2)
        w = x - i
        joints = (1 - w) * self._joints[variant][i] + w * self._joints[variant][i + 1]
        tip = (1 - w) * self._tips[variant][i] + w * self._tips[variant][i + 1]
        phase = local / self.episode_s
        hole = self.holes[variant]
        released = phase >= RELEASE_AT
        gripper = 1.0 - min(1.0, max(0.0, (local - RELEASE_AT * self.episode_s)
                                     / GRIPPER_MOVE_S))
        return SceneState(
            t_s=t_s, episode=int(episode), phase=phase, joints_rad=joints, tip_m=tip,
            rotation_deg=DOWN_EULER_XYZ_DEG.copy(), gripper=gripper, hole_top_m=hole,
            peg_in_hole=released, depth_m=max(0.0, float(hole[2] - tip[2])) if not released
            else INSERT_DEPTH_M, misalignment_m=tip[:2] - hole[:2])

    def sensor_sample(self, state: SceneState, rng: np.random.Generator) -> np.ndarray:
        """Return one reading (7,) float32: fx fy fz [N], tx ty tz [N m], distance [m]."""
        f, torque, distance = self.contact(state)
        reading = np.concatenate([f + rng.normal(0.0, 0.05, 3),
                                  torque + rng.normal(0.0, 0.002, 3),
                                  [distance + rng.normal(0.0, 1e-4)]])
        return reading.astype(np.float32)

    @staticmethod
    def contact(state: SceneState) -> tuple[np.ndarray, np.ndarray, float]:
        """Noise-free force (3,) [N], torque (3,) [N m] and laser distance [m] in `state`.

        Forces are what the wrist sensor feels: nothing in free air, a reaction that grows
        with insertion depth (friction) plus a lateral push from any misalignment once the peg
        is in the hole, and nothing once the gripper let go.
        """
        f = np.zeros(3)
        if not state.peg_in_hole and state.depth_m > 0.0:
            f[2] = 3.0 + 400.0 * state.depth_m                     # [N], ~13 N fully in
            f[:2] = -2000.0 * state.misalignment_m                 # [N], ~1 N per 0.5 mm
        lever = TOOL_LENGTH_M
        torque = np.array([-f[1] * lever, f[0] * lever, 0.0])      # [N m]
        # laser distance from the peg tip down to the hole's bottom (or the block top)
        distance = state.tip_m[2] - (state.hole_top_m[2] - HOLE_DEPTH_M)
        if state.peg_in_hole:
            distance = HOLE_DEPTH_M - INSERT_DEPTH_M
        return f, torque, max(0.0, float(distance))


class ScriptedCell:
    """The scripted scene behind sim_cell's streams: the same methods as core.sim.live.LiveCell.

    Nobody judges a scripted episode: its end report has reason 'scripted' and no success.
    """

    control = 'scripted'

    def __init__(self, scene: SimScene, seed: int) -> None:
        self.scene = scene
        self.seed = seed
        self._reported: int | None = None      # episode whose start was reported last

    def state_at(self, t_s: float) -> SceneState:
        return self.scene.state_at(t_s)

    def sensor_samples(self, times_s: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Return readings (T, 7) float32 at times (T,) [s], with the sensor's noise."""
        return np.stack([self.scene.sensor_sample(self.scene.state_at(t), rng)
                         for t in times_s])

    def episode_reports(self, t_s: float, status: bool) -> list[EpisodeMessage]:
        """Report starts and ends since the last call, then the episode's status if asked."""
        state = self.scene.state_at(t_s)
        out = []
        if self._reported != state.episode:
            if self._reported is not None:
                out.append(self._message('end', self._reported, self.scene.episode_s,
                                         reason='scripted'))
            out.append(self._message('start', state.episode, 0.0))
            self._reported = state.episode
        if status:
            force, _, _ = self.scene.contact(state)
            out.append(self._message('status', state.episode, state.phase * self.scene.episode_s,
                                     depth_m=state.depth_m,
                                     force_n=float(np.linalg.norm(force))))
        return out

    def _message(self, event: str, episode: int, elapsed_s: float, **values) -> EpisodeMessage:
        hole = self.scene.holes[episode % len(self.scene.holes)]
        return EpisodeMessage(
            sender_time_s=0.0, event=event, episode=episode, seed=self.seed,
            hole_m=tuple(float(v) for v in hole), control=self.control, state='running',
            elapsed_s=elapsed_s, **values)
