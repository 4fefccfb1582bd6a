"""Dimensions of the simulated cell: the peg, the block with its hole, the nominal hole place.

All lengths in metres, in the robot base frame (z up, the table top at z = 0). The block sits on
the table; its top face is at z = BLOCK_SIZE_M[2] and the hole is drilled straight down from the
centre of the top face.
"""
from __future__ import annotations

import numpy as np

PEG_LENGTH_M = 0.08            # visible peg below the gripper fingers
PEG_RADIUS_M = 0.005
HOLE_RADIUS_M = 0.0055
CLEARANCE_M = HOLE_RADIUS_M - PEG_RADIUS_M   # radial play of the peg in the hole (0.5 mm)
CHAMFER_M = 0.001              # chamfer width at the hole's rim: the tip enters within this
HOLE_DEPTH_M = 0.035
BLOCK_SIZE_M = (0.12, 0.12, 0.05)   # x y z of the block with the hole; it sits on z = 0
INSERT_DEPTH_M = 0.025         # peg tip below the hole's opening when inserted
HOLE_CENTRE_M = np.array([-0.42, -0.27])   # nominal hole x y in the base frame, beside home


def block_footprint_contains(xy: np.ndarray, hole_top_m: np.ndarray) -> bool:
    """Return True if xy (2,) [m] lies over the block whose hole opening is at hole_top_m."""
    # plain floats: called every physics step, where numpy's per-call overhead dominates
    return (abs(float(xy[0]) - float(hole_top_m[0])) <= BLOCK_SIZE_M[0] / 2.0
            and abs(float(xy[1]) - float(hole_top_m[1])) <= BLOCK_SIZE_M[1] / 2.0)
