"""policy_client: a remote policy server (openpi, GR00T) in the action expert's place.

Subscribes (newest kept; QoS from core/topics.py):
    cameras/<view>/image/compressed  sensor_msgs/CompressedImage  the views of image_views
    sensor/window        vla_insertion/SensorWindow
    robot/joint_states   sensor_msgs/JointState [rad], with the `gripper` entry [0..1]
    robot/pose           geometry_msgs/PoseStamped
    vla/committed_prefix vla_insertion/ActionChunk   the executor's committed actions (GR00T RTC)
Publishes:
    vla/action_chunk     vla_insertion/ActionChunk, one per accepted tick, stamped with the
                         robot state sent (core/remote/policy.py says why), `untrained` false
                         (a server's weights are its concern)
    /diagnostics, vla/stats: the action expert's keys (chunks, refusals `drops.<reason>`,
                         inference_ms = the whole request), and the server's: `connection`,
                         `rtt_ms_*` (round trip per chunk), `bad_reply.<cause>`, reconnects
Parameters: the fields of core.config.PolicyClientConfig (read-only).

Each tick (rate_hz, absolute deadlines, in its own thread: a request never blocks the
executor's callbacks) hands the newest inputs to the action expert's runner through
core.expert.inputs.tick_newest: the same staleness rules, with the newest frames of the mapped
views in the features' place (core.remote.mapping.ViewSet, stamped with its oldest view), then
core.remote.policy.RemotePolicy: the observation mapping, one request, the action mapping. A
refused request (no connection, a server error, a bad or pickled reply, a timeout) publishes
nothing and is counted; the executor's watchdog holds the arm when chunks stop. The connection
is made and remade with backoff by a background thread (core.remote.client.RemoteClient).
docs/remote_policy.md is the guide.
"""
from __future__ import annotations

import functools
import sys
import threading

from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, JointState

from vla_insertion import conversions as conv
from vla_insertion.core import topics
from vla_insertion.core.config import PolicyClientConfig
from vla_insertion.core.data import NodeStatsData
from vla_insertion.core.expert.inputs import (
    LatestInputs, Malformed, put_converted, ROBOT, tick_newest)
from vla_insertion.core.expert.live import ExpertDiagnostics, run_ticks
from vla_insertion.core.expert.runner import TickResult
from vla_insertion.core.health import HealthReport
from vla_insertion.core.remote.mapping import NewestViews
from vla_insertion.core.remote.policy import remote_runner
from vla_insertion.core.ticker import DeadlineTicker
from vla_insertion.msg import ActionChunk, SensorWindow
from vla_insertion.ros.monitoring import NodeMonitor
from vla_insertion.ros.parameters import declare_config
from vla_insertion.ros.qos import publisher, subscription
from vla_insertion.ros.run import run_node


class PolicyClientNode(Node):
    """Send the newest views, state and prompt to a policy server at rate_hz; publish chunks."""

    def __init__(self, **node_kwargs) -> None:
        super().__init__('policy_client', **node_kwargs)
        self._config = cfg = declare_config(self, PolicyClientConfig)
        self._runner = remote_runner(cfg)
        self._client = self._runner.policy.client
        self._inputs = LatestInputs()  # written by the subscriptions, read by the tick
        self._views = NewestViews(cfg.image_views)
        self._diagnostics = ExpertDiagnostics()
        inputs = self._inputs
        for view in cfg.image_views:
            subscription(self, CompressedImage, topics.CAMERAS,
                         functools.partial(self._on_image, view), name=topics.camera_topic(view))
        for msg_type, topic, put, read in (
                (SensorWindow, topics.SENSOR_WINDOW, inputs.put_window,
                 conv.sensor_window_from_msg),
                (JointState, topics.JOINT_STATES, inputs.put_joints, conv.robot_state_from_msgs),
                (PoseStamped, topics.POSE, inputs.put_pose, conv.pose_from_msg),
                (ActionChunk, topics.COMMITTED_PREFIX, inputs.put_prefix,
                 conv.action_chunk_from_msg)):
            subscription(self, msg_type, topic, functools.partial(put_converted, put, read))
        self._chunk_pub = publisher(self, ActionChunk, topics.ACTION_CHUNK)
        self._monitor = NodeMonitor(self, self._report, status_line=self._status_line)
        self._client.start()
        self._ticker = DeadlineTicker(cfg.rate_hz)
        self._thread = threading.Thread(target=self._loop, name='policy_client_loop',
                                        daemon=True)
        self._thread.start()
        self.get_logger().info(f'{self._runner.policy.describe()} at {cfg.rate_hz} Hz; its '
                               'chunks are marked trained: the server answers for its weights')

    # --- inputs: converted at the edge, the newest kept -----------------------------------

    def _on_image(self, view: str, msg: CompressedImage) -> None:
        try:
            frame = conv.camera_frame_from_msg(msg, view)
        except ValueError as exc:     # the tick refuses as bad_features, saying why
            self._inputs.put_features(Malformed(f'view {view}: {exc}',
                                                conv.time_from_msg(msg.header.stamp)))
            return
        views = self._views.put(frame)
        if views is not None:
            self._inputs.put_features(views)

    # --- ticks ----------------------------------------------------------------------------

    def _loop(self) -> None:
        run_ticks(self._ticker, self.tick, self._diagnostics, self.get_logger().fatal,
                  'request loop')

    def tick(self, now_s: float | None = None) -> TickResult:
        """Run one tick on the newest inputs at `now_s` (default: the node's clock)."""
        now_s = self.get_clock().now().nanoseconds * 1e-9 if now_s is None else now_s
        result, inputs = tick_newest(self._runner, self._inputs, now_s)
        for stream, detail in inputs.malformed:
            self.get_logger().warning(f'bad {"robot state" if stream == ROBOT else stream}: '
                                      f'{detail}', throttle_duration_sec=2.0)
        if not result.published:
            self.get_logger().warning(self._diagnostics.explain(result.decision),
                                      throttle_duration_sec=2.0)
            return result
        self._chunk_pub.publish(conv.action_chunk_to_msg(result.chunk))
        self._diagnostics.published()
        return result

    # --- monitoring -----------------------------------------------------------------------

    def _report(self) -> tuple[HealthReport, NodeStatsData]:
        cfg = self._config
        report, stats = self._diagnostics.report(
            self._runner, 'active', 'async', cfg.rate_hz, self._client.address,
            self._ticker.overruns, self.get_clock().now().nanoseconds * 1e-9)
        report.values.update(protocol=cfg.protocol, **self._client.values())
        self._client.health(report)
        return report, stats

    def _status_line(self) -> str:
        rtt = self._client.rtt_ms.summary()
        return (f'{self._diagnostics.status_line(self._runner, "active")} | {self._client.state} '
                f'{self._client.address}, rtt p50 {rtt["p50"]:.1f} ms')

    def destroy_node(self) -> None:
        if getattr(self, '_ticker', None) is not None:
            self._ticker.stop()
            self._thread.join(timeout=self._config.reply_timeout_s + 2.0)
            self._client.stop()
        super().destroy_node()


def main(args=None) -> int:
    # subscriptions and the monitor; requests run in the node's own thread
    return run_node(PolicyClientNode, args, threads=2)


if __name__ == '__main__':
    sys.exit(main())
