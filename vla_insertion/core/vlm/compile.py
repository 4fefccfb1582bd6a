"""torch.compile for the VLM's forward pass: when it is on, and what is compiled.

What: the vision tower (`model.model.visual`) and the language model
(`model.model.language_model`), each compiled in place with `nn.Module.compile` and static
shapes: a node always runs the same views at the same size, so the shapes never change after
the first call (which compiles, seconds to minutes) and the cost is paid once at warm-up. The
glue between them (rotary indices, scattering the image embeddings into the text) stays eager.

Modes (`compile_mode`): 'default' (inductor kernels), 'reduce-overhead' (the same plus CUDA
graphs, which remove kernel-launch gaps on a GPU), 'max-autotune-no-cudagraphs' (autotuned
matmuls, long compile).

When (`torch_compile`): 'on', 'off', or 'auto'. 'auto' is on only for a CUDA device and only once a
measurement on a GPU has shown that compiling helps (`COMPILE_HELPS_ON_CUDA`, set from
benchmarks/bench_vlm_gpu.py). Until then no GPU has measured it, so 'auto' means off.
"""
from __future__ import annotations

import logging

import torch

from vla_insertion.core.config import VLM_COMPILE_MODES as COMPILE_MODES

logger = logging.getLogger(__name__)


# Measured on a GPU with benchmarks/bench_vlm_gpu.py: True if compile beat eager for the 3B in
# bf16 (and which mode), False if not, None while not measured. None -> 'auto' is off.
COMPILE_HELPS_ON_CUDA: bool | None = None
MEASURED_MODE = 'default'


def resolve_compile(setting: str, device: torch.device) -> bool:
    """Return whether to compile for the config's `torch_compile` setting on `device`."""
    if setting == 'on':
        return True
    if setting == 'off':
        return False
    if setting != 'auto':
        raise ValueError(f"torch_compile must be 'auto', 'on' or 'off', got {setting!r}")
    on = device.type == 'cuda' and COMPILE_HELPS_ON_CUDA is True
    if device.type == 'cuda' and COMPILE_HELPS_ON_CUDA is None:
        logger.info('compile: auto -> off (torch.compile has not been measured on a GPU yet; '
                    'run benchmarks/bench_vlm_gpu.py)')
    return on


def compile_model(model: torch.nn.Module, mode: str = 'default', backend: str = 'inductor'
                  ) -> torch.nn.Module:
    """Compile the vision tower and the language model of a Qwen2.5-VL in place; return it.

    `backend` other than inductor (e.g. 'eager', for tests) ignores `mode`.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f'compile_mode must be one of {COMPILE_MODES}, got {mode!r}')
    options: dict = {'backend': backend, 'dynamic': False}
    if backend == 'inductor' and mode != 'default':
        options['mode'] = mode
    for part in (model.model.visual, model.model.language_model):
        part.compile(**options)
    logger.info(f'torch.compile ({backend}, {mode}) on the vision tower and the language '
                'model: the first inference compiles')
    return model


def uncompile_model(model: torch.nn.Module) -> torch.nn.Module:
    """Undo `compile_model` (the modules run eagerly again); return the model."""
    for part in (model.model.visual, model.model.language_model):
        part._compiled_call_impl = None
    return model
