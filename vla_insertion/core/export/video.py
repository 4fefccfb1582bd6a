"""Camera frames into MP4 files with PyAV: the recorded JPEGs decoded, re-encoded per view.

One file holds frames at a constant rate: frame i is shown at i / fps s from the file's start
(pts i in a 1 / fps time base), so a reader finds a frame of an episode at its
`from_timestamp` + its timestamp. The codec (libx264 or libsvtav1, both in PyAV's wheel) writes
yuv420p, which needs even widths and heights, with a keyframe every `gop` frames so that a
training loader seeking one frame decodes at most gop - 1 others.
"""
from __future__ import annotations

from fractions import Fraction
import io
import os
from pathlib import Path

import av
import numpy as np
from PIL import Image

from vla_insertion.core.export.options import ExportError, PIX_FMT


def rgb_from_image(data: bytes) -> np.ndarray:
    """Decode one recorded image (JPEG, or anything PIL reads) to (H, W, 3) uint8 RGB."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert('RGB'))
    except (OSError, ValueError) as exc:        # PIL's UnidentifiedImageError is an OSError
        raise ExportError(f'cannot decode a recorded image ({len(data)} bytes): {exc}') from exc


class VideoEncoder:
    """Append (H, W, 3) uint8 RGB frames to one MP4 file at a constant frame rate."""

    def __init__(self, path: Path, fps: int, width: int, height: int, encoder: str,
                 options: dict[str, str]) -> None:
        if width % 2 or height % 2:
            raise ExportError(f'{width} x {height} images: {PIX_FMT} video needs even sizes')
        self.path, self.fps, self.width, self.height = Path(path), fps, width, height
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path), mode='w')
        self._stream = self._container.add_stream(encoder, rate=fps, options=dict(options))
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, PIX_FMT
        self._time_base = Fraction(1, fps)
        self.frames = 0

    def add(self, rgb: np.ndarray) -> None:
        """Encode the next frame (shown at frames / fps s)."""
        if rgb.shape != (self.height, self.width, 3):
            raise ExportError(f'{self.path}: a {rgb.shape[1]} x {rgb.shape[0]} frame in a '
                              f'{self.width} x {self.height} video (one size per view)')
        frame = av.VideoFrame.from_ndarray(rgb, format='rgb24')
        frame.pts, frame.time_base = self.frames, self._time_base
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    @property
    def size_mb(self) -> float:
        """Return the file's size so far [MB] (what the encoder has flushed)."""
        return os.path.getsize(self.path) / 2**20

    def close(self) -> None:
        """Flush the encoder and finish the file."""
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()

    @property
    def codec(self) -> str:
        """Return the codec's canonical name (h264, av1), as info.json names it."""
        return self._stream.codec_context.codec.canonical_name
