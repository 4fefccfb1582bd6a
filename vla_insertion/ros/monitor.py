"""MonitorNode: watches the pipeline's topics and prints the status line of the cell.

Subscribes (relative names): `vla/action_chunk`, `vla/features`, `sensor/window`,
`robot/joint_states`, and `/diagnostics` (drop counters of every node, and the camera bridge's
frame counts per view: subscribing to the images themselves would cost more CPU than the
bridge). Publishes nothing. Parameter: `status_period_s` (double).

Used by the demo, and on a cell as `ros2 run vla_insertion monitor` for a terminal view of what
rqt shows.
"""
from __future__ import annotations

import time

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import JointState

from vla_insertion import conversions as conv
from vla_insertion.core.evaluation.run_summary import RunRecorder, status_line
from vla_insertion.msg import ActionChunk, SensorWindow, VLFeatures
from vla_insertion.ros.qos import DIAGNOSTICS_QOS, LATEST_QOS, STATE_QOS, WINDOW_QOS


def drop_counts(values: dict[str, str]) -> dict[str, int]:
    """Return the drop counters of one DiagnosticStatus.

    Nodes report dropped inputs as `drops.<cause>` and the VLM its skipped view sets as
    `skipped.<cause>` (docs/development.md).
    """
    out = {}
    for key, value in values.items():
        prefix, _, cause = key.partition('.')
        if prefix in ('drops', 'skipped') and cause:
            try:
                count = int(float(value))
            except ValueError:
                continue
            out[cause if prefix == 'drops' else f'skipped_{cause}'] = count
    return out


def frame_counts(values: dict[str, str]) -> dict[str, int]:
    """Return the camera bridge's frames received per view (keys `frames.<view>`)."""
    out = {}
    for key, value in values.items():
        if key.startswith('frames.'):
            try:
                out[key[len('frames.'):]] = int(float(value))
            except ValueError:
                continue
    return out


class MonitorNode(Node):

    def __init__(self, recorder: RunRecorder | None = None, print_status: bool = False) -> None:
        super().__init__('monitor')
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
            values = {kv.key: kv.value for kv in status.values}
            drops = drop_counts(values)
            if drops:
                self.recorder.set_drops(status.name, drops)
            for view, count in frame_counts(values).items():
                self.recorder.set_frames(view, count)
            node = status.name.split('/')[-1]
            if node == 'chunk_executor':
                self.recorder.set_executor(values)
            elif node == 'action_expert':
                self.recorder.set_expert(values)

    def _print_status(self) -> None:
        self.get_logger().info(status_line(self.recorder, self._period, time.monotonic()))
