"""Kinematics of the UR5e-like arm: forward kinematics, the geometric Jacobian, batched IK.

Standard DH parameters; frame 7 is the peg tip, TOOL_LENGTH_M along the flange z axis. The tool
points down (flange z = world -z) at the home pose and in every pose the IK is asked for unless
told otherwise.
"""
from __future__ import annotations

import math

import numpy as np

# UR5e-like standard DH parameters [m, rad]
DH_D = np.array([0.1625, 0.0, 0.0, 0.1333, 0.0997, 0.0996])
DH_A = np.array([0.0, -0.425, -0.3922, 0.0, 0.0, 0.0])
DH_ALPHA = np.array([math.pi / 2, 0.0, 0.0, math.pi / 2, -math.pi / 2, 0.0])
TOOL_LENGTH_M = 0.20           # flange to peg tip along the flange z axis
HOME_DEG = np.array([0.0, -100.0, 100.0, -90.0, -90.0, 0.0])
HOME_RAD = np.radians(HOME_DEG)
# Tool pointing straight down (flange z = -world z), as at HOME_DEG: R = Rz(90) Rx(180).
DOWN = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
_TOOL = np.eye(4)
_TOOL[2, 3] = TOOL_LENGTH_M


def _link_terms() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DH link transforms are linear in cos q and sin q: A_i = cos q_i C_i + sin q_i S_i + K_i."""
    ca, sa = np.round(np.cos(DH_ALPHA), 15), np.sin(DH_ALPHA)
    c, s, k = np.zeros((6, 4, 4)), np.zeros((6, 4, 4)), np.zeros((6, 4, 4))
    c[:, 0, 0], c[:, 1, 1], c[:, 1, 2], c[:, 0, 3] = 1.0, ca, -sa, DH_A
    s[:, 1, 0], s[:, 0, 1], s[:, 0, 2], s[:, 1, 3] = 1.0, -ca, sa, DH_A
    k[:, 2, 1], k[:, 2, 2], k[:, 2, 3], k[:, 3, 3] = sa, ca, DH_D, 1.0
    return c, s, k


_LINK_COS, _LINK_SIN, _LINK_CONST = _link_terms()          # (6, 4, 4) each
_EYE4 = np.eye(4)


def forward_kinematics(q: np.ndarray) -> np.ndarray:
    """Return frames (..., 8, 4, 4): base, joints 1..6 and the peg tip, for q (..., 6) [rad]."""
    q = np.asarray(q, dtype=np.float64)
    links = (np.cos(q)[..., None, None] * _LINK_COS + np.sin(q)[..., None, None] * _LINK_SIN
             + _LINK_CONST)                                         # (..., 6, 4, 4)
    frames = np.empty(q.shape[:-1] + (8, 4, 4))
    frames[..., 0, :, :] = _EYE4
    t = links[..., 0, :, :]
    frames[..., 1, :, :] = t
    for i in range(1, 6):
        t = t @ links[..., i, :, :]
        frames[..., i + 1, :, :] = t
    frames[..., 7, :, :] = t @ _TOOL
    return frames


def jacobian(frames: np.ndarray) -> np.ndarray:
    """Geometric Jacobian (..., 6, 6) of the peg tip from FK frames (..., 8, 4, 4).

    Rows: tip linear velocity [m/s] then angular velocity [rad/s], both in the base frame;
    column i is joint i + 1, which turns about the z axis of frame i.
    """
    axes = frames[..., :6, :3, 2]                                   # (..., 6, 3)
    origins = frames[..., :6, :3, 3]                                # (..., 6, 3)
    tip = frames[..., 7:8, :3, 3]                                   # (..., 1, 3)
    linear = np.cross(axes, tip - origins)                          # (..., 6, 3)
    return np.concatenate([np.swapaxes(linear, -1, -2), np.swapaxes(axes, -1, -2)], axis=-2)


def rotation_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Small-angle rotation vector (..., 3) taking `current` to `target` (world frame)."""
    r = target @ np.swapaxes(current, -1, -2)
    return 0.5 * np.stack([r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0],
                           r[..., 1, 0] - r[..., 0, 1]], axis=-1)


def solve_ik(positions: np.ndarray, q0: np.ndarray, rotation: np.ndarray = DOWN,
             iterations: int = 40, damping: float = 1e-6, tolerance: float = 1e-7
             ) -> np.ndarray:
    """Joint angles (T, 6) [rad] putting the peg tip at positions (T, 3) [m] with `rotation`.

    Batched damped least squares on the geometric Jacobian, every row started from q0 (6,) so
    all rows land on the same arm configuration and a path stays smooth.
    """
    positions = np.asarray(positions, dtype=np.float64)
    q = np.tile(np.asarray(q0, dtype=np.float64), (positions.shape[0], 1))     # (T, 6)
    eye = damping * np.eye(6)
    for _ in range(iterations):
        frames = forward_kinematics(q)                                         # (T, 8, 4, 4)
        tip = frames[:, 7]
        err = np.concatenate([positions - tip[:, :3, 3],
                              rotation_error(rotation, tip[:, :3, :3])], axis=-1)  # (T, 6)
        if np.abs(err).max() < tolerance:
            break
        jac = jacobian(frames)                                                 # (T, 6, 6)
        jt = np.swapaxes(jac, 1, 2)
        q = q + (jt @ np.linalg.solve(jac @ jt + eye, err[..., None]))[..., 0]
    return q


def euler_xyz_deg(rotation: np.ndarray) -> np.ndarray:
    """Fixed-axis angles rx ry rz (3,) [deg] of a rotation matrix (3, 3), R = Rz Ry Rx."""
    ry = -math.asin(max(-1.0, min(1.0, rotation[2, 0])))
    rx = math.atan2(rotation[2, 1], rotation[2, 2])
    rz = math.atan2(rotation[1, 0], rotation[0, 0])
    return np.degrees([rx, ry, rz])
