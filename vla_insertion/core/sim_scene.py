"""Old home of the simulated cell; everything now lives in `vla_insertion.core.sim`.

Kept so code written against the old path keeps working: the scripted scene, the kinematics and
the cell's dimensions, re-exported under their old names.
"""
from vla_insertion.core.sim.geometry import (  # noqa: F401
    BLOCK_SIZE_M, HOLE_CENTRE_M, HOLE_DEPTH_M, HOLE_RADIUS_M, INSERT_DEPTH_M, PEG_LENGTH_M,
    PEG_RADIUS_M)
from vla_insertion.core.sim.kinematics import (  # noqa: F401
    DH_A, DH_ALPHA, DH_D, DOWN, DOWN_EULER_XYZ_DEG, forward_kinematics, HOME_DEG, min_jerk,
    solve_ik, TOOL_LENGTH_M)
from vla_insertion.core.sim.scripted import (  # noqa: F401
    GRIPPER_MOVE_S, RELEASE_AT, SceneState, SEGMENTS, SimScene)
