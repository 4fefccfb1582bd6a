"""Shared pieces of the rclpy node shells.

QoS profiles, parameters from config dataclasses, /diagnostics and vla/stats publishing, and the
standard main().
"""
from __future__ import annotations

from collections.abc import Callable
import dataclasses
import importlib
import signal
import threading
import typing

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor, ParameterType
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
try:
    from rclpy.experimental import EventsExecutor
except ImportError:  # rclpy before Jazzy
    EventsExecutor = None
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy)
from rclpy.signals import SignalHandlerOptions

from vla_insertion.conversions import diagnostic_status_to_msg, node_stats_to_msg
from vla_insertion.core.config import config_from_dict, ConfigError, field_docs, field_types
from vla_insertion.core.data import NodeStatsData
from vla_insertion.core.health import HealthReport
from vla_insertion.core.params import unknown_parameters
from vla_insertion.core.topics import DIAGNOSTICS, QOS, STATS, Topic
from vla_insertion.msg import NodeStats


def qos_profile(kind: str) -> QoSProfile:
    """Build the rclpy profile of a QoS kind of the topic table (core/topics.py QOS)."""
    spec = QOS[kind]
    return QoSProfile(
        reliability=ReliabilityPolicy.RELIABLE if spec.reliable else ReliabilityPolicy.BEST_EFFORT,
        history=HistoryPolicy.KEEP_LAST, depth=spec.depth,
        durability=(DurabilityPolicy.TRANSIENT_LOCAL if spec.transient_local
                    else DurabilityPolicy.VOLATILE))


# The profiles by name, for code that has no Topic at hand (the reasons are in core/topics.py).
SENSOR_QOS = qos_profile('sensor')
WINDOW_QOS = qos_profile('window')
ROBOT_QOS = qos_profile('robot')
STATE_QOS = qos_profile('state')
LATEST_QOS = qos_profile('latest')
STATIC_QOS = qos_profile('static')
DIAGNOSTICS_QOS = qos_profile('diagnostics')


def message_class(msgtype: str):
    """Return the generated class of 'pkg/msg/Type'."""
    package, _, name = msgtype.split('/')
    return getattr(importlib.import_module(f'{package}.msg'), name)


def publisher(node: Node, msg_type, topic: Topic, name: str | None = None, **kwargs):
    """Create a publisher on a table topic with the table's QoS (`name` for camera views)."""
    return node.create_publisher(msg_type, name or topic.name, qos_profile(topic.qos), **kwargs)


def subscription(node: Node, msg_type, topic: Topic, callback, name: str | None = None,
                 **kwargs):
    """Create a subscription on a table topic with the table's QoS."""
    return node.create_subscription(msg_type, name or topic.name, callback,
                                    qos_profile(topic.qos), **kwargs)


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


def declare_config(node: Node, cls: type, extra_prefixes: tuple[str, ...] = ()):
    """Declare one ROS parameter per field of `cls` and build the validated config.

    Raises ConfigError (a ValueError) when a value is invalid, or when the params file or the
    command line gives the node a parameter `cls` does not have (a typo would otherwise be
    ignored silently); `run_node` turns that into a fatal log line and a non-zero exit.
    `extra_prefixes`: parameter name prefixes the node declares itself (e.g. `joint_limits.`).
    """
    given = getattr(node, '_parameter_overrides', {})   # params file and -p, not yet declared
    unknown = unknown_parameters(cls, given, extra_prefixes)
    if unknown:
        raise ConfigError(f'unknown parameter(s) {unknown} for node {node.get_name()} '
                          f'({cls.__name__}); known: {sorted(field_types(cls))}')
    docs = field_docs(cls)
    defaults = cls()
    values = {}
    for name, hint in field_types(cls).items():
        default = getattr(defaults, name)
        if isinstance(default, tuple):
            default = list(default)
        descriptor = ParameterDescriptor(description=docs.get(name, ''), type=_param_type(hint))
        param = node.declare_parameter(name, default, descriptor)
        values[name] = param.value
    return config_from_dict(cls, values)


