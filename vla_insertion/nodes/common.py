"""Shared pieces of the rclpy node shells.

QoS profiles, parameters from config dataclasses, /diagnostics and vla/stats publishing, and the
standard main().
"""
from __future__ import annotations

import array
from collections.abc import Callable
import dataclasses
import gc
import importlib
import signal
import sys
import threading
import traceback
import typing

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import (
    FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType, SetParametersResult)
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
try:
    from rclpy.experimental import EventsExecutor
except ImportError:  # rclpy before Jazzy
    EventsExecutor = None
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy)
from rclpy.signals import SignalHandlerOptions

from vla_insertion.conversions import diagnostic_status_to_msg, node_stats_to_msg
from vla_insertion.core.config import config_from_dict, ConfigError, field_docs, field_types
from vla_insertion.core.data import NodeStatsData
from vla_insertion.core.health import HealthReport
from vla_insertion.core.params import params_files, sections_not_applying, unknown_parameters
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

EXIT_CONFIG = 2          # exit status of an invalid configuration (parameter, checkpoint)
EXIT_FAILED = 1          # a managed node could not reach active for another reason
AUTOSTART = 'autostart'  # managed nodes: drive to active at start (the launch file drives them)
_LOGGER_NAME = 'vla_insertion'  # logger of the node being built (declare_config sets it)


def message_class(msgtype: str):
    """Return the generated class of 'pkg/msg/Type'."""
    package, _, name = msgtype.split('/')
    return getattr(importlib.import_module(f'{package}.msg'), name)


def publisher(node: Node, msg_type, topic: Topic, name: str | None = None, **kwargs):
    """Create a publisher on a table topic with the table's QoS (`name` for camera views)."""
    return node.create_publisher(msg_type, name or topic.name, qos_profile(topic.qos), **kwargs)


def lifecycle_publisher(node: LifecycleNode, msg_type, topic: Topic, name: str | None = None,
                        **kwargs):
    """Create a publisher that publishes only while its managed node is active."""
    return node.create_lifecycle_publisher(msg_type, name or topic.name, qos_profile(topic.qos),
                                           **kwargs)


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


def declare_config(node: Node, cls: type, extra_prefixes: tuple[str, ...] = (), *,
                   on_change: Callable[[object], None] | None = None,
                   reconfigurable: Callable[[], bool] | None = None):
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
    global _LOGGER_NAME
    _LOGGER_NAME = node.get_logger().name    # the fatal line of a failed start names the node
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
        try:
            param = node.declare_parameter(name, default, descriptor)
        except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
            raise ConfigError(f'{name}: {exc}') from None
        values[name] = param.value
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
        current = {n: _plain(node.get_parameter(n).value) for n in types}
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
    """Return a parameter value as the config wants it (arrays as lists)."""
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


