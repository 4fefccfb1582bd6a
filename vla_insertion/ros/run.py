"""run_node: the main() of every node, with a clean shutdown on SIGINT and SIGTERM."""
from __future__ import annotations

from collections.abc import Callable, Mapping
import os

import rclpy
from rclpy.exceptions import InvalidHandle
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
try:
    from rclpy.experimental import EventsExecutor
except ImportError:  # rclpy before Jazzy (Humble)
    EventsExecutor = None
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from vla_insertion.core.config import ConfigError
from vla_insertion.core.orchestration.processes import StopRequest
from vla_insertion.ros.lifecycle import EXIT_CONFIG, ManagedNode


# `VLA_EXECUTOR=multi_threaded` runs every node on the fallback executor, the one Humble (no
# EventsExecutor) runs, so that path is tested on Jazzy and Kilted too; `auto` (or unset) picks.
EXECUTOR_ENV = 'VLA_EXECUTOR'
EXECUTOR_CHOICES = ('auto', 'multi_threaded')


def executor_choice(env: Mapping[str, str] | None = None) -> str:
    """Return the executor asked for by $VLA_EXECUTOR: `auto` or `multi_threaded`.

    Raises ConfigError naming the variable for any other value.
    """
    value = (os.environ if env is None else env).get(EXECUTOR_ENV) or 'auto'
    if value not in EXECUTOR_CHOICES:
        raise ConfigError(f'{EXECUTOR_ENV} must be one of {", ".join(EXECUTOR_CHOICES)}, '
                          f'got {value!r}')
    return value


def _executor_for(node: Node, threads: int, choice: str = 'auto'):
    """Pick the executor: the C++ events executor unless the node needs parallel callbacks.

    Our nodes do their heavy work in their own threads, so their callbacks only store inputs;
    at hundreds of messages per second the Python executors' per-callback overhead (wait-set
    rebuilding) was the largest CPU cost of the action expert. A node whose callbacks block
    (e.g. a timer-scheduled expert waiting for features) sets `needs_parallel_callbacks`.
    Where rclpy has no events executor (Humble), or `choice` is `multi_threaded`, every node
    gets the multi-threaded one, and says so in its log.
    """
    if getattr(node, 'needs_parallel_callbacks', False):
        return MultiThreadedExecutor(num_threads=threads, context=node.context)
    if EventsExecutor is None or choice == 'multi_threaded':
        why = ('rclpy has no EventsExecutor' if EventsExecutor is None
               else f'{EXECUTOR_ENV}={choice}')
        node.get_logger().info(f'spinning on the fallback MultiThreadedExecutor ({why})')
        return MultiThreadedExecutor(num_threads=threads, context=node.context)
    return EventsExecutor(context=node.context)


def run_node(factory: Callable[[], Node], args=None, threads: int = 4) -> int:
    """Run a node as main(): init, build, spin, shut down.

    The executor is the events executor; a multi-threaded one with `threads` threads for a
    node that needs parallel callbacks, where rclpy has no events executor, or when
    $VLA_EXECUTOR is `multi_threaded` (`_executor_for`).

    SIGINT and SIGTERM are handled here rather than by rclpy: rclpy's own handler invalidates
    the context at once, while worker threads may still be publishing. Instead the spin loop
    ends, `destroy_node()` stops the node's threads, and only then is the context shut down.
    The flag stays installed to the end (a program's main): a second signal cannot cut the
    shutdown short, nor end the program by the signal on its way out (StopRequest.exiting).

    A ConfigError while building the node (or a bad $VLA_EXECUTOR) is a fatal configuration
    error: it is logged under the node's name and the process exits with status 2. A managed
    node with `autostart` (the default) is configured and activated before spinning; if it
    cannot be, the process exits with the status of the failure (2 for a configuration error).
    Other exceptions propagate.
    """
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = StopRequest()                 # a flag: Event.set in a handler can deadlock
    stop.install()
    node = None
    executor = None
    try:
        try:
            choice = executor_choice()
            node = factory()
        except ConfigError as exc:
            rclpy.logging.get_logger(
                getattr(exc, 'logger_name', 'vla_insertion')).fatal(
                    f'invalid configuration: {exc}')
            return EXIT_CONFIG
        if isinstance(node, ManagedNode) and node.autostart:
            code = node.start()
            if code:
                return code
        executor = _executor_for(node, threads, choice)
        executor.add_node(node)
        while not stop.requested and rclpy.ok():
            try:
                executor.spin_once(timeout_sec=0.1)
            except InvalidHandle:
                # rclpy's Python executors (the fallback) collect the node's entities, then
                # add them to a wait set; a topic destroyed in between by another thread (a
                # lifecycle cleanup in a service callback) raises here (ros2/rclpy#1142,
                # #1206). The next spin_once collects without it.
                node.get_logger().debug('an entity was destroyed while waiting: spin again')
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:                             # the flag stays: no signal cuts the shutdown short
        if executor is not None:
            executor.shutdown(timeout_sec=2.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
