"""Peg-on-block contact: where the peg tip can be, and the force the wrist sensor feels.

The arm is position-controlled and the block is rigid, so contact is modelled as a kinematic
constraint plus the servo's stiffness: the servo drives the arm toward its own setpoint (the
free tip position `p_free`, from FK of the servo joints); the environment allows only a set of
tip positions; the measured tip `p` is `p_free` projected onto that set, and the contact force
on the peg is the servo's stiffness times the distance it is held back,

    f = K (p - p_free),   K = diag(lateral, lateral, axial)  [N/m]

(the stiffer `jam_stiffness_n_m` axially while jammed, so the force rises steeply there). The
projection is exact and needs no integration, so it is stable at any stiffness and time step.
The allowed set depends on the contact mode:

    free     above the block (or the table): no constraint, no force
    surface  the tip pressed on the block's top face outside the hole, or on the table: z >= top
    side     the tip pressed against a side face of the block from outside: x (or y) held there
    inside   in the hole: z above the bottom, lateral offset within the radial clearance
    jammed   wedged at the rim: z above the depth where it stuck, x y where it stuck

The tip enters the hole when it crosses the top face within CLEARANCE_M + CHAMFER_M of the hole
axis. It jams if it enters with a lateral offset above `jam_lateral_m` or a tilt above
`jam_tilt_deg`, or if it tilts beyond `jam_tilt_deg` while in the hole. Only pulling the tip back
above the top face frees it. The block is a height field: its side walls are not modelled.

On top of the constraint force, friction: in the hole an axial force that grows with depth and
with the wall's normal force and opposes the axial motion; on the top face a sliding friction
opposing the lateral motion. Forces are the environment's force on the peg in the base frame's
axes [N]; torques are about the flange (where the sensor sits) [N m].
"""
from __future__ import annotations

from dataclasses import dataclass, field
import math

import numpy as np

from vla_insertion.core.config import require, require_non_negative, require_positive
from vla_insertion.core.sim.geometry import (
    block_footprint_contains, BLOCK_SIZE_M, CHAMFER_M, CLEARANCE_M, HOLE_DEPTH_M,
    HOLE_RADIUS_M)
from vla_insertion.core.sim.kinematics import TOOL_LENGTH_M

