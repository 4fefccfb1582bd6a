"""One way from a ROS 2 params file to a validated config, for tools and for nodes' checks.

A params file maps node names to `ros__parameters`. A key applies to a node when it matches the
node's fully qualified name (namespace + name) the way rcl matches it: `/camera_bridge` (or
`camera_bridge`) only the node in the root namespace, `/cell_a/camera_bridge` only under
`/cell_a`, `/**/camera_bridge` the node under any namespace, `/**` every node, and `*` one
namespace level. The shipped file is keyed `/**/<node>:` so it applies whatever namespace the
cell is launched in.

Sections are applied in file order, more specific keys last (a key naming the node exactly
overrides a wildcard one). A parameter that the node's config does not have is an error naming
the parameter, the file and the section, unless it comes from a section for every node (`/**`)
or is one that ROS itself reads (`use_sim_time`, `qos_overrides.*`).
"""
from __future__ import annotations

from pathlib import Path

import yaml

from vla_insertion.core.config import config_from_dict, ConfigError, field_types

# Parameters that ROS or rclpy declare themselves, and `autostart`, which the node shell of a
# managed node declares (ros/lifecycle.py ManagedNode): never "unknown", never config fields.
ROS_PARAMETERS = ('use_sim_time', 'start_type_description_service', 'autostart')
ROS_PARAMETER_PREFIXES = ('qos_overrides.',)


def fqn(node_name: str, namespace: str = '') -> str:
    """Return the fully qualified node name, e.g. ('vlm_node', 'cell_a') -> /cell_a/vlm_node."""
    ns = '/'.join(p for p in namespace.strip('/').split('/') if p)
    return f'/{ns}/{node_name}' if ns else f'/{node_name}'


def key_matches(key: str, node_fqn: str) -> bool:
    """Whether a params-file key applies to the node with this fully qualified name."""
    pattern = [p for p in key.strip('/').split('/') if p]
    name = [p for p in node_fqn.strip('/').split('/') if p]

    def match(i: int, j: int) -> bool:
        if i == len(pattern):
            return j == len(name)
        if pattern[i] == '**':
            return any(match(i + 1, k) for k in range(j, len(name) + 1))
        if j == len(name):
            return False
        return (pattern[i] == '*' or pattern[i] == name[j]) and match(i + 1, j + 1)

    return match(0, 0)


def _specificity(key: str) -> int:
    # fewer wildcards = more specific; applied later so that it wins
    tokens = [p for p in key.strip('/').split('/') if p]
    return len(tokens) * 4 - 3 * tokens.count('**') - 2 * tokens.count('*')


def read_params_file(path: str | Path) -> dict:
    """Return the parsed YAML of a params file, checked to be a mapping of node sections."""
    try:
        with open(path, encoding='utf-8') as f:
            doc = yaml.safe_load(f) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f'{path}: not valid YAML: {exc}') from None
    if not isinstance(doc, dict):
        raise ConfigError(f'{path}: expected a mapping of node names, got {type(doc).__name__}')
    for key, entry in doc.items():
        if not isinstance(key, str) or not isinstance(entry, dict) \
                or not isinstance(entry.get('ros__parameters', {}) or {}, dict):
            raise ConfigError(f'{path}: section {key!r} must be a mapping with ros__parameters')
    return doc


def flatten(values: dict, prefix: str = '') -> dict:
    """Nested parameter mappings -> dotted names, as ROS reads them (a.b.c: value)."""
    out = {}
    for key, value in values.items():
        name = f'{prefix}{key}'
        if isinstance(value, dict):
            out.update(flatten(value, name + '.'))
        else:
            out[name] = value
    return out


def node_params(path: str | Path, node_name: str, namespace: str = ''
                ) -> dict[str, tuple[object, str]]:
    """Return {parameter: (value, section key)} of one node from a params file."""
    doc = read_params_file(path)
    node = fqn(node_name, namespace)
    matching = [k for k in doc if key_matches(k, node)]
    matching.sort(key=_specificity)         # stable: file order among equals
    params: dict[str, tuple[object, str]] = {}
    for key in matching:
        for name, value in flatten(doc[key].get('ros__parameters') or {}).items():
            params[name] = (value, key)
    return params


def sections_not_applying(path: str | Path, node_name: str, namespace: str = '') -> list[str]:
    """Return the keys that name this node but do not apply to it under `namespace`.

    A section keyed `camera_bridge:` (or `/camera_bridge:`) applies only in the root namespace:
    under `namespace:=cell_a` rcl drops it without a word and the node runs on its code
    defaults. Nodes warn with these keys (ros/parameters.py).
    """
    doc = read_params_file(path)
    node = fqn(node_name, namespace)
    return [key for key in doc if [p for p in key.strip('/').split('/') if p][-1:] == [node_name]
            and not key_matches(key, node)]


def params_files(argv: list[str]) -> list[str]:
    """Return the `--params-file` paths of a command line's `--ros-args` part, in order."""
    files, in_ros = [], False
    for i, arg in enumerate(argv):
        if arg == '--ros-args':
            in_ros = True
        elif arg == '--':
            in_ros = False
        elif in_ros and arg == '--params-file' and i + 1 < len(argv):
            files.append(argv[i + 1])
    return files


def is_ros_parameter(name: str) -> bool:
    return name in ROS_PARAMETERS or name.startswith(ROS_PARAMETER_PREFIXES)


def unknown_parameters(cls: type, names, extra_prefixes: tuple[str, ...] = ()) -> list[str]:
    """Return the names that are neither fields of `cls` nor parameters ROS reads itself.

    A config may name groups of nested parameters its component reads itself in a class
    attribute `NESTED_PARAMETERS` (e.g. ExecutorConfig: `joint_limits.<joint>.<key>`).
    """
    extra_prefixes = tuple(extra_prefixes) + tuple(
        f'{group}.' for group in getattr(cls, 'NESTED_PARAMETERS', ()))
    known = set(field_types(cls))
    return sorted(n for n in names if n not in known and not is_ros_parameter(n)
                  and not (extra_prefixes and n.startswith(extra_prefixes)))


def load_config(cls: type, node_name: str, params_file: str | Path | None = None, *,
                namespace: str = '', overrides: dict | None = None,
                defaults: dict | None = None, extra_prefixes: tuple[str, ...] = ()):
    """Build `cls` from defaults, then the node's params-file sections, then `overrides`.

    `defaults` replace the dataclass defaults (e.g. a tool's local model folder instead of
    the hub id); `overrides` entries that are None are left out (an unset command-line flag).

    Raises ConfigError for a value out of range and for a parameter `cls` does not have (the
    message names the parameter, the file and the section). `extra_prefixes` are parameter
    name prefixes that the caller reads itself (e.g. `joint_limits.`).
    """
    found = node_params(params_file, node_name, namespace) if params_file else {}
    unknown = unknown_parameters(cls, found, extra_prefixes)
    strict = [n for n in unknown if found[n][1].strip('/') != '**']
    if strict:
        where = ', '.join(f'{n!r} in section {found[n][1]!r}' for n in strict)
        raise ConfigError(f'{params_file}: unknown parameter(s) for node {node_name} '
                          f'({cls.__name__}): {where}; known: {sorted(field_types(cls))}')
    values = dict(defaults or {})
    values.update({n: v for n, (v, _) in found.items() if n in field_types(cls)})
    values.update({n: v for n, v in (overrides or {}).items() if v is not None})
    return config_from_dict(cls, values)
