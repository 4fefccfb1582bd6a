"""robot_bridge: robot state from the robot PC (ZMQ SUB) -> joint states [rad] and tool pose [m].

Topics out:
  robot/joint_states   sensor_msgs/JointState, ROBOT_QOS; positions [rad]
  robot/pose           geometry_msgs/PoseStamped, ROBOT_QOS; position [m], unit quaternion,
                       frame_id base_frame; both stamped with the sender time on the local clock
  /diagnostics, vla/stats   rate, drops by cause, sequence gaps, clock offset and steps,
                            restarts, connections, message age, joints
Parameters: the fields of core.config.RobotBridgeConfig (robot_ip, port, wire_format,
max_message_bytes, receive_timeout_s, calibration_batches, joint_names, base_frame,
min_rate_hz, stale_after_s, curve_keys_dir: with keys the SUB socket is a CURVE client of the
robot link and talks only to the robot PC's key, core/wire/curve.py).

The SUB socket connects to robot_ip:port and reconnects by itself when the robot PC restarts;
the new session id is counted as a restart. Sessions, sequences and the sender clock are checked
by core.stream.StreamTracker (docs/wire.md): a state not newer by sequence is late, a state
whose time cannot be right is dropped without disturbing the states after it.
"""
from __future__ import annotations

import math
import time

from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import JointState
import zmq

from vla_insertion.conversions import robot_state_to_msgs
from vla_insertion.core.bridge.receive import (
    BridgeHealth, close_bridge, Drop, ReceiveLoop, ZmqSource)
from vla_insertion.core.bridge.stream import StreamTracker
from vla_insertion.core.config import RobotBridgeConfig
from vla_insertion.core.data import NodeStatsData, RobotState
from vla_insertion.core.health import HealthReport, RateMeter
from vla_insertion.core.wire import make_codec, robot_state, RobotMessage
from vla_insertion.core.wire.curve import CurveLink, link_keys
from vla_insertion.ros.monitoring import log_events, NodeMonitor
from vla_insertion.ros.parameters import declare_config
from vla_insertion.ros.qos import ROBOT_QOS
from vla_insertion.ros.run import run_node


class RobotBridgeNode(Node):
    """Bridge the robot PC's state messages to JointState and PoseStamped in SI units."""

    def __init__(self, **node_kwargs) -> None:
        super().__init__('robot_bridge', **node_kwargs)
        self._config = cfg = declare_config(self, RobotBridgeConfig)
        self._codec = make_codec(cfg.wire_format, 'robot', max_bytes=cfg.max_message_bytes)
        self._stream = StreamTracker(calibration_batches=cfg.calibration_batches)
        self._joints_pub = self.create_publisher(JointState, 'robot/joint_states', ROBOT_QOS)
        self._pose_pub = self.create_publisher(PoseStamped, 'robot/pose', ROBOT_QOS)
        self._rate = RateMeter()
        self._published = 0
        self._latest: RobotState | None = None
        self._zmq = zmq.Context(1)
        curve = CurveLink(link_keys(cfg.curve_keys_dir, 'robot', 'robot_bridge'))
        endpoint = f'tcp://{cfg.robot_ip}:{cfg.port}'
        self._loop = ReceiveLoop(
            'robot_rx', lambda: ZmqSource(self._zmq, zmq.SUB, endpoint, False,
                                          cfg.receive_timeout_s, cfg.max_message_bytes,
                                          curve.secure),
            self._on_message, on_drop=self._warn_drop)
        self._health = BridgeHealth('robot_bridge', self._loop, self._stream, cfg.stale_after_s)
        self._monitor = NodeMonitor(self, self._report, status_line=self._status_line)
        self._loop.start()
        self.get_logger().info(f'robot SUB connecting to {endpoint} ({curve.describe()}), '
                               f'wire format {cfg.wire_format}')

    def _on_message(self, data: bytes, t_recv: float) -> None:
        # receive thread: decode -> session, sequence, clock -> SI units -> publish
        msg: RobotMessage = self._codec.decode(data)
        admitted = self._stream.admit('', msg.session, msg.sequence, msg.sender_time_s, t_recv)
        log_events(self, admitted)
        if admitted.drop:
            raise Drop(admitted.drop, f'robot time {msg.sender_time_s:.6f} maps to '
                                      f'{admitted.drop.replace("_", " ")}')
        state = robot_state(msg, admitted.stamp_s, self._config.joint_names)
        joints, pose = robot_state_to_msgs(state, self._config.base_frame)
        self._joints_pub.publish(joints)
        self._pose_pub.publish(pose)
        self._latest = state
        self._published += 1
        self._rate.tick(t_recv)

    def _warn_drop(self, cause: str, text: str) -> None:
        self.get_logger().warning(f'dropped a robot message ({cause}): {text}',
                                  throttle_duration_sec=2.0)

    def _report(self) -> tuple[HealthReport, NodeStatsData]:
        now = time.time()
        rate = self._rate.rate_hz(now)
        health, stats = self._health.report(now, published=self._published, rate_hz=rate)
        state = self._latest
        if state is not None:
            for name, q in zip(state.joint_names, state.joint_positions_rad):
                health.values[f'joint_rad.{name}'] = float(q)
            health.values['gripper'] = state.gripper
        if self._loop.received and rate < self._config.min_rate_hz:
            health.escalate('WARN', f'state rate {rate:.1f} Hz < {self._config.min_rate_hz:g}')
        return health, stats

    def _status_line(self) -> str:
        state = self._latest
        offset_s, calibrated = self._stream.clock_summary()
        robot = 'no state yet' if state is None else (
            f'J1={math.degrees(state.joint_positions_rad[0]):.2f} deg, '
            f'Px={state.tool_position_m[0] * 1e3:.1f} mm, gripper {state.gripper:.2f}')
        return (f'robot {self._rate.rate_hz(time.time()):.1f} Hz: {robot} | dropped '
                f'{self._loop.drops.total()} | lost {self._stream.gaps[""]} | restarts '
                f'{self._stream.restarts} | clock offset {offset_s * 1e3:+.3f} ms'
                f'{"" if calibrated else " (calibrating)"}')

    def destroy_node(self) -> None:
        # attributes are absent when __init__ failed half-way
        close_bridge(getattr(self, '_loop', None), getattr(self, '_zmq', None))
        super().destroy_node()


def main(args=None) -> int:
    return run_node(RobotBridgeNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
