"""Action-expert checkpoints: a folder with safetensors weights and a JSON description.

    <folder>/model.safetensors   the state dict (weights and normalisation buffers), float32
    <folder>/config.json         everything needed to use the weights correctly:

    {
      "format": "vla_insertion.action_expert", "version": 1,
      "untrained": true,                     # random weights: demo and tests only
      "created": "2025-01-01T00:00:00+0000", "description": "...",
      "model": {...ExpertModelConfig...},
      "feature_contract": {...FeatureContract...}, "contract_digest": "0123456789abcdef",
      "sensor": {"channels": ["fx", ...], "units": ["N", ...], "window_samples": 65,
                 "sample_rate_hz": 650.0},
      "state": {"names": ["joint_1", ...], "units": ["rad", ...]},
      "action": {"names": ["joint_1", ..., "gripper"], "units": ["rad", ..., "1"],
                 "dt_s": 0.1, "horizon": 8},
      "normalization": {"sensor_mean": [...], "sensor_std": [...], "state_mean": [...], ...},
      "weights_sha256": "..."               # of model.safetensors
    }

Loading validates every part (format, version, shapes against the model config, the contract
digest against the contract, the weights' hash, normalisation in the JSON against the buffers)
and raises CheckpointError with the file and the reason. `check_features` refuses VL features
made under another contract with ContractMismatch, naming both digests and shapes.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
import hashlib
import json
import math
from pathlib import Path
import time

import numpy as np
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
import torch

from vla_insertion.core.config import ConfigError
from vla_insertion.core.data import DEFAULT_SENSOR_CHANNELS, VLFeatureData
from vla_insertion.core.expert.model import ActionExpert, ExpertModelConfig
from vla_insertion.core.feature_contract import differences, FeatureContract

FORMAT = 'vla_insertion.action_expert'
VERSION = 1
WEIGHTS_FILE = 'model.safetensors'
CONFIG_FILE = 'config.json'

DEFAULT_SENSOR_UNITS = ('N', 'N', 'N', 'N m', 'N m', 'N m', 'm')
DEFAULT_STATE_NAMES = ('joint_1', 'joint_2', 'joint_3', 'joint_4', 'joint_5', 'joint_6',
                       'tool_x', 'tool_y', 'tool_z', 'tool_qx', 'tool_qy', 'tool_qz', 'tool_qw',
                       'gripper')
DEFAULT_STATE_UNITS = ('rad',) * 6 + ('m',) * 3 + ('1',) * 5
DEFAULT_ACTION_NAMES = ('joint_1', 'joint_2', 'joint_3', 'joint_4', 'joint_5', 'joint_6',
                        'gripper')
DEFAULT_ACTION_UNITS = ('rad',) * 6 + ('1',)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupted, inconsistent or of an unsupported version."""


class ContractMismatch(CheckpointError):
    """VL features were made under another feature contract than the checkpoint's."""


@dataclass(frozen=True)
class CheckpointMeta:
    """Everything in config.json except the weights."""

    model: ExpertModelConfig
    contract: FeatureContract
    sensor_channels: tuple[str, ...] = DEFAULT_SENSOR_CHANNELS
    sensor_units: tuple[str, ...] = DEFAULT_SENSOR_UNITS
    sample_rate_hz: float = 650.0            # nominal sensor rate [Hz]
    state_names: tuple[str, ...] = DEFAULT_STATE_NAMES
    state_units: tuple[str, ...] = DEFAULT_STATE_UNITS
    action_names: tuple[str, ...] = DEFAULT_ACTION_NAMES
    action_units: tuple[str, ...] = DEFAULT_ACTION_UNITS
    dt_s: float = 0.1                        # time between consecutive actions [s]
    untrained: bool = True
    description: str = ''
    created: str = ''
    extra: dict = field(default_factory=dict)  # free-form (training data, git commit, ...)

    def __post_init__(self) -> None:
        m = self.model
        checks = [
            (len(self.sensor_channels) == m.sensor_channels,
             f'{len(self.sensor_channels)} sensor channel names for {m.sensor_channels} '
             'model channels'),
            (len(self.sensor_units) == m.sensor_channels, 'one unit per sensor channel'),
            (len(self.state_names) == m.state_dim,
             f'{len(self.state_names)} state names for state_dim {m.state_dim}'),
            (len(self.state_units) == m.state_dim, 'one unit per state value'),
            (len(self.action_names) == m.action_dim,
             f'{len(self.action_names)} action names for action_dim {m.action_dim}'),
            (len(self.action_units) == m.action_dim, 'one unit per action value'),
            (self.contract.num_tokens == m.feature_tokens,
             f'contract num_tokens {self.contract.num_tokens} != model feature_tokens '
             f'{m.feature_tokens}'),
            (self.contract.feature_dim == m.feature_dim,
             f'contract feature_dim {self.contract.feature_dim} != model feature_dim '
             f'{m.feature_dim}'),
            (isinstance(self.dt_s, float) and math.isfinite(self.dt_s) and self.dt_s > 0,
             f'dt_s must be > 0, got {self.dt_s!r}'),
            (math.isfinite(self.sample_rate_hz) and self.sample_rate_hz > 0,
             f'sample_rate_hz must be > 0, got {self.sample_rate_hz!r}'),
        ]
        for ok, message in checks:
            if not ok:
                raise CheckpointError(f'inconsistent checkpoint metadata: {message}')

    @property
    def contract_digest(self) -> str:
        return self.contract.digest

    @property
    def feature_shape(self) -> tuple[int, int]:
        return (self.contract.num_tokens, self.contract.feature_dim)

    def to_dict(self) -> dict:
        return {
            'format': FORMAT, 'version': VERSION, 'untrained': self.untrained,
            'created': self.created, 'description': self.description,
            'model': self.model.to_dict(),
            'feature_contract': self.contract.to_dict(), 'contract_digest': self.contract.digest,
            'sensor': {'channels': list(self.sensor_channels), 'units': list(self.sensor_units),
                       'window_samples': self.model.window_samples,
                       'sample_rate_hz': self.sample_rate_hz},
            'state': {'names': list(self.state_names), 'units': list(self.state_units)},
            'action': {'names': list(self.action_names), 'units': list(self.action_units),
                       'dt_s': self.dt_s, 'horizon': self.model.horizon},
            'extra': self.extra,
        }


