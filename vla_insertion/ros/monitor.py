"""MonitorNode: watches the pipeline's topics and prints the status line of the cell.

Subscribes (relative names): `vla/action_chunk`, `vla/features`, `sensor/window`,
`robot/joint_states`, and `/diagnostics` (drop counters of every node, and the camera bridge's
frame counts per view: subscribing to the images themselves would cost more CPU than the
bridge; core/health.py reads the keys). Publishes nothing. Parameter: `status_period_s`
(double).

Used by the demo (in a thread of its own: MonitorThread), and on a cell as
`ros2 run vla_insertion monitor` for a terminal view of what rqt shows.
"""
from __future__ import annotations

import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import JointState

from vla_insertion import conversions as conv
from vla_insertion.core.evaluation.run_summary import RunRecorder, status_line
from vla_insertion.msg import ActionChunk, SensorWindow, VLFeatures
from vla_insertion.ros.qos import DIAGNOSTICS_QOS, LATEST_QOS, STATE_QOS, WINDOW_QOS


class MonitorNode(Node):

    def __init__(self, recorder: RunRecorder | None = None, print_status: bool = False,
                 **node_options) -> None:
        super().__init__('monitor', **node_options)    # e.g. context= (a test's own domain)
        self.recorder = recorder or RunRecorder()
        period = self.declare_parameter('status_period_s', 5.0).value
        self.create_subscription(ActionChunk, 'vla/action_chunk', self._on_chunk, STATE_QOS)
        self.create_subscription(VLFeatures, 'vla/features', self._on_features, LATEST_QOS)
        self.create_subscription(SensorWindow, 'sensor/window', self._on_window, WINDOW_QOS)
        self.create_subscription(JointState, 'robot/joint_states', self._on_joints, STATE_QOS)
        self.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics,
                                 DIAGNOSTICS_QOS)
        if print_status:
            self._period = period
            self.create_timer(period, self._print_status)

    def _on_chunk(self, msg: ActionChunk) -> None:
        self.recorder.add_chunk(time.monotonic(), conv.action_chunk_from_msg(msg))

    def _on_features(self, msg: VLFeatures) -> None:
        self.recorder.add_features(time.monotonic(), conv.vl_features_from_msg(msg))

    def _on_window(self, msg: SensorWindow) -> None:
        self.recorder.set_window(conv.sensor_window_from_msg(msg))

    def _on_joints(self, msg: JointState) -> None:
        self.recorder.set_joints(conv.joint_state_from_msg(msg)[1])

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            self.recorder.add_diagnostics(status.name, {kv.key: kv.value for kv in status.values})

    def _print_status(self) -> None:
        self.get_logger().info(status_line(self.recorder, self._period, time.monotonic()))


class MonitorThread:
    """A MonitorNode filling `recorder`, spun in a daemon thread of a tool (the demo).

    Initialises the default rclpy context, and shuts it down in close(). Without rclpy's signal
    handlers: the tool handles SIGINT and SIGTERM itself (stop every program, then the ROS
    parts), and rclpy's handler would shut down every context at once, the ExecutorOperator's
    in the middle of a call too.
    """

    def __init__(self, recorder: RunRecorder) -> None:
        rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
        self.node = MonitorNode(recorder)
        self._executor = SingleThreadedExecutor()
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self._executor.spin()
        except Exception:  # noqa: B902 - the executor stops when the context shuts down
            pass

    def close(self) -> None:
        self._executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown()
        self._thread.join(timeout=2.0)
