"""ROS parameters from config dataclasses, and the command-line helpers of the tools."""
from __future__ import annotations

import array
from collections.abc import Callable
import sys
import typing

from rcl_interfaces.msg import (
    FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType, SetParametersResult)
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.node import Node
from rclpy.parameter import Parameter

from vla_insertion.core.config import config_from_dict, ConfigError, field_docs, field_types
from vla_insertion.core.params import params_files, sections_not_applying, unknown_parameters


_PARAM_TYPES = {
    bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING,
}
_ARRAY_TYPES = {
    bool: ParameterType.PARAMETER_BOOL_ARRAY, int: ParameterType.PARAMETER_INTEGER_ARRAY,
    float: ParameterType.PARAMETER_DOUBLE_ARRAY, str: ParameterType.PARAMETER_STRING_ARRAY,
}


def _param_type(hint) -> int:
    if typing.get_origin(hint) is tuple:
        return _ARRAY_TYPES[typing.get_args(hint)[0]]
    return _PARAM_TYPES[hint]


def declare_config(node: Node, cls: type, extra_prefixes: tuple[str, ...] = (), *,
                   on_change: Callable[[object], None] | None = None,
                   reconfigurable: Callable[[], bool] | None = None):
    """Declare one ROS parameter per field of `cls` and build the validated config.

    See `_declare_config`. A ConfigError leaves with the node's logger name as `logger_name`,
    so that run_node's fatal line names the node that refused its configuration.
    """
    try:
        return _declare_config(node, cls, extra_prefixes, on_change, reconfigurable)
    except ConfigError as exc:
        exc.logger_name = node.get_logger().name
        raise


def _declare_config(node: Node, cls: type, extra_prefixes: tuple[str, ...],
                    on_change: Callable[[object], None] | None,
                    reconfigurable: Callable[[], bool] | None):
    """Declare one ROS parameter per field of `cls` and build the validated config.

    Raises ConfigError (a ValueError) when a value is invalid, or when the params file or the
    command line gives the node a parameter `cls` does not have (a typo would otherwise be
    ignored silently); `run_node` turns that into a fatal log line and a non-zero exit.
    `extra_prefixes`: parameter name prefixes the node declares itself (e.g. `joint_limits.`).

    Which parameters may change after start-up comes from the config class:
    - the fields named in `cls.LIVE` change at run time: `ros2 param set` builds the config
      with the new value (the same validation as at start-up, so a bad value is refused with
      the reason and the old value kept), then calls `on_change(new_config)`, which applies it;
    - the other fields are read-only (ParameterDescriptor.read_only), unless the node is a
      managed node that passes `reconfigurable`: then they change while it returns True (the
      node is unconfigured) and the node reads them at its next configure;
    - numeric fields named in `cls.RANGES` carry their hard bounds as a descriptor range.
    """
    _warn_sections_not_applying(node)
    live = tuple(getattr(cls, 'LIVE', ()))
    if live and on_change is None:
        raise TypeError(f'{cls.__name__} has live parameters {live}: pass on_change')
    types = field_types(cls)
    given = getattr(node, '_parameter_overrides', {})   # params file and -p, not yet declared
    unknown = unknown_parameters(cls, given, extra_prefixes)     # autostart is known too
    if unknown:
        raise ConfigError(f'unknown parameter(s) {unknown} for node {node.get_name()} '
                          f'({cls.__name__}); known: {sorted(types)}')
    # the config's own checks first: their messages name the rule, not only the range
    config_from_dict(cls, {n: _plain(p.value) for n, p in given.items() if n in types})
    docs = field_docs(cls)
    ranges = getattr(cls, 'RANGES', {})
    defaults = cls()
    values = {}
    for name, hint in types.items():
        default = getattr(defaults, name)
        if isinstance(default, tuple):
            default = list(default)
        descriptor = ParameterDescriptor(description=docs.get(name, ''), type=_param_type(hint))
        if name in live:
            descriptor.additional_constraints = 'live: a change applies at once'
        elif reconfigurable is not None:
            descriptor.additional_constraints = ('changes only while the node is unconfigured; '
                                                 'used at the next configure')
        else:
            descriptor.read_only = True
            descriptor.additional_constraints = 'read-only: set at start-up (params file, -p)'
        if name in ranges:
            low, high = ranges[name]
            if hint is int:
                descriptor.integer_range = [IntegerRange(from_value=low, to_value=high, step=1)]
            else:
                descriptor.floating_point_range = [FloatingPointRange(
                    from_value=float(low), to_value=float(high), step=0.0)]
        if isinstance(default, list) and not default:
            # rclpy takes an empty list for a BYTE_ARRAY: declare the array's type alone, so
            # that the params file's [x, y, z] is accepted; unset reads as the empty default
            default = Parameter.Type(descriptor.type)
        try:
            param = node.declare_parameter(name, default, descriptor)
        except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
            raise ConfigError(f'{name}: {exc}') from None
        values[name] = () if param.value is None else param.value
    config = config_from_dict(cls, values)

    def on_set(params: list) -> SetParametersResult:
        changes = {p.name: _plain(p.value) for p in params if p.name in types}
        if not changes:
            return SetParametersResult(successful=True)
        fixed = sorted(n for n in changes if n not in live)
        if fixed and not (reconfigurable is not None and reconfigurable()):
            return SetParametersResult(successful=False, reason=(
                f'{", ".join(fixed)} can change only while {node.get_name()} is unconfigured '
                f'(ros2 lifecycle set {node.get_fully_qualified_name()} deactivate, then '
                f'cleanup); live parameters: {", ".join(live) or "none"}'))
        # get_parameter_or: an array declared by type alone and never set has no value
        current = {n: _plain(node.get_parameter_or(n).value) for n in types}
        try:
            new = config_from_dict(cls, {**current, **changes})
            if on_change is not None:
                on_change(new)
        except ConfigError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        node.get_logger().info('parameters set: ' + ', '.join(
            f'{n}={v!r}' for n, v in sorted(changes.items())))
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(on_set)
    return config