FREE = 'free'
SURFACE = 'surface'
SIDE = 'side'
INSIDE = 'inside'
JAMMED = 'jammed'
MODES = (FREE, SURFACE, SIDE, INSIDE, JAMMED)


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return a x b for two 3-vectors (np.cross costs ~50 us a call, this ~2)."""
    return np.array([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2],
                     a[0] * b[1] - a[1] * b[0]])


@dataclass(frozen=True)
class ContactParams:
    """Stiffness, friction and jamming thresholds of the peg-in-hole contact."""

    axial_stiffness_n_m: float = 20_000.0    # servo stiffness against the block, vertical [N/m]
    lateral_stiffness_n_m: float = 20_000.0  # servo stiffness against the hole wall [N/m]
    jam_stiffness_n_m: float = 100_000.0     # axial stiffness of a wedged peg [N/m]
    jam_lateral_m: float = 0.0012   # entering further than this off the hole axis jams [m]
    jam_tilt_deg: float = 2.0       # entering (or turning in the hole) tilted more jams [deg]
    jam_depth_m: float = 0.0015     # how far a peg jammed at the rim gets in [m]
    friction_base_n: float = 2.0    # axial friction in the hole at zero depth [N]
    friction_per_m: float = 400.0   # axial friction growth with depth [N/m] (~12 N at 25 mm)
    friction_coefficient: float = 0.3  # sliding friction / normal force (wall, top face)
    friction_speed_m_s: float = 0.002  # speed at which friction reaches ~76 % of its value [m/s]

    def __post_init__(self) -> None:
        for name in ('axial_stiffness_n_m', 'lateral_stiffness_n_m', 'jam_stiffness_n_m',
                     'jam_lateral_m', 'jam_tilt_deg', 'jam_depth_m', 'friction_speed_m_s'):
            require_positive(name, getattr(self, name))
        for name in ('friction_base_n', 'friction_per_m', 'friction_coefficient'):
            require_non_negative(name, getattr(self, name))
        require(self.jam_depth_m < HOLE_DEPTH_M,
                f'jam_depth_m must be < the hole depth {HOLE_DEPTH_M} m, got {self.jam_depth_m}')


@dataclass(frozen=True)
class ContactResult:
    """The contact at one step."""

    tip_m: np.ndarray              # (3,) measured (constrained) tip position [m]
    force_n: np.ndarray            # (3,) environment on the peg, base axes [N]
    torque_nm: np.ndarray          # (3,) about the flange, base axes [N m]
    mode: str                      # one of MODES
    depth_m: float                 # tip below the hole's opening while in the hole, else 0 [m]
    distance_m: float              # laser: tip down to the hole bottom / block top / table [m]


@dataclass
class ContactModel:
    """Contact of the peg tip with one block whose hole opening is at `hole_top_m`."""

    hole_top_m: np.ndarray                       # (3,) centre of the hole's opening [m]
    params: ContactParams = field(default_factory=ContactParams)

    def __post_init__(self) -> None:
        self.reset(self.hole_top_m)

    def reset(self, hole_top_m: np.ndarray, tip_m: np.ndarray | None = None) -> None:
        """Start over with the block at `hole_top_m`, the tip at rest in free air (or `tip_m`)."""
        self.hole_top_m = np.array(hole_top_m, dtype=np.float64)
        self.mode = FREE
        self._jam_z = 0.0
        self._jam_xy = np.zeros(2)
        self._side = (0, 0.0)                    # (axis, coordinate) of the face touched
        self._previous: np.ndarray | None = None if tip_m is None else np.array(tip_m, float)
        self.entry_lateral_m = math.nan          # lateral offset at the last entry [m]
        self.entry_tilt_deg = math.nan           # tilt at the last entry [deg]

    def _surface_z(self, xy: np.ndarray) -> float:
        """Height [m] of what is under xy: the block's top face or the table."""
        if block_footprint_contains(xy, self.hole_top_m):
            return float(self.hole_top_m[2])
        return 0.0

    def _update_mode(self, free_tip: np.ndarray, tilt_deg: float) -> None:
        top = self.hole_top_m[2]
        offset = float(np.hypot(*(free_tip[:2] - self.hole_top_m[:2])))
        if self.mode in (INSIDE, JAMMED):
            if free_tip[2] >= top:
                self.mode = FREE                 # pulled out: free again, the jam released
            elif self.mode == INSIDE and tilt_deg > self.params.jam_tilt_deg:
                self._jam(free_tip, self._previous)   # wedged by turning in the hole
            return
        was_above = self._previous is None or self._previous[2] >= top - 1e-9
        over_block = self._surface_z(free_tip[:2]) == top
        if self.mode == SIDE and free_tip[2] < top and over_block:
            return                               # still pressed against the same face
        if not was_above and free_tip[2] < top and over_block \
                and self._surface_z(self._previous[:2]) != top:
            self._touch_side(self._previous[:2])   # came in below the top: a side face
            return
        if free_tip[2] < top and offset <= CLEARANCE_M + CHAMFER_M and was_above \
                and over_block:
            self.entry_lateral_m, self.entry_tilt_deg = offset, tilt_deg
            if offset > self.params.jam_lateral_m or tilt_deg > self.params.jam_tilt_deg:
                self._jam(free_tip, None)
            else:
                self.mode = INSIDE
        elif free_tip[2] < self._surface_z(free_tip[:2]):
            self.mode = SURFACE
        else:
            self.mode = FREE

    def _touch_side(self, outside_xy: np.ndarray) -> None:
        """Enter SIDE against the face crossed coming from `outside_xy` (2,) [m]."""
        self.mode = SIDE
        rel = outside_xy - self.hole_top_m[:2]
        excess = np.abs(rel) - np.array(BLOCK_SIZE_M[:2]) / 2.0
        axis = int(np.argmax(excess))                          # the face it was outside of
        half = BLOCK_SIZE_M[axis] / 2.0
        self._side = (axis, float(self.hole_top_m[axis] + math.copysign(half, rel[axis])))

    def _jam(self, free_tip: np.ndarray, previous: np.ndarray | None) -> None:
        self.mode = JAMMED
        where = free_tip if previous is None else previous
        self._jam_z = min(self.hole_top_m[2] - self.params.jam_depth_m, float(where[2]))
        self._jam_xy = where[:2].copy()

    def _project(self, free_tip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Measured tip (3,) and stiffness (3,) [N/m] of the constraint in the current mode."""
        p = self.params
        tip = free_tip.copy()
        stiffness = np.array([p.lateral_stiffness_n_m, p.lateral_stiffness_n_m,
                              p.axial_stiffness_n_m])
        if self.mode == SURFACE:
            tip[2] = max(tip[2], self._surface_z(tip[:2]))
        elif self.mode == SIDE:
            axis, face = self._side
            tip[axis] = face
        elif self.mode == INSIDE:
            tip[2] = max(tip[2], self.hole_top_m[2] - HOLE_DEPTH_M)
            offset = tip[:2] - self.hole_top_m[:2]
            r = float(np.hypot(*offset))
            if r > CLEARANCE_M:
                tip[:2] = self.hole_top_m[:2] + offset * (CLEARANCE_M / r)
        elif self.mode == JAMMED:
            tip[2] = max(tip[2], self._jam_z)
            tip[:2] = self._jam_xy
            stiffness[2] = p.jam_stiffness_n_m
        return tip, stiffness

    def update(self, free_tip: np.ndarray, tool_axis: np.ndarray, dt_s: float) -> ContactResult:
        """Advance one step: the servo's tip (3,) [m] and tool z axis (3,) -> the contact."""
        tilt_deg = math.degrees(math.acos(max(-1.0, min(1.0, -float(tool_axis[2])))))
        self._update_mode(free_tip, tilt_deg)
        tip, stiffness = self._project(free_tip)
        force = stiffness * (tip - free_tip)
        previous = tip if self._previous is None else self._previous
        velocity = (tip - previous) / dt_s
        p = self.params
        depth = 0.0
        if self.mode == INSIDE:
            depth = float(self.hole_top_m[2] - tip[2])
            wall = float(np.hypot(force[0], force[1]))
            axial = p.friction_base_n + p.friction_per_m * depth + p.friction_coefficient * wall
            force[2] += axial * math.tanh(-velocity[2] / p.friction_speed_m_s)
        elif self.mode == JAMMED:
            depth = max(0.0, float(self.hole_top_m[2] - tip[2]))
        elif self.mode == SURFACE:
            speed = float(np.hypot(velocity[0], velocity[1]))
            if speed > 1e-9:
                drag = p.friction_coefficient * max(force[2], 0.0) \
                    * math.tanh(speed / p.friction_speed_m_s)
                force[:2] -= drag * velocity[:2] / speed
        self._previous = tip
        lever = TOOL_LENGTH_M * np.asarray(tool_axis)          # flange -> tip [m]
        return ContactResult(tip_m=tip, force_n=force, torque_nm=_cross(lever, force),
                             mode=self.mode, depth_m=depth, distance_m=self.distance(tip))

    def distance(self, tip: np.ndarray) -> float:
        """Laser distance [m]: straight down from the tip to the hole bottom, block or table."""
        offset = float(np.hypot(*(tip[:2] - self.hole_top_m[:2])))
        if offset <= HOLE_RADIUS_M:
            floor = self.hole_top_m[2] - HOLE_DEPTH_M
        else:
            floor = self._surface_z(tip[:2])
        return max(0.0, float(tip[2] - floor))
