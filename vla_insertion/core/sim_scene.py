"""A simulated peg-in-hole cell: arm kinematics, the insertion trajectory and the sensor model.

Everything is a pure function of time, so the camera, robot and sensor senders of `sim_cell`
stay consistent without sharing state: `SimScene.state_at(t)` gives the joints, the tool pose
and the contact state, `SimScene.sensor_sample(t, rng)` the force/torque + distance reading.

The arm is a UR5e-like 6-axis arm (standard DH). Each episode moves the peg tip along
minimum-jerk Cartesian segments (home -> above the hole -> contact -> inserted -> hold ->
release -> home) with the tool pointing down; joint angles come from a batched damped
least-squares IK solved once per episode variant at start-up.
"""
from __future__ import annotations

from dataclasses import dataclass
import math

import numpy as np

# UR5e-like standard DH parameters [m, rad]
DH_D = np.array([0.1625, 0.0, 0.0, 0.1333, 0.0997, 0.0996])
DH_A = np.array([0.0, -0.425, -0.3922, 0.0, 0.0, 0.0])
DH_ALPHA = np.array([math.pi / 2, 0.0, 0.0, math.pi / 2, -math.pi / 2, 0.0])
TOOL_LENGTH_M = 0.20           # flange to peg tip along the flange z axis
PEG_LENGTH_M = 0.08            # visible peg below the gripper fingers
PEG_RADIUS_M = 0.005
HOLE_RADIUS_M = 0.0055
HOLE_DEPTH_M = 0.035
BLOCK_SIZE_M = (0.12, 0.12, 0.05)   # x y z of the block with the hole; it sits on z = 0
INSERT_DEPTH_M = 0.025
HOME_DEG = np.array([0.0, -100.0, 100.0, -90.0, -90.0, 0.0])
# Tool pointing straight down (flange z = -world z), as at HOME_DEG: R = Rz(90) Rx(180).
DOWN = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
DOWN_EULER_XYZ_DEG = np.array([180.0, 0.0, 90.0])
HOLE_CENTRE_M = np.array([-0.42, -0.27])   # nominal hole x y in the base frame, beside home

# (end of segment as a fraction of the episode, waypoint name); the peg tip reaches the
# waypoint at that fraction along a minimum-jerk profile
SEGMENTS = (
    (0.06, 'home'), (0.36, 'above'), (0.46, 'contact'), (0.68, 'inserted'),
    (0.78, 'inserted'), (0.80, 'released'), (1.00, 'home'),
)
RELEASE_AT = 0.78              # gripper starts opening (fraction of the episode)
GRIPPER_MOVE_S = 0.2           # gripper open/close time [s]


def forward_kinematics(q: np.ndarray) -> np.ndarray:
    """Return frames (..., 8, 4, 4): base, joints 1..6 and the peg tip, for q (..., 6) [rad]."""
    q = np.asarray(q, dtype=np.float64)
    batch = q.shape[:-1]
    frames = np.empty(batch + (8, 4, 4))
    t = np.broadcast_to(np.eye(4), batch + (4, 4)).copy()
    frames[..., 0, :, :] = t
    ca, sa = np.cos(DH_ALPHA), np.sin(DH_ALPHA)
    for i in range(6):
        ct, st = np.cos(q[..., i]), np.sin(q[..., i])
        a = np.zeros(batch + (4, 4))
        a[..., 0, 0], a[..., 0, 1], a[..., 0, 2], a[..., 0, 3] = ct, -st * ca[i], st * sa[i], \
            DH_A[i] * ct
        a[..., 1, 0], a[..., 1, 1], a[..., 1, 2], a[..., 1, 3] = st, ct * ca[i], -ct * sa[i], \
            DH_A[i] * st
        a[..., 2, 1], a[..., 2, 2], a[..., 2, 3] = sa[i], ca[i], DH_D[i]
        a[..., 3, 3] = 1.0
        t = t @ a
        frames[..., i + 1, :, :] = t
    tool = np.eye(4)
    tool[2, 3] = TOOL_LENGTH_M
    frames[..., 7, :, :] = t @ tool
    return frames


def _rotation_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Small-angle rotation vector (..., 3) taking `current` to `target` (world frame)."""
    r = target @ np.swapaxes(current, -1, -2)
    return 0.5 * np.stack([r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0],
                           r[..., 1, 0] - r[..., 0, 1]], axis=-1)


def solve_ik(positions: np.ndarray, q0: np.ndarray, iterations: int = 40,
             damping: float = 1e-3) -> np.ndarray:
    """Joint angles (T, 6) [rad] putting the peg tip at positions (T, 3) [m], tool down.

    Batched damped least squares with a numeric Jacobian, every row started from q0 (6,) so all
    rows land on the same arm configuration and the trajectory is smooth.
    """
    n = positions.shape[0]
    q = np.tile(q0, (n, 1))
    eps = 1e-6
    for _ in range(iterations):
        probe = q[:, None, :] + np.concatenate([np.zeros((1, 6)), eps * np.eye(6)])  # (T, 7, 6)
        tips = forward_kinematics(probe)[..., 7, :, :]                             # (T, 7, 4, 4)
        pos, rot = tips[..., :3, 3], tips[..., :3, :3]
        pose = np.concatenate([pos, _rotation_error(DOWN, rot)], axis=-1)           # (T, 7, 6)
        jac = np.swapaxes(-(pose[:, 1:] - pose[:, :1]) / eps, 1, 2)                 # (T, 6, 6)
        jac[:, :3] *= -1.0    # position columns: d(pos); rotation: d(-error) = d(rotation)
        err = np.concatenate([positions - pos[:, 0], _rotation_error(DOWN, rot[:, 0])], -1)
        jjt = jac @ np.swapaxes(jac, 1, 2) + damping * np.eye(6)
        q = q + (np.swapaxes(jac, 1, 2) @ np.linalg.solve(jjt, err[..., None]))[..., 0]
        if np.abs(err).max() < 1e-7:
            break
    return q


def min_jerk(s: np.ndarray) -> np.ndarray:
    s = np.clip(s, 0.0, 1.0)
    return s ** 3 * (10.0 - 15.0 * s + 6.0 * s * s)


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
        """Return one reading (7,) float32: fx fy fz [N], tx ty tz [N m], distance [m].

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
        reading = np.concatenate([f + rng.normal(0.0, 0.05, 3),
                                  torque + rng.normal(0.0, 0.002, 3),
                                  [max(0.0, distance) + rng.normal(0.0, 1e-4)]])
        return reading.astype(np.float32)