def _plain(value):
    """Return a parameter value as the config wants it (arrays as lists; unset: empty)."""
    if value is None:               # an array declared by type alone, never set
        return []
    return list(value) if isinstance(value, (array.array, tuple)) else value


def _warn_sections_not_applying(node: Node) -> None:
    """Warn about params-file sections that name this node but not its namespace.

    rcl applies `camera_bridge:` only to /camera_bridge; under a namespace the node would run
    on its code defaults without a word.
    """
    for path in params_files(sys.argv):
        try:
            keys = sections_not_applying(path, node.get_name(), node.get_namespace())
        except (OSError, ConfigError):
            continue                      # rcl itself reports an unreadable file
        for key in keys:
            node.get_logger().warning(
                f'{path}: section {key!r} does not apply to '
                f'{node.get_fully_qualified_name()} (keys without a namespace match only the '
                f"root namespace); key it '/**/{node.get_name()}' so it applies under any "
                'namespace')


def split_ros_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split a command line into (program flags, `--ros-args ...` tail)."""
    if '--ros-args' in argv:
        i = argv.index('--ros-args')
        return argv[:i], argv[i:]
    return argv, []


def with_parameters(ros_args: list[str], values: dict[str, object]) -> list[str]:
    """Append `-p name:=value` for every value that is set (CLI shortcuts of a tool).

    None and False are left out (the parameter keeps its default), True becomes `true` and a
    list or tuple a YAML list of quoted strings.
    """
    params = []
    for name, value in values.items():
        if value is None or value is False:
            continue
        if value is True:
            value = 'true'
        elif isinstance(value, (list, tuple)):
            value = f'[{",".join(repr(str(v)) for v in value)}]'
        params += ['-p', f'{name}:={value}']
    if not params:
        return ros_args
    return (ros_args or ['--ros-args']) + params
