"""Camera images of the simulated cell: a pinhole projection of the scene drawn with Pillow.

Two kinds of view. A ring view looks at the workspace from its own fixed viewpoint on a ring
around it; its static part (table, block with the hole, robot base) is drawn once per view and
hole position, the arm and the peg on top of a copy for every frame. A wrist view (`oak` by
default, SimCellConfig.wrist_views) is a hand-eye camera on the flange, beside the peg and
looking past its tip: it moves with the arm, so the whole scene is drawn for each of its frames.
One 640x360 JPEG costs ~1.5 ms from the ring, ~5 ms from the wrist.

Why a wrist camera: the peg enters only within ~1.2 mm of the hole's axis, and a ring camera
1.1 m away sees a millimetre as half a pixel. From the wrist the hole and the peg tip are a few
pixels per millimetre apart in the same image, so the offset still to correct is visible (a
linear probe on the tiny VLM's pooled features of the wrist view recovers it to ~0.5 mm, of the
four ring views to no better than its spread; docs/sim.md).

It draws any state with the attributes of `DrawableState`, such as the simulated cell's
`CellState`.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
import io
import math
from typing import Protocol

import numpy as np
from PIL import Image, ImageDraw

from vla_insertion.core.config import DEFAULT_WRIST_VIEWS
from vla_insertion.core.sim.geometry import (
    BLOCK_SIZE_M, HOLE_RADIUS_M, INSERT_DEPTH_M, PEG_LENGTH_M)
from vla_insertion.core.sim.kinematics import forward_kinematics, TOOL_LENGTH_M

_WRIST_MOUNT_M = (-0.07, 0.02)  # the wrist camera on the flange: along its x, along its z [m]
_WRIST_LOOK_M = TOOL_LENGTH_M + 0.04   # it looks at the tool axis 4 cm past the peg tip [m]
_LOOK_AT = np.array([-0.30, -0.18, 0.10])   # between the robot base and the hole [m]
_FOV_DEG = 60.0                             # horizontal field of view
_FLANGE_TO_FINGERS_M = 0.12                 # where the peg leaves the gripper
_BACKGROUNDS_PER_VIEW = 4                   # hole positions whose static image is kept
_NEAR_M = 0.03                              # parts of the arm closer to a camera are not drawn


class DrawableState(Protocol):
    """What the renderer reads from a state of the cell."""

    t_s: float                     # [s]
    episode: int
    joints_rad: np.ndarray         # (6,) [rad]
    tip_m: np.ndarray              # (3,) peg tip [m]
    gripper: float                 # 0 open .. 1 closed
    hole_top_m: np.ndarray         # (3,) centre of the hole's opening [m]
    peg_in_hole: bool              # released in the hole: drawn there, not at the tip


@dataclass(frozen=True)
class PinholeCamera:
    """A camera at `position` looking at a point; x right, y down, z forward."""

    position: np.ndarray        # (3,) [m]
    rotation: np.ndarray        # (3, 3) rows: right, down, forward in the world frame
    focal_px: float
    width: int
    height: int

    @classmethod
    def look_at(cls, position: np.ndarray, target: np.ndarray, width: int,
                height: int) -> PinholeCamera:
        forward = (target - position) / np.linalg.norm(target - position)
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        focal = width / (2.0 * math.tan(math.radians(_FOV_DEG) / 2.0))
        return cls(position, np.stack([right, down, forward]), focal, width, height)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (N, 3) -> pixels (N, 2) and depths (N,) [m]."""
        cam = (points - self.position) @ self.rotation.T
        z = np.maximum(cam[:, 2], 1e-3)
        uv = self.focal_px * cam[:, :2] / z[:, None] + [self.width / 2, self.height / 2]
        return uv, cam[:, 2]