class ManagedNode(LifecycleNode):
    """A managed (lifecycle) node: configure loads, activate starts, deactivate stops.

    Cleanup frees what configure loaded, so a model or checkpoint can be swapped in place.

    Subclasses implement `_configure`, `_activate`, `_deactivate` and `_cleanup`; each raises
    on failure and `_deactivate`/`_cleanup` may be called when there is nothing to stop or
    free. An exception of a type in `FAILURES` (type -> exit status) is an expected failure:
    the transition fails with one log line naming the cause (fatal when it ends the process)
    and `exit_code` is set. Any other exception is logged with its traceback and the
    transition ends in ErrorProcessing, which frees everything and returns to unconfigured.

    Parameter `autostart` (read-only, default true): `run_node` configures and activates the
    node at start, so a plain process (the demo, tests, `ros2 run`) runs as before; the launch
    file sets it false and drives the transitions itself.
    """

    FAILURES: dict[type, int] = {ConfigError: EXIT_CONFIG}

    def __init__(self, node_name: str, **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.exit_code = 0
        self._starting = False
        self.autostart = self.declare_parameter(AUTOSTART, True, ParameterDescriptor(
            description='configure and activate at start; false: wait unconfigured for '
                        '`ros2 lifecycle set` (the launch file drives the transitions)',
            type=ParameterType.PARAMETER_BOOL, read_only=True)).value

    @property
    def lifecycle_state(self) -> str:
        """Label of the current state: unconfigured, inactive, active, configuring, ..."""
        return self._state_machine.current_state[1]

    def unconfigured(self) -> bool:
        """Whether configure-time parameters may change now (for declare_config)."""
        return self.lifecycle_state == 'unconfigured'

    def start(self) -> int:
        """Configure and activate; return 0, or the exit status of the failed transition."""
        self._starting = True
        try:
            for trigger in (self.trigger_configure, self.trigger_activate):
                if trigger() != TransitionCallbackReturn.SUCCESS:
                    return self.exit_code or EXIT_FAILED
            return 0
        finally:
            self._starting = False

    # transitions: rclpy calls these from the lifecycle services (or trigger_*)

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = self._transition('configure', self._configure)
        if result != TransitionCallbackReturn.SUCCESS:
            self._quietly(self._cleanup)       # nothing half-loaded stays behind
        return result

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        super().on_activate(state)             # enables the lifecycle publishers first
        result = self._transition('activate', self._activate)
        if result != TransitionCallbackReturn.SUCCESS:
            super().on_deactivate(state)
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = self._transition('deactivate', self._deactivate)
        super().on_deactivate(state)           # then disables the publishers
        return result

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = self._transition('cleanup', self._cleanup)
        free_memory()                          # the process lives on: return the memory now
        return result

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release(state.label)
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release('active')
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        self._release(self.lifecycle_state)
        super().destroy_node()

    def _release(self, state: str) -> None:
        """Stop and free whatever `state` holds, without the state machine (shutdown)."""
        if state == 'active':
            self._quietly(self._deactivate)
        if state in ('active', 'inactive'):
            self._quietly(self._cleanup)

    def _transition(self, name: str, step: Callable[[], None]) -> TransitionCallbackReturn:
        try:
            step()
        except tuple(self.FAILURES) as exc:
            self.exit_code = next(c for t, c in self.FAILURES.items() if isinstance(exc, t))
            log = self.get_logger().fatal if self._starting else self.get_logger().error
            log(f'{name} failed: {exc}')
            return TransitionCallbackReturn.FAILURE
        except Exception as exc:  # noqa: B902 - unexpected: loud, then ErrorProcessing
            self.get_logger().error(f'{name} failed unexpectedly: {type(exc).__name__}: {exc}'
                                    f'\n{traceback.format_exc()}')
            return TransitionCallbackReturn.ERROR
        done, now = _DONE[name]
        self.get_logger().info(f'{done}: now {now}')
        return TransitionCallbackReturn.SUCCESS

    def _quietly(self, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception as exc:  # noqa: B902 - freeing after a failure must not raise
            self.get_logger().error(f'{step.__name__} failed: {type(exc).__name__}: {exc}')

    def _configure(self) -> None:
        raise NotImplementedError

    def _activate(self) -> None:
        raise NotImplementedError

    def _deactivate(self) -> None:
        raise NotImplementedError

    def _cleanup(self) -> None:
        raise NotImplementedError


_DONE = {'configure': ('configured', 'inactive'), 'activate': ('activated', 'active'),
         'deactivate': ('deactivated', 'inactive'), 'cleanup': ('cleaned up', 'unconfigured')}


def free_memory() -> None:
    """Return freed model memory: Python objects, then torch's cached CUDA blocks if any."""
    gc.collect()
    torch = sys.modules.get('torch')
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


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

    A ConfigError while building the node is a fatal configuration error: it is logged under
    the node's name and the process exits with status 2. A managed node with `autostart`
    (the default) is configured and activated before spinning; if it cannot be, the process
    exits with the status of the failure (2 for a configuration error). Other exceptions
    propagate.
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
            rclpy.logging.get_logger(_LOGGER_NAME).fatal(f'invalid configuration: {exc}')
            return EXIT_CONFIG
        if isinstance(node, ManagedNode) and node.autostart:
            code = node.start()
            if code:
                return code
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