def log_events(node: Node, admitted) -> None:
    """Log the events of a core.stream.Admission (restarts, clock steps) on the node's logger."""
    logger = node.get_logger()
    for level, text in admitted.events:
        if level == 'info':
            logger.info(text)
        elif level == 'frequent':
            logger.warning(text, throttle_duration_sec=2.0)
        else:
            logger.warning(text)


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


class NodeMonitor:
    """Publishes /diagnostics and vla/stats every `period_s` from a node's report callback.

    The status name is the node's fully qualified name without the leading slash
    (`action_expert`, `cell_a/action_expert`) and NodeStats.node is the fully qualified name,
    whatever the report says.

    `report()` returns (HealthReport, NodeStatsData); it runs in its own callback group so a busy
    worker never delays the diagnostics. Every `log_every` reports the node also logs a one-line
    status (the numbers a person watching the terminal wants).
    """

    def __init__(self, node: Node, report: Callable[[], tuple[HealthReport, NodeStatsData]],
                 period_s: float = 1.0, log_every: int = 5,
                 status_line: Callable[[], str] | None = None) -> None:
        self._node = node
        self._report = report
        self._status_line = status_line
        self._log_every = max(1, log_every)
        self._ticks = 0
        self._diag_pub = publisher(node, DiagnosticArray, DIAGNOSTICS)
        self._stats_pub = publisher(node, NodeStats, STATS)
        self._timer = node.create_timer(period_s, self._publish,
                                        callback_group=MutuallyExclusiveCallbackGroup())

    def _publish(self) -> None:
        health, stats = self._report()
        array = DiagnosticArray()
        array.header.stamp = self._node.get_clock().now().to_msg()
        # one identity everywhere: the node's fully qualified name (namespace/name), so two
        # cells under different namespaces stay apart in Robot Monitor and rqt_plot
        fqn = self._node.get_fully_qualified_name()
        array.status = [diagnostic_status_to_msg(
            fqn.lstrip('/'), fqn, health.level, health.message, health.values)]
        self._diag_pub.publish(array)
        self._stats_pub.publish(node_stats_to_msg(dataclasses.replace(stats, node=fqn)))
        self._ticks += 1
        if self._status_line is not None and self._ticks % self._log_every == 0:
            self._node.get_logger().info(self._status_line())


def _executor_for(node: Node, threads: int):
    """Pick the executor: the C++ events executor unless the node needs parallel callbacks.

    Our nodes do their heavy work in their own threads, so their callbacks only store inputs;
    at hundreds of messages per second the Python executors' per-callback overhead (wait-set
    rebuilding) was the largest CPU cost of the action expert. A node whose callbacks block
    (e.g. a timer-scheduled expert waiting for features) sets `needs_parallel_callbacks`.
    """
    if getattr(node, 'needs_parallel_callbacks', False) or EventsExecutor is None:
        return MultiThreadedExecutor(num_threads=threads)
    return EventsExecutor()


def run_node(factory: Callable[[], Node], args=None, threads: int = 4) -> int:
    """Run a node as main(): init, build, spin on a multi-threaded executor, shut down.

    SIGINT and SIGTERM are handled here rather than by rclpy: rclpy's own handler invalidates
    the context at once, while worker threads may still be publishing. Instead the spin loop
    ends, `destroy_node()` stops the node's threads, and only then is the context shut down.

    A ConfigError while building the node is a fatal configuration error: it is logged and the
    process exits with status 2. Other exceptions propagate.
    """
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    node = None
    executor = None
    try:
        try:
            node = factory()
        except ConfigError as exc:
            rclpy.logging.get_logger('vla_insertion').fatal(f'invalid configuration: {exc}')
            return 2
        executor = _executor_for(node, threads)
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if executor is not None:
            executor.shutdown(timeout_sec=2.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
