"""Validated configuration dataclasses, shared by nodes (ROS parameters) and tools (YAML).

Each component's config is a frozen dataclass whose fields carry one comment with the unit;
`__post_init__` raises ConfigError with the offending value. Nodes declare one ROS parameter per
field (the comment becomes the parameter description, see `field_docs`) and tools load the same
fields from the ROS params YAML in config/ with `load_node_params`.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import io
import math
from pathlib import Path
import re
import tokenize
import typing

import yaml


class ConfigError(ValueError):
    """A configuration value is out of range or of the wrong kind."""


# --- validation helpers -------------------------------------------------------------------

def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def require_positive(name: str, value: float) -> None:
    require(isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
            f'{name} must be a finite number > 0, got {value!r}')


def require_non_negative(name: str, value: float) -> None:
    require(isinstance(value, (int, float)) and math.isfinite(value) and value >= 0,
            f'{name} must be a finite number >= 0, got {value!r}')


def require_port(name: str, value: int) -> None:
    require(isinstance(value, int) and 0 < value < 65536,
            f'{name} must be a TCP/UDP port in 1..65535, got {value!r}')


def require_one_of(name: str, value, choices) -> None:
    require(value in choices, f'{name} must be one of {sorted(choices)}, got {value!r}')


def require_unique_names(name: str, values) -> None:
    require(len(values) > 0 and all(isinstance(v, str) and v for v in values),
            f'{name} must be a non-empty list of non-empty strings, got {values!r}')
    require(len(set(values)) == len(values), f'{name} must not repeat names, got {values!r}')


# --- introspection: field comments become parameter descriptions --------------------------

@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """Map each dataclass field to the `# comment` written after it in the class body."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    pending: str | None = None
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.start[1] == 4 and pending is None:
            pending = tok.string
        elif tok.type == tokenize.COMMENT and pending is not None:
            docs[pending] = tok.string.lstrip('#').strip()
        elif tok.type == tokenize.NEWLINE:
            pending = None
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in docs.items() if k in names}


def field_types(cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value, hint):
    """YAML/ROS values -> the field's Python type (lists -> tuples, ints -> floats)."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        (item_type, *_rest) = typing.get_args(hint) or (object,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f'expected a list, got {value!r}')
        return tuple(_coerce(v, item_type) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def config_from_dict(cls: type, values: dict, *, ignore_unknown: bool = False):
    """Build a config dataclass from plain values, refusing unknown keys unless told not to."""
    types = field_types(cls)
    unknown = set(values) - set(types)
    if unknown and not ignore_unknown:
        raise ConfigError(f'{cls.__name__}: unknown parameter(s) {sorted(unknown)}; '
                          f'known: {sorted(types)}')
    kwargs = {}
    for name, hint in types.items():
        if name in values:
            try:
                kwargs[name] = _coerce(values[name], hint)
            except ConfigError as exc:
                raise ConfigError(f'{cls.__name__}.{name}: {exc}') from None
    return cls(**kwargs)


def config_to_dict(config) -> dict:
    """Config dataclass -> plain dict (tuples become lists), e.g. for JSON or YAML."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


# --- ROS params YAML ----------------------------------------------------------------------

def load_node_params(path: str | Path, node_name: str) -> dict:
    """Parameters of one node from a ROS 2 params file (`/**` entries apply to every node)."""
    with open(path, encoding='utf-8') as f:
        doc = yaml.safe_load(f) or {}
    if not isinstance(doc, dict):
        raise ConfigError(f'{path}: expected a mapping of node names, got {type(doc).__name__}')
    params: dict = {}
    for key in ('/**', node_name, f'/{node_name}'):
        entry = doc.get(key) or {}
        params.update(entry.get('ros__parameters', {}) or {})
    for key, entry in doc.items():
        # namespaced entries such as /cell_a/vlm_node
        if isinstance(key, str) and re.fullmatch(rf'/?[\w/]*/{re.escape(node_name)}', key):
            params.update((entry or {}).get('ros__parameters', {}) or {})
    return params


# --- VLM ----------------------------------------------------------------------------------

VLM_DTYPES = ('auto', 'float32', 'bfloat16', 'float16')
VLM_ATTENTION = ('sdpa', 'eager', 'flash_attention_2')
VLM_MODES = ('async', 'sync')


