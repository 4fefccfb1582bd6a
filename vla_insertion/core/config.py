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
