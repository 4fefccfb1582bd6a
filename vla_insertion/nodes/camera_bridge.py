"""camera_bridge: JPEG frames from the camera sender (ZMQ PULL) -> one CompressedImage per view.

Topics out:
  cameras/<view>/image/compressed  sensor_msgs/CompressedImage, SENSOR_QOS; header.stamp is the
                                   capture time mapped to the local clock, frame_id the view
  /diagnostics, vla/stats          rates per view, drops by cause, clock offset, message age
Parameters: the fields of core.config.CameraBridgeConfig (bind_address, port, views,
wire_format, max_message_bytes, receive_timeout_s, calibration_batches, min_fps, stale_after_s).

The PULL socket is bound, so a restarted sender simply reconnects; its new session id is
counted as a restart. Frames older than the newest one published for their view are dropped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import time

from rclpy.node import Node
from sensor_msgs.msg import CompressedImage
import zmq

from vla_insertion.conversions import camera_frame_to_msg
from vla_insertion.core.bridge import (
    bridge_health, close_bridge, Drop, LATE, ReceiveLoop, SessionTracker, UNKNOWN_VIEW,
    ZmqSource)
from vla_insertion.core.clock import ClockOffsetEstimator, MonotonicStamp
from vla_insertion.core.config import CameraBridgeConfig
from vla_insertion.core.data import NodeStatsData
from vla_insertion.core.health import HealthReport, RateMeter
from vla_insertion.core.wire import camera_frame, CameraMessage, make_codec
from vla_insertion.nodes.common import declare_config, NodeMonitor, run_node, SENSOR_QOS


@dataclass
class _View:
    publisher: object
    rate: RateMeter = field(default_factory=RateMeter)
    stamp: MonotonicStamp = field(default_factory=MonotonicStamp)
    last_capture_s: float = float('-inf')    # sender clock
    published: int = 0


class CameraBridgeNode(Node):
    """Bridge the camera sender's frames to one compressed image topic per view."""

    def __init__(self) -> None:
        super().__init__('camera_bridge')
        self._config = cfg = declare_config(self, CameraBridgeConfig)
        self._codec = make_codec(cfg.wire_format, 'camera', max_bytes=cfg.max_message_bytes)
        self._sender_clock = ClockOffsetEstimator(cfg.calibration_batches)
        self._views = {v: _View(self.create_publisher(
            CompressedImage, f'cameras/{v}/image/compressed', SENSOR_QOS)) for v in cfg.view_names}
        self._session = SessionTracker()
        self._dropped_reported = 0
        self._zmq = zmq.Context(1)
        endpoint = f'tcp://{cfg.bind_address}:{cfg.port}'
        self._loop = ReceiveLoop(
            'camera_rx', lambda: ZmqSource(self._zmq, zmq.PULL, endpoint, True,
                                           cfg.receive_timeout_s, cfg.max_message_bytes),
            self._on_message, on_drop=self._warn_drop)
        self._monitor = NodeMonitor(self, self._report, status_line=self._status_line)
        self._loop.start()
        self.get_logger().info(f'camera PULL bound on {endpoint}, views {list(cfg.view_names)}, '
                               f'wire format {cfg.wire_format}')

    def _on_message(self, data: bytes, t_recv: float) -> None:
        # receive thread: decode -> check -> map the capture time -> publish
        msg: CameraMessage = self._codec.decode(data)
        view = self._views.get(msg.view)
        if view is None:
            raise Drop(UNKNOWN_VIEW, f'frame of unconfigured view {msg.view!r}')
        if self._session.check(msg.session):
            self.get_logger().warning('camera sender restarted (new session)')
            for v in self._views.values():
                v.last_capture_s = float('-inf')
        if msg.capture_time_s <= view.last_capture_s:
            raise Drop(LATE, f'{msg.view}: frame captured before the last one published')
        view.last_capture_s = msg.capture_time_s
        stamp = view.stamp(self._sender_clock.to_local(msg.capture_time_s, t_recv))
        view.publisher.publish(camera_frame_to_msg(camera_frame(msg, stamp)))
        view.published += 1
        view.rate.tick(t_recv)

    def _warn_drop(self, cause: str, text: str) -> None:
        self.get_logger().warning(f'dropped a camera message ({cause}): {text}',
                                  throttle_duration_sec=2.0)

    def _report(self) -> tuple[HealthReport, NodeStatsData]:
        now = time.time()
        rates = {name: v.rate.rate_hz(now) for name, v in self._views.items()}
        health, stats = bridge_health(
            self._loop, self._sender_clock, now, self._config.stale_after_s, 'camera_bridge',
            published=sum(v.published for v in self._views.values()),
            rate_hz=sum(rates.values()), dropped_before=self._dropped_reported)
        self._dropped_reported = stats.dropped
        health.values['sender_restarts'] = self._session.restarts
        for name, v in self._views.items():
            health.values[f'fps_{name}'] = rates[name]
            health.values[f'frames_{name}'] = v.published
        slow = [n for n, r in rates.items() if r < self._config.min_fps]
        if self._loop.received and slow:
            health.escalate('WARN', f'views below {self._config.min_fps:g} FPS: {slow}')
        return health, stats

    def _status_line(self) -> str:
        now = time.time()
        views = ', '.join(f'{n} {v.rate.rate_hz(now):.1f}' for n, v in self._views.items())
        clock = self._sender_clock.report()
        return (f'frames/s: {views} | dropped {self._loop.drops.total()} | restarts '
                f'{self._session.restarts} | clock offset {clock.offset_s * 1e3:+.2f} ms'
                f'{"" if clock.calibrated else " (calibrating)"}')

    def destroy_node(self) -> None:
        # attributes are absent when __init__ failed half-way
        close_bridge(getattr(self, '_loop', None), getattr(self, '_zmq', None))
        super().destroy_node()


def main(args=None) -> int:
    return run_node(CameraBridgeNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
