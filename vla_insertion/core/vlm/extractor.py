"""VL features from a set of camera views: decode, resize, prompt, forward, reduce.

`VlmFeatureExtractor` implements the shared model interface (`infer(VlmObservation) ->
VLFeatureData`, `reset()`), ROS-free. One call:

1. decodes each configured view's JPEG/PNG bytes (PIL; JPEGs at a reduced DCT scale when they
   are at least twice the target) and resizes it to image_width x image_height (640x360 by
   default) *before* the processor, as the original system did: the resize sets the visual
   token count (299 per 640x360 view) and so the cost of everything after;
2. builds the model inputs for one chat prompt with every view, in the configured order, and the
   instruction. `preprocessing: fast` (default, preprocess.py): cached token ids, the views
   decoded and resized on a small thread pool, pixels normalised and patched in torch on the
   model's device; `preprocessing: processor`: the stock Hugging Face processor (tokenizer + PIL
   image processor) on every call. Both give the same tensors (a unit test holds them equal);
3. runs the base model `model.model(...)` (vision tower + language model) without the LM head:
   the logits over the 151936-token vocabulary are never computed. With `torch_compile` on,
   the vision tower and the language model run through torch.compile (compile.py);
4. reduces the last hidden states to the contract's (num_tokens, feature_dim) float32 matrix
   (see reduction.py).

Per-stage wall times of the last call are in `last_timings` [ms]; with the fast path the
processor's bicubic resize on the CPU is counted in `resize_ms`, everything else it does in
`processor_ms`. `DelayedVlm` wraps any VLM and adds a fixed delay (the comparison experiment's
stand-in for a heavier model).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
import dataclasses
import logging
import time

import numpy as np
from PIL import Image
import torch

from vla_insertion.core.config import VlmConfig
from vla_insertion.core.data import VLFeatureData
from vla_insertion.core.feature_contract import FeatureContract
from vla_insertion.core.interfaces import VlmObservation
from vla_insertion.core.vlm.compile import compile_model, resolve_compile
from vla_insertion.core.vlm.contract import feature_contract_for
from vla_insertion.core.vlm.images import (  # noqa: F401 - re-exported, their home is images
    decode_image, resize_image, VlmInputError)
from vla_insertion.core.vlm.model import (
    load_model, load_processor, resolve_device, resolve_dtype)
from vla_insertion.core.vlm.preprocess import FastPreprocessor, UnsupportedProcessor
from vla_insertion.core.vlm.reduction import reduce_hidden_states
from vla_insertion.core.vlm.source import ModelSource, resolve_model, VlmLoadError

logger = logging.getLogger(__name__)

STAGES = ('decode', 'resize', 'processor', 'forward', 'reduction')


class VlmFeatureExtractor:
    """Qwen2.5-VL feature extractor: `infer(VlmObservation) -> VLFeatureData`, `reset()`.

    Raises VlmLoadError at construction when the model cannot be loaded (the message names the
    missing part) and VlmInputError from `infer` for unusable views.
    """

    def __init__(self, config: VlmConfig, *, download: bool | None = None) -> None:
        """`download` None: the config's hub_download (off by default: the local cache only)."""
        if config.torch_threads > 0:
            torch.set_num_threads(config.torch_threads)
        source = resolve_model(config.model, revision=config.revision,
                               download=config.hub_download if download is None else download)
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        processor = load_processor(source)
        model = load_model(source, device, dtype, config.attn_implementation)
        self._setup(config, source, model, processor)

    @classmethod
    def from_loaded(cls, config: VlmConfig, source: ModelSource, model, processor
                    ) -> VlmFeatureExtractor:
        """Wrap an already built model and processor (e.g. random weights for a benchmark)."""
        extractor = cls.__new__(cls)
        extractor._setup(config, source, model, processor)
        return extractor

    def _setup(self, config: VlmConfig, source: ModelSource, model, processor) -> None:
        self.config = config
        self.source = source
        self.model = model
        self.processor = processor
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.contract: FeatureContract = feature_contract_for(config, source)
        self._digest = self.contract.digest
        model_config = model.config
        self._image_token_id = int(model_config.image_token_id)
        self._vision_end_id = int(model_config.vision_end_token_id)
        self._merge = int(model_config.vision_config.spatial_merge_size)
        self.last_timings: dict[str, float] = {}
        # Decode and resize the views in parallel: Pillow releases the GIL while it works.
        self._pool = (ThreadPoolExecutor(config.preprocess_threads, thread_name_prefix='vlm-pre')
                      if config.preprocessing == 'fast' and config.preprocess_threads > 1
                      else None)
        self._fast: FastPreprocessor | None = None
        if config.preprocessing == 'fast':
            try:
                self._fast = FastPreprocessor(processor, self.contract.prompt, self.device,
                                              pool=self._pool)
            except UnsupportedProcessor as exc:
                logger.warning(f'preprocessing: fast is not possible ({exc}); using the '
                               'stock processor')
        self.compiled = resolve_compile(config.torch_compile, self.device)
        if self.compiled:
            compile_model(model, config.compile_mode)
        if model_config.text_config.hidden_size != self.contract.feature_dim:
            raise VlmLoadError(f'{source.folder}: config.json hidden size '
                               f'{self.contract.feature_dim} differs from the loaded model '
                               f'({model_config.text_config.hidden_size})')
        logger.info(f'VLM {self.model_id} on {self.device} ({self.dtype}), contract '
                    f'{self._digest}: {self.contract.num_tokens} x {self.contract.feature_dim}, '
                    f'preprocessing {self.preprocessing}, compile '
                    f'{config.compile_mode if self.compiled else "off"}'
                    + (' -- UNTRAINED weights' if self.untrained else ''))

    @property
    def model_id(self) -> str:
        return self.contract.model_id

    @property
    def untrained(self) -> bool:
        return self.source.untrained

    @property
    def preprocessing(self) -> str:
        """'fast' or 'processor': the path actually in use."""
        return 'fast' if self._fast is not None else 'processor'

    def infer(self, obs: VlmObservation) -> VLFeatureData:
        """Compute the features of one set of views, stamped with the newest capture time."""
        start = time.perf_counter()
        timings = dict.fromkeys(STAGES, 0.0)
        cfg = self.config
        frames = []
        for view in cfg.view_names:
            frame = obs.frames.get(view)
            if frame is None:
                raise VlmInputError(f'view {view} missing from the observation '
                                    f'(got {sorted(obs.frames)})')
            frames.append(frame)
        size = (cfg.image_width, cfg.image_height)
        t = time.perf_counter()
        images = self._map(lambda frame: decode_image(frame, size), frames)
        timings['decode'] += time.perf_counter() - t
        t = time.perf_counter()
        images = self._map(lambda image: resize_image(image, *size), images)
        timings['resize'] += time.perf_counter() - t
        stamps = [frame.stamp_s for frame in frames]
        features = self.features_from_images(images, timings)
        total = time.perf_counter() - start
        self.last_timings = {f'{k}_ms': v * 1e3 for k, v in timings.items()}
        self.last_timings['total_ms'] = total * 1e3
        return VLFeatureData(
            stamp_s=max(stamps), features=features, sequence=obs.sequence,
            contract_hash=self._digest, model_id=self.model_id,
            view_names=tuple(cfg.view_names), view_stamps_s=tuple(stamps),
            inference_ms=total * 1e3, untrained=self.untrained)

    def features_from_images(self, images: list[Image.Image],
                             timings: dict[str, float] | None = None) -> np.ndarray:
        """Run processor, forward and reduction on resized RGB images in view order."""
        timings = timings if timings is not None else dict.fromkeys(STAGES, 0.0)
        if self._fast is not None:
            inputs = self._fast(images, timings)              # tensors on the model's device
        else:
            t = time.perf_counter()
            inputs = self.processor(text=[self.contract.prompt], images=images,
                                    return_tensors='pt')
            timings['processor'] += time.perf_counter() - t

        t = time.perf_counter()
        with torch.inference_mode():
            features = self.forward_features(inputs, timings).cpu().numpy()      # (N, D)
        expected = (self.contract.num_tokens, self.contract.feature_dim)
        if features.shape != expected:
            raise RuntimeError(f'features {features.shape} break the contract {expected}')
        return features

    def forward_features(self, inputs, timings: dict[str, float] | None = None
                         ) -> torch.Tensor:
        """Processor outputs -> (num_tokens, feature_dim) float32 features on the device.

        No inference_mode here: stage-2 training calls it with gradients through LoRA adapters.
        """
        timings = timings if timings is not None else dict.fromkeys(STAGES, 0.0)
        t = time.perf_counter()
        input_ids = inputs['input_ids'].to(self.device)                        # (1, T)
        output = self.model.model(  # the base model: no LM head, no logits
            input_ids=input_ids,
            attention_mask=inputs['attention_mask'].to(self.device),
            pixel_values=inputs['pixel_values'].to(self.device, self.dtype),      # (P, 1176)
            image_grid_thw=inputs['image_grid_thw'].to(self.device),              # (V, 3)
            mm_token_type_ids=inputs['mm_token_type_ids'].to(self.device),
            use_cache=False, return_dict=True)
        hidden = output.last_hidden_state[0]                                      # (T, D)
        self._synchronize()
        timings['forward'] += time.perf_counter() - t
        t = time.perf_counter()
        reduced = reduce_hidden_states(
            hidden, input_ids[0], inputs['image_grid_thw'].to(self.device),
            image_token_id=self._image_token_id, vision_end_token_id=self._vision_end_id,
            merge_size=self._merge, pool_h=self.config.pool_grid_h,
            pool_w=self.config.pool_grid_w)                                      # (N, D)
        timings['reduction'] += time.perf_counter() - t
        return reduced

    def warmup(self, runs: int = 1) -> None:
        """Run on mid-grey views so kernels and allocators are ready before the first frame."""
        grey = Image.new('RGB', (self.config.image_width, self.config.image_height),
                         (128, 128, 128))
        for _ in range(runs):
            self.features_from_images([grey] * len(self.config.view_names))

    def reset(self) -> None:
        # Qwen2.5-VL caches rotary offsets between generate() steps; features need none.
        self.model.model.rope_deltas = None

    def close(self) -> None:
        """Stop the preprocessing threads (idle ones also end with the interpreter)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def _map(self, function, items: list) -> list:
        # In view order; errors (VlmInputError) propagate from the pool as from a loop.
        if self._pool is None or len(items) < 2:
            return [function(item) for item in items]
        return list(self._pool.map(function, items))

    def _synchronize(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)


class DelayedVlm:
    """A VLM whose every inference takes `delay_s` longer: a stand-in for a heavier model.

    Same interface as the wrapped model. The delay is added after the inner inference and
    included in `inference_ms`, so the features age exactly as a slower model's would.
    """

    def __init__(self, inner, delay_s: float, sleep=time.sleep) -> None:
        if not delay_s >= 0.0:
            raise ValueError(f'delay_s must be >= 0, got {delay_s}')
        self.inner = inner
        self.delay_s = float(delay_s)
        self._sleep = sleep
        self.last_timings: dict[str, float] = {}

    @property
    def contract(self) -> FeatureContract:
        return self.inner.contract

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def untrained(self) -> bool:
        return self.inner.untrained

    def infer(self, obs: VlmObservation) -> VLFeatureData:
        """Run the wrapped model, then wait `delay_s`."""
        out = self.inner.infer(obs)
        start = time.perf_counter()
        self._sleep(self.delay_s)
        delay_ms = (time.perf_counter() - start) * 1e3
        self.last_timings = {**getattr(self.inner, 'last_timings', {}), 'delay_ms': delay_ms}
        if 'total_ms' in self.last_timings:
            self.last_timings['total_ms'] += delay_ms
        return dataclasses.replace(out, inference_ms=out.inference_ms + delay_ms)

    def reset(self) -> None:
        self.inner.reset()


def build_vlm(config: VlmConfig, *, download: bool = True):
    """Return the VLM the config describes: the extractor, delayed by `artificial_delay_s`."""
    extractor = VlmFeatureExtractor(config, download=download)
    return DelayedVlm(extractor, config.artificial_delay_s) if config.artificial_delay_s > 0 \
        else extractor
