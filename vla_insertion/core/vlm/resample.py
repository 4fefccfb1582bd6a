"""Pillow's bicubic resize of RGB uint8 images, bit for bit, in torch on any device.

The stock Qwen2.5-VL image processor resizes every view with `PIL.Image.resize(..., BICUBIC)`
(640x360 -> 644x364 by default). That call costs ~4 ms per view on one CPU core; on a GPU the
same result costs well under a millisecond, so the fast preprocessing path (preprocess.py) uses
this module on CUDA and Pillow itself on the CPU.

Pillow's algorithm for 8-bit images (libImaging/Resample.c), reproduced exactly:

- separable: one pass along each axis that changes size, with the intermediate image rounded
  and clipped to uint8 between the passes;
- per output pixel, the taps of the cubic kernel (a = -0.5, support 2, widened by the scale
  when shrinking) are normalised to sum to 1 and turned into fixed-point integers with 22
  fractional bits; the output is clip((sum(in * weight) + 2**21) >> 22, 0, 255);
- pass order: horizontal first, except (Pillow >= 13) when the height shrinks by more than
  twice the amount the width does, then vertical first. The order matters because of the
  rounding in between.

The sums are integers below 2**31, so float64 arithmetic is exact and the result equals Pillow's
to the bit (test/unit/vlm/test_preprocess.py checks it against the installed Pillow for both
pass orders). `matches_pillow` re-checks one size at run time, so a future Pillow that changes
its algorithm makes the caller fall back to Pillow instead of silently drifting.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image
import torch

PRECISION_BITS = 22        # Pillow's fixed point for 8-bit images: 32 - 8 - 2 bits
SUPPORT = 2.0              # support of the bicubic kernel [input pixels] at scale 1


def bicubic_kernel(x: float) -> float:
    """Pillow's cubic convolution kernel with a = -0.5."""
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return 0.0


@functools.lru_cache(maxsize=32)
def coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (indices, weights), each (out_size, taps) int64: Pillow's fixed-point taps.

    Unused taps of an output pixel have weight 0 and repeat its first index.
    """
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = SUPPORT * filter_scale
    inverse_scale = 1.0 / filter_scale   # Pillow multiplies by the inverse: same rounding
    bounds = []
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        weights = [bicubic_kernel((x + xmin - center + 0.5) * inverse_scale)
                   for x in range(xmax)]
        total = sum(weights)
        if total != 0.0:
            weights = [w / total for w in weights]
        bounds.append((xmin, weights))
    taps = max(len(w) for _, w in bounds)
    indices = np.zeros((out_size, taps), np.int64)
    fixed = np.zeros((out_size, taps), np.int64)
    for xx, (xmin, weights) in enumerate(bounds):
        indices[xx] = xmin
        for x, w in enumerate(weights):
            indices[xx, x] = xmin + x
            # C's (int) cast truncates toward zero after the +-0.5
            fixed[xx, x] = math.trunc(w * (1 << PRECISION_BITS) + (-0.5 if w < 0 else 0.5))
    return indices, fixed


def vertical_first(in_width: int, in_height: int, out_width: int, out_height: int) -> bool:
    """Return True where Pillow >= 13 runs the vertical pass first (rounding makes it matter)."""
    return out_height < in_height and in_height - out_height > 2 * (in_width - out_width)


@functools.lru_cache(maxsize=32)
def _device_coefficients(in_size: int, out_size: int, device: torch.device
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    indices, fixed = coefficients(in_size, out_size)
    return (torch.from_numpy(indices).to(device),
            torch.from_numpy(fixed).to(device, torch.float64))


def _resample_rows(rows: torch.Tensor, in_size: int, out_size: int) -> torch.Tensor:
    """One pass along dim 0: (in_size, M) float64 -> (out_size, M) float64 holding uint8 values."""
    indices, weights = _device_coefficients(in_size, out_size, rows.device)
    acc = torch.full((out_size, rows.shape[1]), float(1 << (PRECISION_BITS - 1)),
                     dtype=torch.float64, device=rows.device)
    for k in range(indices.shape[1]):
        acc.addcmul_(rows.index_select(0, indices[:, k]), weights[:, k:k + 1])
    # exact: the sums are integers < 2**31; dividing by 2**22 and flooring is the >> 22
    return acc.div_(1 << PRECISION_BITS).floor_().clamp_(0.0, 255.0)


def _horizontal(x: torch.Tensor, out_width: int) -> torch.Tensor:
    views, height, width, channels = x.shape
    rows = x.permute(2, 0, 1, 3).reshape(width, -1)                       # (W, V*H*C)
    out = _resample_rows(rows, width, out_width)                          # (W', V*H*C)
    return out.view(out_width, views, height, channels).permute(1, 2, 0, 3)  # (V, H, W', C)


def _vertical(x: torch.Tensor, out_height: int) -> torch.Tensor:
    views, height, width, channels = x.shape
    rows = x.permute(1, 0, 2, 3).reshape(height, -1)                      # (H, V*W*C)
    out = _resample_rows(rows, height, out_height)                        # (H', V*W*C)
    return out.view(out_height, views, width, channels).permute(1, 0, 2, 3)  # (V, H', W, C)


def resize_bicubic(images: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize (V, H, W, 3) uint8 images to (V, height, width, 3) uint8 exactly as Pillow does."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f'expected (V, H, W, C) uint8 images, got {tuple(images.shape)} '
                         f'{images.dtype}')
    _, in_height, in_width, _ = images.shape
    if (in_width, in_height) == (width, height):
        return images.clone()
    x = images.to(torch.float64)
    passes = [(_horizontal, width, in_width != width), (_vertical, height, in_height != height)]
    if vertical_first(in_width, in_height, width, height):
        passes.reverse()
    for resample, size, needed in passes:
        if needed:
            x = resample(x, size)
    return x.to(torch.uint8).contiguous()


def matches_pillow(in_width: int, in_height: int, width: int, height: int,
                   device: torch.device | str = 'cpu', seed: int = 0) -> bool:
    """Return True if `resize_bicubic` equals the installed Pillow on a random image."""
    pixels = np.random.default_rng(seed).integers(0, 256, (in_height, in_width, 3), np.uint8)
    expected = np.asarray(Image.fromarray(pixels).resize((width, height),
                                                         Image.BICUBIC))
    got = resize_bicubic(torch.from_numpy(pixels)[None].to(device), width, height)
    return bool(np.array_equal(got[0].cpu().numpy(), expected))