def view_cameras(count: int, width: int, height: int) -> list[PinholeCamera]:
    """`count` viewpoints on a ring around the workspace, each at its own height."""
    cameras = []
    for i in range(count):
        azimuth = math.radians(200.0 + i * 360.0 / count)
        elevation = math.radians(25.0 + 40.0 * (i % 3) / 2.0)
        distance = 1.1 + 0.15 * (i % 2)
        offset = distance * np.array([math.cos(elevation) * math.cos(azimuth),
                                      math.cos(elevation) * math.sin(azimuth),
                                      math.sin(elevation)])
        cameras.append(PinholeCamera.look_at(_LOOK_AT + offset, _LOOK_AT, width, height))
    return cameras


def wrist_camera(joints_rad: np.ndarray, width: int, height: int) -> PinholeCamera:
    """Return the hand-eye camera of the arm at `joints_rad` (6,): beside the peg, on the flange.

    Its image is fixed to the flange (image right = the flange's x axis, from the camera
    toward the peg), as a camera screwed to a real wrist: turning the wrist turns the picture.
    The wide image axis along the mount's offset keeps the block in sight from home.
    """
    frame = forward_kinematics(joints_rad)[6]
    flange, x_axis, z_axis = frame[:3, 3], frame[:3, 0], frame[:3, 2]
    position = flange + _WRIST_MOUNT_M[0] * x_axis + _WRIST_MOUNT_M[1] * z_axis
    forward = flange + _WRIST_LOOK_M * z_axis - position
    forward /= np.linalg.norm(forward)
    right = x_axis - (x_axis @ forward) * forward
    right /= np.linalg.norm(right)
    focal = width / (2.0 * math.tan(math.radians(_FOV_DEG) / 2.0))
    return PinholeCamera(position, np.stack([right, np.cross(forward, right), forward]), focal,
                         width, height)


def _circle(centre: np.ndarray, radius: float, n: int = 20) -> np.ndarray:
    a = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    return centre + radius * np.stack([np.cos(a), np.sin(a), np.zeros(n)], axis=1)


