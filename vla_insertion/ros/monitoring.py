"""What every node reports: /diagnostics, vla/stats and its stream events in the log."""
from __future__ import annotations

from collections.abc import Callable
import dataclasses

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node

from vla_insertion.conversions import diagnostic_status_to_msg, node_stats_to_msg
from vla_insertion.core.data import NodeStatsData
from vla_insertion.core.health import HealthReport
from vla_insertion.core.topics import DIAGNOSTICS, STATS
from vla_insertion.msg import NodeStats
from vla_insertion.ros.qos import publisher


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
