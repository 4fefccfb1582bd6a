"""Shared pieces of the rclpy node shells.

QoS profiles, parameters from config dataclasses, /diagnostics and vla/stats publishing, and the
standard main().
"""
from __future__ import annotations

from collections.abc import Callable
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
from vla_insertion.msg import NodeStats

# Camera and high-rate sensor inputs: the newest sample matters, a lost one is not resent.
SENSOR_QOS = QoSProfile(reliability=ReliabilityPolicy.BEST_EFFORT,
                        history=HistoryPolicy.KEEP_LAST, depth=5,
                        durability=DurabilityPolicy.VOLATILE)
# Sensor windows: every window is a complete state, so the expert needs only the newest; kept
# reliable with a history of ~1.5 s at 65 Hz so a recorder starved of CPU for a moment still
# gets every window (a reliable reader loses what the writer's history no longer holds).
WINDOW_QOS = QoSProfile(reliability=ReliabilityPolicy.RELIABLE,
                        history=HistoryPolicy.KEEP_LAST, depth=100,
                        durability=DurabilityPolicy.VOLATILE)
# Robot state at 100 Hz: reliable, 200 ms of history for the same reason.
ROBOT_QOS = QoSProfile(reliability=ReliabilityPolicy.RELIABLE,
                       history=HistoryPolicy.KEEP_LAST, depth=20,
                       durability=DurabilityPolicy.VOLATILE)
# Action chunks (and state-like outputs): reliable, only the newest matters.
STATE_QOS = QoSProfile(reliability=ReliabilityPolicy.RELIABLE,
                       history=HistoryPolicy.KEEP_LAST, depth=2,
                       durability=DurabilityPolicy.VOLATILE)
LATEST_QOS = QoSProfile(reliability=ReliabilityPolicy.RELIABLE,
                        history=HistoryPolicy.KEEP_LAST, depth=1,
                        durability=DurabilityPolicy.VOLATILE)
# Static metadata: late joiners get the last value.
STATIC_QOS = QoSProfile(reliability=ReliabilityPolicy.RELIABLE,
                        history=HistoryPolicy.KEEP_LAST, depth=1,
                        durability=DurabilityPolicy.TRANSIENT_LOCAL)
DIAGNOSTICS_QOS = QoSProfile(reliability=ReliabilityPolicy.RELIABLE,
                             history=HistoryPolicy.KEEP_LAST, depth=10,
                             durability=DurabilityPolicy.VOLATILE)

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


def declare_config(node: Node, cls: type, prefix: str = ''):
    """Declare one ROS parameter per field of `cls` and build the validated config.

    Raises ConfigError (a ValueError) when a value is invalid; `run_node` turns that into a
    fatal log line and a non-zero exit.
    """
    docs = field_docs(cls)
    defaults = cls()
    values = {}
    for name, hint in field_types(cls).items():
        default = getattr(defaults, name)
        if isinstance(default, tuple):
            default = list(default)
        descriptor = ParameterDescriptor(description=docs.get(name, ''), type=_param_type(hint))
        param = node.declare_parameter(prefix + name, default, descriptor)
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
        self._diag_pub = node.create_publisher(DiagnosticArray, '/diagnostics', DIAGNOSTICS_QOS)
        self._stats_pub = node.create_publisher(NodeStats, 'vla/stats', LATEST_QOS)
        self._timer = node.create_timer(period_s, self._publish,
                                        callback_group=MutuallyExclusiveCallbackGroup())

    def _publish(self) -> None:
        health, stats = self._report()
        array = DiagnosticArray()
        array.header.stamp = self._node.get_clock().now().to_msg()
        name = f'{self._node.get_name()}: {stats.node}' if stats.node else self._node.get_name()
        array.status = [diagnostic_status_to_msg(
            name, self._node.get_fully_qualified_name(), health.level, health.message,
            health.values)]
        self._diag_pub.publish(array)
        self._stats_pub.publish(node_stats_to_msg(stats))
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