@dataclass
class ExpertCheckpoint:
    """A loaded checkpoint: the model (eval mode) and its metadata."""

    model: ActionExpert
    meta: CheckpointMeta
    path: Path | None = None


def check_features(meta: CheckpointMeta, features: VLFeatureData) -> None:
    """Raise ContractMismatch unless `features` were made under the checkpoint's contract."""
    shape = tuple(features.features.shape)
    if features.contract_hash != meta.contract_digest or shape != meta.feature_shape:
        raise ContractMismatch(
            f'VL features do not match the action-expert checkpoint: features contract '
            f'{features.contract_hash!r} shape {shape} (model {features.model_id!r}) vs '
            f'checkpoint contract {meta.contract_digest!r} shape {meta.feature_shape} (model '
            f'{meta.contract.model_id!r}); run the VLM with the contract the expert was trained '
            'on, or use a checkpoint trained on these features')


# --- save ---------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(folder: str | Path, model: ActionExpert, meta: CheckpointMeta) -> Path:
    """Write model.safetensors and config.json into `folder` (created if needed)."""
    if model.cfg != meta.model:
        raise CheckpointError('the model config differs from the metadata model config')
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS_FILE
    state = {k: v.detach().to('cpu', torch.float32).contiguous()
             for k, v in model.state_dict().items()}
    save_file(state, str(weights), metadata={'format': FORMAT, 'version': str(VERSION)})
    doc = meta.to_dict()
    doc['created'] = meta.created or time.strftime('%Y-%m-%dT%H:%M:%S%z')
    doc['normalization'] = model.normalization()
    doc['weights_sha256'] = _sha256(weights)
    tmp = folder / (CONFIG_FILE + '.tmp')
    tmp.write_text(json.dumps(doc, indent=2) + '\n', encoding='utf-8')
    tmp.replace(folder / CONFIG_FILE)
    return folder


def pin_weights(folder: str | Path, vlm: FeatureContract, force: bool = False
                ) -> CheckpointMeta:
    """Write the VLM's weights digest into a checkpoint's contract; return the new metadata.

    For a checkpoint written before contracts carried one, by its owner who knows it was
    trained on these weights. Every other field of the contract must equal the VLM's (a
    CheckpointError names the differences); a checkpoint pinned to other weights is changed
    only with `force`. config.json is rewritten in place (atomically); the weights stay.
    """
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    doc = _read_json(config_path)
    meta = meta_from_dict(doc, str(config_path))
    old = meta.contract
    if not vlm.weights_digest:
        raise CheckpointError('the VLM contract has no weights digest to pin (its weight files '
                              'are not on this machine)')
    if old.weights_digest == vlm.weights_digest:
        return meta
    if old.weights_digest and not force:
        raise CheckpointError(f'{config_path}: pinned already to weights {old.weights_digest}, '
                              f'not {vlm.weights_digest} (force re-pins it)')
    pinned = replace(old, weights_digest=vlm.weights_digest)
    other = differences(pinned, vlm)
    if other:
        raise CheckpointError(f'{config_path}: the contract differs from the one of the VLM in '
                              f'more than the weights: {"; ".join(other)}')
    doc['feature_contract'] = pinned.to_dict()
    doc['contract_digest'] = pinned.digest
    tmp = folder / (CONFIG_FILE + '.tmp')
    tmp.write_text(json.dumps(doc, indent=2) + '\n', encoding='utf-8')
    tmp.replace(config_path)
    return meta_from_dict(doc, str(config_path))


