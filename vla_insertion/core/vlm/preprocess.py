"""Qwen2.5-VL model inputs without the Hugging Face processor per call (`preprocessing: fast`).

The stock processor costs as much as the tiny model's forward pass on the CPU (73 ms for five
640x360 views): it re-tokenises the prompt with 1495 image pads, resizes through numpy -> PIL ->
numpy, rescales in float64 and normalises and patches with numpy copies. `FastPreprocessor`
produces the same tensors (test/unit/vlm/test_preprocess.py: equal within 1e-5, in practice to
the bit) with less work:

- token ids: the prompt is fixed by the view set and the instruction, and the number of image
  tokens by the image size, so `input_ids`, `attention_mask` and `mm_token_type_ids` are made
  once per image grid by the stock processor itself (on grey images) and cached;
- resize: the processor's `smart_resize` target (multiples of 28 within its pixel bounds) with
  Pillow's bicubic filter: on the CPU the same Pillow call, run per view on the caller's thread
  pool (Pillow releases the GIL); on CUDA `resample.resize_bicubic`, Pillow's algorithm to the
  bit in torch on the GPU (checked against Pillow once at start-up, else Pillow is used);
- pixels: uint8 -> rescale -> CLIP normalisation -> 14x14 patches with the temporal duplicate
  (temporal_patch_size 2) in the 2x2-merge order, as a few whole-tensor torch ops on the model's
  device, in float32 with the processor's own arithmetic (so the values are identical).

Layout of one row of `pixel_values` (1176 = C 3 x T 2 x 14 x 14), rows ordered per view by
(merged row, merged col, row in merge, col in merge), exactly as Qwen2VLImageProcessor.patchify.
"""
from __future__ import annotations

from concurrent.futures import Executor
import time

import numpy as np
from PIL import Image
import torch
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from vla_insertion.core.vlm import resample

TEXT_KEYS = ('input_ids', 'attention_mask', 'mm_token_type_ids')


class UnsupportedProcessor(ValueError):
    """The processor's settings are outside what the fast path reproduces (use `processor`)."""