class SceneRenderer:
    """Draws the cell as seen by each view; thread-safe per view index."""

    def __init__(self, views: tuple[str, ...], width: int, height: int,
                 wrist_views: tuple[str, ...] = DEFAULT_WRIST_VIEWS) -> None:
        self.views = tuple(views)
        self.width, self.height = width, height
        self.wrist = tuple(v in wrist_views for v in self.views)
        ring = iter(view_cameras(self.wrist.count(False), width, height))
        # per view: its fixed camera, None for a wrist view (its camera follows the arm)
        self.cameras = [None if wrist else next(ring) for wrist in self.wrist]
        # per view: hole position (rounded to 0.1 mm) -> static image, least recent first
        self._backgrounds: list[OrderedDict[tuple, Image.Image]] = [
            OrderedDict() for _ in self.views]

    def _background(self, view: int, hole: np.ndarray) -> Image.Image:
        cache = self._backgrounds[view]
        key = tuple(np.round(np.asarray(hole) * 1e4).astype(int).tolist())
        if key in cache:
            cache.move_to_end(key)
        else:
            cache[key] = self._draw_static(view, self.cameras[view],
                                           np.asarray(hole, dtype=np.float64))
            if len(cache) > _BACKGROUNDS_PER_VIEW:
                cache.popitem(last=False)
        return cache[key]

    def _draw_static(self, view: int, cam: PinholeCamera, hole: np.ndarray) -> Image.Image:
        tint = 18 * (view % 4)                 # each view a slightly different wall colour
        image = Image.new('RGB', (cam.width, cam.height), (70 + tint, 80, 95 - tint // 2))
        draw = ImageDraw.Draw(image)
        table = np.array([[-1.0, -0.9, 0.0], [0.5, -0.9, 0.0], [0.5, 0.6, 0.0], [-1.0, 0.6, 0.0]])
        draw.polygon([tuple(p) for p in cam.project(table)[0]], fill=(150, 135, 110))
        for k in np.arange(-1.0, 0.51, 0.1):   # a 10 cm grid on the table
            for a, b in (([k, -0.9, 0], [k, 0.6, 0]), ([-1.0, k + 0.1, 0], [0.5, k + 0.1, 0])):
                uv = cam.project(np.array([a, b], dtype=float))[0]
                draw.line([tuple(p) for p in uv], fill=(135, 120, 98), width=1)
        draw.polygon([tuple(p) for p in cam.project(_circle(np.zeros(3), 0.08))[0]],
                     fill=(60, 60, 66))
        # the block: faces far to near (painter's algorithm), then the hole on top
        sx, sy, sz = BLOCK_SIZE_M
        lo, hi = hole - [sx / 2, sy / 2, sz], hole + [sx / 2, sy / 2, 0.0]
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                            for z in (lo[2], hi[2])])
        faces = [(0, 1, 3, 2), (4, 5, 7, 6), (0, 1, 5, 4), (2, 3, 7, 6), (1, 3, 7, 5)]
        uv, depth = cam.project(corners)
        for face in sorted(faces, key=lambda f: -depth[list(f)].mean()):
            shade = 200 if face == (1, 3, 7, 5) else 160 - 10 * faces.index(face)
            draw.polygon([tuple(uv[i]) for i in face], fill=(shade, shade, shade + 10),
                         outline=(90, 90, 100))
        draw.polygon([tuple(p) for p in cam.project(_circle(hole, HOLE_RADIUS_M * 1.6))[0]],
                     fill=(25, 25, 30))
        return image

    def render(self, view: int, state: DrawableState) -> Image.Image:
        """Return the view's image of the cell in `state`."""
        if self.wrist[view]:
            cam = wrist_camera(state.joints_rad, self.width, self.height)
            image = self._draw_static(view, cam, np.asarray(state.hole_top_m, dtype=np.float64))
        else:
            cam = self.cameras[view]
            image = self._background(view, state.hole_top_m).copy()
        draw = ImageDraw.Draw(image)
        frames = forward_kinematics(state.joints_rad)               # (8, 4, 4)
        joints = frames[:7, :3, 3]
        flange, z_axis = frames[6, :3, 3], frames[6, :3, 2]
        fingers = flange + z_axis * _FLANGE_TO_FINGERS_M
        uv, depth = cam.project(np.vstack([joints, fingers]))

        def width_px(metres: float, d: float) -> int:
            return max(1, int(cam.focal_px * metres / max(d, 0.05)))

        def visible(*points: int) -> bool:   # in front of the camera (a wrist view's links)
            return bool(np.all(depth[list(points)] > _NEAR_M))

        for i in range(len(joints) - 1):
            if visible(i, i + 1):
                draw.line([tuple(uv[i]), tuple(uv[i + 1])], fill=(215, 215, 225),
                          width=width_px(0.07, depth[i]))
        if visible(6, 7):
            draw.line([tuple(uv[6]), tuple(uv[7])], fill=(40, 40, 45),
                      width=width_px(0.04, depth[6]))
        if state.peg_in_hole:
            bottom = state.hole_top_m - [0.0, 0.0, INSERT_DEPTH_M]
        else:
            bottom = state.tip_m
        top = bottom + [0.0, 0.0, PEG_LENGTH_M]
        puv, pdepth = cam.project(np.array([top, bottom]))
        draw.line([tuple(puv[0]), tuple(puv[1])], fill=(235, 140, 30),
                  width=width_px(0.012, pdepth[0]))
        spread = 0.02 + 0.02 * (1.0 - state.gripper)              # fingers open when released
        side = frames[6, :3, 0] * spread
        fuv = cam.project(np.array([fingers + side, fingers - side,
                                    fingers + side + z_axis * 0.04,
                                    fingers - side + z_axis * 0.04]))[0]
        for a, b in ((0, 2), (1, 3)):
            draw.line([tuple(fuv[a]), tuple(fuv[b])], fill=(30, 30, 30), width=3)
        # the view's name only: a time or episode counter in the image would let a policy
        # trained on these pictures tell episodes apart by it (and memorise their holes)
        draw.text((8, 6), self.views[view], fill=(255, 255, 255))
        return image

    def render_jpeg(self, view: int, state: DrawableState, quality: int = 80) -> bytes:
        buffer = io.BytesIO()
        self.render(view, state).save(buffer, 'JPEG', quality=quality)
        return buffer.getvalue()