@dataclasses.dataclass(frozen=True)
class VlmConfig:
    """The VLM node: model, views, prompt, feature reduction and scheduling."""

    model: str = 'Qwen/Qwen2.5-VL-3B-Instruct'  # hub id or local folder (make_tiny_vlm writes one)
    device: str = 'auto'           # 'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:N'
    dtype: str = 'auto'            # 'auto' (bf16 on cuda, fp32 on cpu), float32, bfloat16, float16
    attn_implementation: str = 'sdpa'  # attention kernel: sdpa, eager, flash_attention_2
    view_names: tuple[str, ...] = (  # camera views in prompt order (cameras/<view>/...)
        'zed_1', 'zed_2', 'zed_3', 'zed_4', 'oak')
    image_width: int = 640         # pixels each view is resized to before the processor
    image_height: int = 360        # pixels each view is resized to before the processor
    instruction: str = 'Insert the needle into the target.'  # task instruction in the prompt
    pool_grid_h: int = 2           # rows of image tokens per view after grid pooling [tokens]
    pool_grid_w: int = 4           # columns of image tokens per view after grid pooling [tokens]
    sync_tolerance_s: float = 0.1  # max spread of the capture stamps within one set of views [s]
    max_view_age_s: float = 0.5    # views older than this at selection are stale [s]
    max_rate_hz: float = 0.0       # upper bound on inference starts [Hz], 0 = back to back
    mode: str = 'async'            # 'async': run continuously; 'sync': run per vla/feature_request
    torch_threads: int = 1         # CPU threads for torch [threads], 0 = torch's default
    warmup_runs: int = 1           # inferences on blank views at start-up, unpublished [runs]

    def __post_init__(self) -> None:
        require(isinstance(self.model, str) and bool(self.model.strip()),
                f'model must be a hub id or a folder, got {self.model!r}')
        require(isinstance(self.device, str)
                and re.fullmatch(r'auto|cpu|cuda(:\d+)?', self.device) is not None,
                f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        require_one_of('dtype', self.dtype, VLM_DTYPES)
        require(not (self.device == 'cpu' and self.dtype == 'float16'),
                'dtype float16 is not supported on the CPU, use float32 or bfloat16')
        require_one_of('attn_implementation', self.attn_implementation, VLM_ATTENTION)
        require_unique_names('view_names', self.view_names)
        for name in ('image_width', 'image_height'):
            value = getattr(self, name)
            # the vision tower needs at least one 28x28 merged patch
            require(isinstance(value, int) and 28 <= value <= 4096,
                    f'{name} must be an integer in 28..4096 pixels, got {value!r}')
        require(isinstance(self.instruction, str) and bool(self.instruction.strip()),
                f'instruction must not be empty, got {self.instruction!r}')
        for name in ('pool_grid_h', 'pool_grid_w'):
            value = getattr(self, name)
            require(isinstance(value, int) and 1 <= value <= 64,
                    f'{name} must be an integer in 1..64 tokens, got {value!r}')
        require_positive('sync_tolerance_s', self.sync_tolerance_s)
        require_positive('max_view_age_s', self.max_view_age_s)
        require_non_negative('max_rate_hz', self.max_rate_hz)
        require_one_of('mode', self.mode, VLM_MODES)
        require(isinstance(self.torch_threads, int) and 0 <= self.torch_threads <= 256,
                f'torch_threads must be an integer in 0..256, got {self.torch_threads!r}')
        require(isinstance(self.warmup_runs, int) and 0 <= self.warmup_runs <= 100,
                f'warmup_runs must be an integer in 0..100, got {self.warmup_runs!r}')


# --- action expert ------------------------------------------------------------------------

EXPERT_MODES = ('async', 'sync')
EXPERT_SCHEDULERS = ('thread', 'timer')


@dataclasses.dataclass(frozen=True)
class ExpertConfig:
    """The action expert node: checkpoint, rate, staleness rules and scheduling."""

    checkpoint: str = 'artifacts/checkpoints/untrained-expert'  # checkpoint folder path
    rate_hz: float = 10.0          # chunk rate [Hz]
    max_feature_age_s: float = 1.0  # refuse VL features older than this at use [s]
    max_sensor_age_s: float = 0.1  # refuse sensor windows whose newest sample is older [s]
    max_robot_age_s: float = 0.2   # refuse robot joint states or poses older than this [s]
    require_complete_window: bool = True  # refuse sensor windows with missing (NaN) rows
    device: str = 'cpu'            # torch device of the expert: 'cpu', 'cuda', 'cuda:N'
    torch_threads: int = 1         # CPU threads for torch [threads], 0 = torch's default
    mode: str = 'async'            # 'async': newest features; 'sync': request fresh ones per step
    sync_timeout_s: float = 1.0    # sync mode: longest wait for requested features [s]
    flow_steps: int = 0            # ODE steps of a flow-head checkpoint [steps], 0 = its default
    seed: int = 0                  # seed of the flow head's noise, -1 = fresh noise every chunk
    scheduler: str = 'thread'      # 'thread': absolute-deadline loop; 'timer': rclpy timer

    def __post_init__(self) -> None:
        require(isinstance(self.checkpoint, str) and bool(self.checkpoint.strip()),
                f'checkpoint must be a folder path, got {self.checkpoint!r}')
        require_positive('rate_hz', self.rate_hz)
        require(self.rate_hz <= 1000.0, f'rate_hz must be <= 1000, got {self.rate_hz!r}')
        for name in ('max_feature_age_s', 'max_sensor_age_s', 'max_robot_age_s',
                     'sync_timeout_s'):
            require_positive(name, getattr(self, name))
        require(isinstance(self.require_complete_window, bool),
                f'require_complete_window must be a bool, got {self.require_complete_window!r}')
        require(isinstance(self.device, str)
                and re.fullmatch(r'cpu|cuda(:\d+)?', self.device) is not None,
                f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        require(isinstance(self.torch_threads, int) and 0 <= self.torch_threads <= 256,
                f'torch_threads must be an integer in 0..256, got {self.torch_threads!r}')
        require_one_of('mode', self.mode, EXPERT_MODES)
        require(isinstance(self.flow_steps, int) and 0 <= self.flow_steps <= 1000,
                f'flow_steps must be an integer in 0..1000, got {self.flow_steps!r}')
        require(isinstance(self.seed, int) and self.seed >= -1,
                f'seed must be an integer >= -1, got {self.seed!r}')
        require_one_of('scheduler', self.scheduler, EXPERT_SCHEDULERS)
