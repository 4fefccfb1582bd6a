"""Where a VLM comes from: a hub id or a local folder, checked before anything is loaded.

A model folder holds a Hugging Face model (config.json, safetensors weights, tokenizer files,
processor config) and, when vla_insertion wrote it, a marker file `vla_insertion_model.json`
with the model's portable name and whether its weights are untrained. Every check here reads
JSON only (no torch), so a missing piece is reported by name before a slow load starts.

The hub is never contacted unless asked (`download`, the VLM's `hub_download`): a hub id is
looked up in the local Hugging Face cache, at a pinned `revision` (a commit) or at the cached
`main`. Either way the digest of the weight files (core/vlm/weights.py) is part of the
feature contract, so another snapshot's weights never pass for these.
"""
from __future__ import annotations

from dataclasses import dataclass
import json
import logging
from pathlib import Path
import re

logger = logging.getLogger(__name__)

MARKER_FILE = 'vla_insertion_model.json'
TINY_HINT = 'run `make_tiny_vlm` to write the untrained tiny model and point `model` at its folder'

_HUB_ID = re.compile(r'[A-Za-z0-9][\w.-]*/[\w.-]+')


class VlmLoadError(RuntimeError):
    """The VLM cannot be loaded; the message names what is missing."""


@dataclass(frozen=True)
class ModelSource:
    """A model folder that passed the checks, with its portable identity."""

    folder: Path                   # local folder (a hub snapshot in the cache for hub ids)
    model_id: str                  # portable name: hub id, or the name recorded in the folder
    untrained: bool                # True for randomly initialised weights (demo and tests)
    config: dict                   # the folder's config.json
    weights_digest: str = ''       # of the weight files (core/vlm/weights.py); '' = unknown


def is_hub_id(model: str) -> bool:
    """Return True if `model` reads as `owner/name` and is not an existing local path."""
    return bool(_HUB_ID.fullmatch(model)) and not Path(model).expanduser().exists()


def read_marker(folder: Path) -> dict:
    """Return the vla_insertion marker of a model folder, or {} when there is none."""
    path = Path(folder) / MARKER_FILE
    if not path.is_file():
        return {}
    try:
        marker = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError) as exc:
        raise VlmLoadError(f'{path}: unreadable model marker ({exc})') from None
    if not isinstance(marker, dict):
        raise VlmLoadError(f'{path}: model marker must be a JSON object')
    return marker


def read_config(folder: Path) -> dict:
    """Return a model folder's config.json, raising VlmLoadError when absent or unreadable."""
    path = Path(folder) / 'config.json'
    if not path.is_file():
        raise VlmLoadError(f'model folder {folder} has no config (config.json missing); '
                           f'{TINY_HINT}')
    try:
        config = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError) as exc:
        raise VlmLoadError(f'{path}: unreadable model config ({exc})') from None
    if not isinstance(config, dict):
        raise VlmLoadError(f'{path}: model config must be a JSON object')
    return config


def missing_parts(folder: Path) -> list[str]:
    """Name each part a loadable model folder lacks: config, weights, tokenizer, processor."""
    folder = Path(folder)
    missing = []
    if not (folder / 'config.json').is_file():
        missing.append('config (config.json)')
    index = folder / 'model.safetensors.index.json'
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding='utf-8'))['weight_map'].values())
        except (OSError, ValueError, KeyError) as exc:
            missing.append(f'weights (unreadable {index.name}: {exc})')
        else:
            absent = sorted(s for s in shards if not (folder / s).is_file())
            if absent:
                missing.append(f'weights (shards {", ".join(absent)})')
    elif not (any(folder.glob('*.safetensors')) or any(folder.glob('pytorch_model*.bin'))):
        missing.append('weights (*.safetensors)')
    if not ((folder / 'tokenizer.json').is_file()
            or ((folder / 'vocab.json').is_file() and (folder / 'merges.txt').is_file())):
        missing.append('tokenizer (tokenizer.json or vocab.json + merges.txt)')
    if not ((folder / 'preprocessor_config.json').is_file()
            or (folder / 'processor_config.json').is_file()):
        missing.append('processor (preprocessor_config.json)')
    return missing


def model_id_of(folder: Path, config: dict, marker: dict) -> str:
    """Return the portable model name: never the machine's path to the folder.

    The marker's `model_id` wins; else a hub-style `_name_or_path` recorded in config.json; else
    `local/<folder name>`.
    """
    if marker.get('model_id'):
        return str(marker['model_id'])
    name = str(config.get('_name_or_path', ''))
    if _HUB_ID.fullmatch(name):
        return name
    return f'local/{Path(folder).resolve().name}'


def hub_snapshot(model: str, download: bool = False, revision: str = '') -> Path:
    """Return the cached snapshot folder of a hub id at `revision` ('' = main).

    The hub is contacted only with `download` (and never under HF_HUB_OFFLINE=1).
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    local_only = constants.HF_HUB_OFFLINE or not download
    try:
        return Path(snapshot_download(repo_id=model, revision=revision or None,
                                      local_files_only=local_only))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        how = ('downloads are off (hub_download false, or HF_HUB_OFFLINE)' if local_only
               else f'the download failed: {type(exc).__name__}')
        at = f' at revision {revision}' if revision else ''
        raise VlmLoadError(f'model {model!r}{at} is not in the local Hugging Face cache and '
                           f'{how}; {TINY_HINT}') from None


def resolve_model(model: str, *, download: bool = False, revision: str = '') -> ModelSource:
    """Check a hub id or folder and return its source, or raise VlmLoadError naming the gap.

    The weights digest is computed here (once per file and machine: core/vlm/weights.py).
    """
    from vla_insertion.core.vlm.weights import weights_digest
    if is_hub_id(model):
        folder = hub_snapshot(model, download, revision)
        model_id = model
        if not revision:
            logger.warning(f'model {model} is not pinned to a revision: using the cached '
                           f'snapshot {folder.name}; set revision to pin it')
    else:
        folder = Path(model).expanduser()
        model_id = ''
        if revision:
            raise VlmLoadError(f'revision {revision} is for a hub id; model {model} is a folder '
                               '(its weights digest pins it)')
    if not folder.is_dir():
        raise VlmLoadError(f'model folder not found: {folder}; {TINY_HINT}')
    missing = missing_parts(folder)
    if missing:
        raise VlmLoadError(f'model folder {folder} is incomplete, missing: '
                           f'{"; ".join(missing)}')
    config = read_config(folder)
    marker = read_marker(folder)
    return ModelSource(folder=folder, model_id=model_id or model_id_of(folder, config, marker),
                       untrained=bool(marker.get('untrained', False)), config=config,
                       weights_digest=weights_digest(folder))