class FastPreprocessor:
    """Build the model's inputs for RGB views; see the module docstring.

    `processor` is the stock Qwen2.5-VL processor (ids are taken from it once per image grid),
    `prompt` the rendered chat prompt, `device` where the tensors are made. `pool` (optional)
    runs the per-view Pillow resizes in parallel. One caller at a time: the returned tensors
    are buffers reused by the next call (the extractor consumes them before its next call).
    """

    def __init__(self, processor, prompt: str, device: torch.device | str = 'cpu', *,
                 pool: Executor | None = None, resize_on_device: bool | None = None) -> None:
        self.processor = processor
        self.prompt = prompt
        self.device = torch.device(device)
        self._pool = pool
        ip = processor.image_processor
        settings = {'do_resize': True, 'do_rescale': True, 'do_normalize': True,
                    'resample': Image.BICUBIC}
        for name, expected in settings.items():
            if getattr(ip, name) != expected:
                raise UnsupportedProcessor(f'image processor {name}={getattr(ip, name)!r}: the '
                                           f'fast path reproduces only {expected!r}; set '
                                           'preprocessing: processor')
        self.patch = int(ip.patch_size)
        self.merge = int(ip.merge_size)
        self.temporal = int(ip.temporal_patch_size)
        self.min_pixels = int(ip.size['shortest_edge'])
        self.max_pixels = int(ip.size['longest_edge'])
        mean = np.asarray(ip.image_mean, np.float32)
        std = np.asarray(ip.image_std, np.float32)
        self._mean = torch.from_numpy(mean).to(self.device).view(1, -1, 1)   # (1, C, 1)
        self._std = torch.from_numpy(std).to(self.device).view(1, -1, 1)     # (1, C, 1)
        self._rescale = float(ip.rescale_factor)
        # The processor rescales in float64 then casts to float32. Dividing in float32 gives
        # the same 256 values when the factor is 1/k (it is 1/255); else rescale in float64.
        values = np.arange(256)
        reference = (values.astype(np.float64) * self._rescale).astype(np.float32)
        self._divisor = float(round(1.0 / self._rescale))
        divided = (torch.arange(256, dtype=torch.float32) / self._divisor).numpy()
        self._divide = bool(np.array_equal(reference, divided))
        self._text: dict[tuple, dict[str, torch.Tensor]] = {}
        if resize_on_device is None:
            resize_on_device = self.device.type == 'cuda'
        self.resize_on_device = resize_on_device
        self._checked_sizes: dict[tuple, bool] = {}
        self._buffers: dict[tuple, torch.Tensor] = {}

    # --- sizes and token ids ----------------------------------------------------------------

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """Return the (width, height) the processor resizes a width x height image to."""
        h, w = smart_resize(height, width, factor=self.patch * self.merge,
                            min_pixels=self.min_pixels, max_pixels=self.max_pixels)
        return w, h

    def text_inputs(self, sizes: tuple[tuple[int, int], ...]) -> dict[str, torch.Tensor]:
        """Return the cached token tensors for views of these (width, height) target sizes."""
        grids = tuple((h // self.patch, w // self.patch) for w, h in sizes)
        if grids not in self._text:
            # Grey images already at the target size: the processor does not resize them, and
            # its token expansion depends only on the grids.
            images = [Image.new('RGB', size, (128, 128, 128)) for size in sizes]
            stock = self.processor(text=[self.prompt], images=images, return_tensors='pt')
            self._text[grids] = {k: stock[k].to(self.device) for k in TEXT_KEYS if k in stock}
        return self._text[grids]

    # --- resize -------------------------------------------------------------------------------

    def resize(self, images: list[Image.Image]) -> list[np.ndarray]:
        """Pillow bicubic to the processor's target size, per view on the pool: (H, W, 3) uint8."""
        def one(image: Image.Image) -> np.ndarray:
            size = self.target_size(*image.size)
            if image.size != size:
                image = image.resize(size, Image.BICUBIC)
            return np.asarray(image)
        if self._pool is None or len(images) == 1:
            return [one(image) for image in images]
        return list(self._pool.map(one, images))

    def _device_resize_ok(self, width: int, height: int, size: tuple[int, int]) -> bool:
        key = (width, height, size)
        if key not in self._checked_sizes:
            self._checked_sizes[key] = resample.matches_pillow(width, height, *size,
                                                               device=self.device)
        return self._checked_sizes[key]

    # --- the whole call -----------------------------------------------------------------------

    def __call__(self, images: list[Image.Image], timings: dict[str, float] | None = None
                 ) -> dict[str, torch.Tensor]:
        """Return input_ids, attention_mask, mm_token_type_ids, pixel_values, image_grid_thw.

        `timings` (seconds, accumulated): 'resize' for the Pillow resizes, 'processor' for the
        rest (token lookup, upload, device resize, pixels).
        """
        timings = timings if timings is not None else {'resize': 0.0, 'processor': 0.0}
        modes = {image.mode for image in images} - {'RGB'}
        if modes:
            raise ValueError(f'the fast path takes RGB images, got modes {sorted(modes)}')
        sizes = {image.size for image in images}
        same_size = len(sizes) == 1
        t = time.perf_counter()
        if same_size and self.resize_on_device:
            (width, height), = sizes
            target = self.target_size(width, height)
            if target == (width, height) or self._device_resize_ok(width, height, target):
                arrays = np.stack([np.asarray(image) for image in images])
                batch = torch.from_numpy(arrays).to(self.device)              # (V, H, W, 3)
                inputs = self._inputs(self.pixels(resample.resize_bicubic(batch, *target)),
                                      [target] * len(images))
                self._synchronize()
                timings['processor'] += time.perf_counter() - t
                return inputs
        arrays = self.resize(images)
        timings['resize'] += time.perf_counter() - t
        t = time.perf_counter()
        targets = [(a.shape[1], a.shape[0]) for a in arrays]
        if len(set(targets)) == 1:
            if self.device.type == 'cpu':
                batch = self._buffer('views', (len(arrays), *arrays[0].shape), torch.uint8)
                for i, array in enumerate(arrays):
                    np.copyto(batch[i].numpy(), array)                      # (V, H, W, 3)
            else:
                batch = torch.from_numpy(np.stack(arrays)).to(self.device)
            pixels = self.pixels(batch)
        else:  # views of different sizes: patch each (a copy: the buffer is reused), in order
            pixels = torch.cat([
                self.pixels(torch.from_numpy(a[None].copy()).to(self.device)).clone()
                for a in arrays])
        inputs = self._inputs(pixels, targets)
        self._synchronize()
        timings['processor'] += time.perf_counter() - t
        return inputs

    def _synchronize(self) -> None:
        # GPU kernels run asynchronously: wait, so the stage time is this stage's
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    def _inputs(self, pixels: torch.Tensor, sizes: list[tuple[int, int]]
                ) -> dict[str, torch.Tensor]:
        grid = torch.tensor([[1, h // self.patch, w // self.patch] for w, h in sizes],
                            dtype=torch.int64, device=self.device)           # (V, 3)
        return {**self.text_inputs(tuple(sizes)), 'pixel_values': pixels,
                'image_grid_thw': grid}

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """(V, H, W, C) uint8 at a target size -> (V * H/14 * W/14, C * 2 * 14 * 14) float32."""
        views, height, width, channels = images.shape
        p, m, t = self.patch, self.merge, self.temporal
        gh, gw = height // p, width // p
        if gh * p != height or gw * p != width or gh % m or gw % m:
            raise ValueError(f'{width}x{height} is not a multiple of {p * m} pixels')
        order = (0, 1, 4, 2, 5, 7, 3, 6)
        shape = (views, gh // m, m, p, gw // m, m, p, channels)
        n = views * gh * gw
        # (V, gh/m, gw/m, m, m, C, p, p): merged blocks in raster order, then their 2x2 patches
        if images.device.type == 'cpu':
            # numpy permutes and converts uint8 ~2x faster than torch here, and the reused
            # buffers spare the page faults of fresh 3.5 + 14 + 28 MB blocks (5 views) per call
            x = self._buffer('patches', (views, gh // m, gw // m, m, m, channels, p, p),
                             torch.uint8)
            np.copyto(x.numpy(), images.numpy().reshape(shape).transpose(order))
            x = x.view(n, channels, p * p)                                    # (N, C, p*p)
            values = self._buffer('values', (n, channels, p * p), torch.float32)
            np.copyto(values.numpy(), x.numpy(), casting='unsafe')            # uint8 -> f32
        else:
            x = images.view(shape).permute(order).reshape(n, channels, p * p)
            values = x.to(torch.float32)
        if self._divide:
            values.div_(self._divisor)
        else:
            values.copy_(x.to(torch.float64).mul_(self._rescale))
        values.sub_(self._mean).div_(self._std)                              # (N, C, p*p)
        # the temporal axis repeats the single frame: (N, C, T, p*p) -> (N, C*T*p*p)
        out = self._buffer('pixel_values', (n, channels, t, p * p), torch.float32)
        out.copy_(values.unsqueeze(2).expand(n, channels, t, p * p))
        return out.view(n, -1)

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """Return a tensor kept between calls for this name and shape (overwritten each call)."""
        key = (name, shape, dtype)
        if key not in self._buffers:
            self._buffers = {k: v for k, v in self._buffers.items() if k[0] != name}
            self._buffers[key] = torch.empty(shape, dtype=dtype, device=self.device)
        return self._buffers[key]
