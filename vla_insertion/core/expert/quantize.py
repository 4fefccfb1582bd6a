"""Lower-precision weights for the action expert on the CPU, applied at load time.

A batch-1 forward of the default expert reads all 82 MB of its fp32 weights once, and on one
core that read alone is ~7 ms (docs/benchmarks.md). Storing the large Linear layers with fewer
bytes is what makes one thread fast:

- 'int8': dynamic quantisation (fbgemm): int8 weights per tensor, activations quantised per call
  (7-bit range, fbgemm's `reduce_range`, safe on CPUs without VNNI), int32 accumulation.
  ~4x fewer weight bytes; actions differ from fp32 by a few percent of their spread. The layer
  that first sees the raw VL features stays fp16 (the attention pooling's projection, the
  token pooling's per-token projection): its input carries the language model's few
  large-activation channels, and a per-tensor int8 scale set by those channels leaves the
  others ~3 levels (with attention pooling that one layer was 2/3 of the whole error, 0.11 of
  0.14 normalised units; with token pooling int8 there gave max 0.15, fp16 there 0.055);
- 'fp16': fp16 weights, fp32 arithmetic (fbgemm's fp16 GEMM). 2x fewer bytes; actions differ
  by ~1e-3 of their spread.

Only Linear layers with at least `MIN_WEIGHTS` weights are converted: they hold 96.5 % of the
weights, while the small ones (state encoder, VL scores, the regression head's output, the flow
head's input and output maps) cost little time and keep the outputs' scale exact.

The checkpoint format does not change: `quantize_expert` converts a loaded fp32 model. It uses
`torch.ao.quantization.quantize_dynamic`, which torch 2.13 marks deprecated but still ships with
its fast fbgemm kernels. Measured alternatives (one thread, round robin, docs/benchmarks.md):
torchao `quantize_`, the recommended successor, ran 20 ms per call in eager mode; ONNX Runtime
was faster (int8 3.2 ms, fp32 5.9 ms against 4.4 and 9.9 ms here) but needs an ONNX export of
each head at load (the flow head's Euler loop as two graphs), the deprecated TorchScript
exporter or onnxscript, and two new dependencies; this path meets the 5 ms target without them.
"""
from __future__ import annotations

import copy
import warnings

import torch

PRECISIONS = ('fp32', 'int8', 'fp16')
MIN_WEIGHTS = 1 << 18          # smallest Linear converted [weights]: 512 x 512
# layers kept fp16 by 'int8': the first to see the raw VL features (outlier input channels):
# the attention pooling's projection, the token pooling's per-token projection
FP16_IN_INT8 = ('vl_pooling.proj', 'vl_pooling.token_proj')


def quantizable_layers(model: torch.nn.Module) -> list[str]:
    """Return the names of the Linear layers that `quantize_expert` converts."""
    return [name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module.weight.numel() >= MIN_WEIGHTS]


def quantize_expert(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """Return `model` (fp32) or a converted copy of it (int8, fp16), in eval mode, on the CPU."""
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
    if precision == 'fp32':
        return model
    if next(model.parameters()).device.type != 'cpu':
        raise ValueError(f'precision {precision} runs on the CPU only (fbgemm kernels)')
    quantization = getattr(torch.ao, 'quantization', None)
    if quantization is None or not hasattr(quantization, 'quantize_dynamic'):
        raise RuntimeError(f'precision {precision} needs torch.ao.quantization.quantize_dynamic, '
                           f'which torch {torch.__version__} no longer has; use fp32')
    int8, fp16 = quantization.default_dynamic_qconfig, quantization.float16_dynamic_qconfig
    spec = {name: int8 if precision == 'int8' and name not in FP16_IN_INT8 else fp16
            for name in quantizable_layers(model)}
    with warnings.catch_warnings():
        # deprecated in torch 2.13, still the fastest CPU path here (see the module docstring)
        warnings.simplefilter('ignore', DeprecationWarning)
        warnings.filterwarnings('ignore', message='.*quantize_per_tensor.*')
        return quantization.quantize_dynamic(copy.deepcopy(model).eval(), spec)


# --- how far the converted model's actions are from fp32 --------------------------------------

Inputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]


def validation_inputs(model: torch.nn.Module, count: int, seed: int = 0) -> list[Inputs]:
    """Return `count` batch-1 (features, window, state, capture) inputs drawn like real ones.

    Sensor windows, robot states and the motion since the capture (capture None without
    `capture_motion`) follow the checkpoint's own normalisation statistics. VL
    features are standard normal with 1 % of the channels ten times larger, as the few
    large-activation channels of a language model's hidden states: they set the per-tensor
    int8 scale and are the hard case for dynamic quantisation.
    """
    cfg = model.cfg
    generator = torch.Generator().manual_seed(seed)
    channel_scale = torch.ones(cfg.feature_dim)
    outliers = max(cfg.feature_dim // 100, 1)
    channel_scale[torch.randperm(cfg.feature_dim, generator=generator)[:outliers]] = 10.0

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator)

    inputs = []
    for _ in range(count):
        features = normal(1, cfg.feature_tokens, cfg.feature_dim) * channel_scale
        window = model.sensor_mean + model.sensor_std * normal(1, cfg.window_samples,
                                                               cfg.sensor_channels)
        state = model.state_mean + model.state_std * normal(1, cfg.state_dim)
        capture = None
        if cfg.capture_motion:
            capture = state - (model.motion_mean + model.motion_std * normal(1, cfg.state_dim))
        inputs.append((features, window, state, capture))
    return inputs


def action_difference(reference: torch.nn.Module, other: torch.nn.Module,
                      inputs: list[Inputs], steps: int | None = None) -> dict[str, float]:
    """Compare two models' actions on the same inputs (batch 1, as the node runs them).

    Returns the largest and mean absolute difference [action units] and the largest difference
    as a fraction of the checkpoint's per-dimension action std (`max_over_std`). A flow head
    starts both models from the same noise.
    """
    cfg = reference.cfg
    generator = torch.Generator().manual_seed(0)
    diffs = []
    with torch.inference_mode():
        for features, window, state, capture in inputs:
            noise = torch.randn((1, cfg.horizon * cfg.action_dim), generator=generator)
            a = reference(features, window, state, capture, steps=steps, noise=noise)  # (1, H, A)
            b = other(features, window, state, capture, steps=steps, noise=noise)
            diffs.append((a - b).abs()[0])                                    # (H, A)
    diff = torch.stack(diffs)                                                  # (N, H, A)
    return {'max_abs': float(diff.max()), 'mean_abs': float(diff.mean()),
            'max_over_std': float((diff / reference.action_std).max())}