# --- load ---------------------------------------------------------------------------------

# What a checkpoint written before a model field existed did: absolute targets, attention
# pooling of raw features, no motion-since-capture input.
LEGACY_MODEL_FIELDS = {'action_frame': 'absolute', 'vl_pooling': 'attention',
                       'feature_norm': False, 'capture_motion': False}


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f'{path}: missing (a checkpoint folder holds {CONFIG_FILE} and '
                              f'{WEIGHTS_FILE}; write one with make_untrained_checkpoint)')
    try:
        doc = json.loads(path.read_text(encoding='utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f'{path}: not valid JSON: {exc}') from None
    if not isinstance(doc, dict):
        raise CheckpointError(f'{path}: expected a JSON object, got {type(doc).__name__}')
    return doc


def meta_from_dict(doc: dict, where: str = 'config.json') -> CheckpointMeta:
    """Validate a config.json document and build its CheckpointMeta."""
    if doc.get('format') != FORMAT:
        raise CheckpointError(f'{where}: format {doc.get("format")!r} is not {FORMAT!r}')
    if doc.get('version') != VERSION:
        raise CheckpointError(f'{where}: version {doc.get("version")!r} is not supported '
                              f'(this code reads version {VERSION})')
    try:
        # a field a checkpoint predates has its behaviour then, not today's default
        model = ExpertModelConfig(**{**LEGACY_MODEL_FIELDS, **doc['model']})
        contract = FeatureContract.from_dict(doc['feature_contract'])
        sensor, state, action = doc['sensor'], doc['state'], doc['action']
        meta = CheckpointMeta(
            model=model, contract=contract,
            sensor_channels=tuple(sensor['channels']), sensor_units=tuple(sensor['units']),
            sample_rate_hz=float(sensor['sample_rate_hz']),
            state_names=tuple(state['names']), state_units=tuple(state['units']),
            action_names=tuple(action['names']), action_units=tuple(action['units']),
            dt_s=float(action['dt_s']), untrained=bool(doc['untrained']),
            description=str(doc.get('description', '')), created=str(doc.get('created', '')),
            extra=dict(doc.get('extra') or {}))
    except KeyError as exc:
        raise CheckpointError(f'{where}: missing field {exc}') from None
    except (TypeError, ValueError, ConfigError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f'{where}: invalid value: {exc}') from None
    if doc.get('contract_digest') != contract.digest:
        raise CheckpointError(
            f'{where}: contract_digest {doc.get("contract_digest")!r} does not match the digest '
            f'of its feature_contract {contract.digest!r} (edited or corrupted)')
    if sensor.get('window_samples') != model.window_samples or \
            action.get('horizon') != model.horizon:
        raise CheckpointError(f'{where}: sensor.window_samples / action.horizon disagree with '
                              'the model config')
    return meta


def load_checkpoint(folder: str | Path, device: str = 'cpu') -> ExpertCheckpoint:
    """Load and validate a checkpoint folder; raise CheckpointError on any problem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f'{folder}: checkpoint folder not found (write an untrained one '
                              'with `make_untrained_checkpoint`)')
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    doc = _read_json(config_path)
    meta = meta_from_dict(doc, str(config_path))
    if not weights_path.is_file():
        raise CheckpointError(f'{weights_path}: missing')
    if doc.get('weights_sha256') != _sha256(weights_path):
        raise CheckpointError(f'{weights_path}: SHA-256 differs from config.json weights_sha256 '
                              '(corrupted, truncated or from another checkpoint)')
    try:
        state = load_file(str(weights_path), device='cpu')
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f'{weights_path}: unreadable safetensors file: {exc}') from None
    model = ActionExpert(meta.model)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f'{weights_path}: tensors do not match the model config: missing '
                              f'{missing[:5]}, unexpected {unexpected[:5]}')
    wrong = [f'{k} {tuple(state[k].shape)} != {tuple(v.shape)}' for k, v in expected.items()
             if state[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f'{weights_path}: tensor shapes differ from the model config: '
                              f'{wrong[:5]}')
    model.load_state_dict(state)
    norm = doc.get('normalization') or {}
    for name in model.norm_buffers:
        stored = np.asarray(norm.get(name, []), dtype=np.float32)
        if stored.shape != tuple(state[name].shape) or \
                not np.array_equal(stored, state[name].numpy()):
            raise CheckpointError(f'{config_path}: normalization.{name} differs from the '
                                  'weights file')
    bad = [k for k, v in state.items() if not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f'{weights_path}: non-finite values in {bad[:5]}')
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return ExpertCheckpoint(model=model, meta=meta, path=folder)
