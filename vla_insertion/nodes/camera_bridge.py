"""camera_bridge: JPEG frames from the camera sender (ZMQ PULL) -> one CompressedImage per view.

Topics out:
  cameras/<view>/image/compressed  sensor_msgs/CompressedImage, SENSOR_QOS; header.stamp is the
                                   capture time mapped to the local clock, frame_id the view
  /diagnostics, vla/stats          rates, sequence gaps and clock offsets per view, drops by
                                   cause, clock steps, restarts, connections, message age
Parameters: the fields of core.config.CameraBridgeConfig (bind_address, port, views,
wire_format, max_message_bytes, receive_timeout_s, calibration_batches, min_fps, stale_after_s,
curve_keys_dir: with keys the PULL socket is the camera link's CURVE server and admits only
the camera sender's key, core/wire/curve.py).

The PULL socket is bound, so a restarted sender simply reconnects; its new session id is
counted as a restart. Sessions, sequences and the sender clock are checked per view by
core.stream.StreamTracker (docs/wire.md): a frame not newer by sequence is late, a frame whose
time cannot be right is dropped without disturbing the frames after it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import math
import time

from rclpy.node import Node
from sensor_msgs.msg import CompressedImage
import zmq

from vla_insertion.conversions import camera_frame_to_msg
from vla_insertion.core.bridge.receive import (
    BRIDGE_CAUSES, BridgeHealth, close_bridge, Drop, ReceiveLoop, UNKNOWN_VIEW, ZmqSource)
from vla_insertion.core.bridge.stream import StreamTracker
from vla_insertion.core.config import CameraBridgeConfig
from vla_insertion.core.data import NodeStatsData
from vla_insertion.core.health import HealthReport, RateMeter
from vla_insertion.core.wire import camera_frame, CameraMessage, make_codec
from vla_insertion.core.wire.curve import CurveLink, link_keys
from vla_insertion.ros.monitoring import log_events, NodeMonitor
from vla_insertion.ros.parameters import declare_config
from vla_insertion.ros.qos import SENSOR_QOS
from vla_insertion.ros.run import run_node


@dataclass
class _View:
    publisher: object
    rate: RateMeter = field(default_factory=RateMeter)
    published: int = 0


class CameraBridgeNode(Node):
    """Bridge the camera sender's frames to one compressed image topic per view."""

    def __init__(self, **node_kwargs) -> None:
        super().__init__('camera_bridge', **node_kwargs)
        self._config = cfg = declare_config(self, CameraBridgeConfig)
        self._codec = make_codec(cfg.wire_format, 'camera', max_bytes=cfg.max_message_bytes)
        self._views = {v: _View(self.create_publisher(
            CompressedImage, f'cameras/{v}/image/compressed', SENSOR_QOS)) for v in cfg.view_names}
        # one clock per view and session: a skewed view cannot re-base the others
        self._stream = StreamTracker(cfg.view_names, cfg.calibration_batches)
        self._zmq = zmq.Context(1)
        self._curve = CurveLink(link_keys(cfg.curve_keys_dir, 'camera'), self._zmq)
        endpoint = f'tcp://{cfg.bind_address}:{cfg.port}'
        self._loop = ReceiveLoop(
            'camera_rx', lambda: ZmqSource(self._zmq, zmq.PULL, endpoint, True,
                                           cfg.receive_timeout_s, cfg.max_message_bytes,
                                           self._curve.secure),
            self._on_message, on_drop=self._warn_drop, causes=BRIDGE_CAUSES + (UNKNOWN_VIEW,))
        self._health = BridgeHealth('camera_bridge', self._loop, self._stream,
                                    cfg.stale_after_s)
        self._monitor = NodeMonitor(self, self._report, status_line=self._status_line)
        self._loop.start()
        self.get_logger().info(f'camera PULL bound on {endpoint} ({self._curve.describe()}), '
                               f'views {list(cfg.view_names)}, wire format {cfg.wire_format}')

    def _on_message(self, data: bytes, t_recv: float) -> None:
        # receive thread: decode -> session, sequence, clock -> publish
        msg: CameraMessage = self._codec.decode(data)
        view = self._views.get(msg.view)
        if view is None:
            raise Drop(UNKNOWN_VIEW, f'frame of unconfigured view {msg.view!r}')
        admitted = self._stream.admit(msg.view, msg.session, msg.sequence, msg.capture_time_s,
                                      t_recv)
        log_events(self, admitted)
        if admitted.drop:
            raise Drop(admitted.drop, f'{msg.view}: capture time {msg.capture_time_s:.6f} '
                                      f'maps to {admitted.drop.replace("_", " ")}')
        view.publisher.publish(camera_frame_to_msg(camera_frame(msg, admitted.stamp_s)))
        view.published += 1
        view.rate.tick(t_recv)

    def _warn_drop(self, cause: str, text: str) -> None:
        self.get_logger().warning(f'dropped a camera message ({cause}): {text}',
                                  throttle_duration_sec=2.0)

    def _report(self) -> tuple[HealthReport, NodeStatsData]:
        now = time.time()
        rates = {name: v.rate.rate_hz(now) for name, v in self._views.items()}
        health, stats = self._health.report(
            now, published=sum(v.published for v in self._views.values()),
            rate_hz=sum(rates.values()))
        clocks = self._stream.clock_reports()
        for name, v in self._views.items():
            health.values[f'fps.{name}'] = rates[name]
            health.values[f'frames.{name}'] = v.published
            health.values[f'gap_messages.{name}'] = self._stream.gaps[name]
            health.values[f'clock_offset_ms.{name}'] = (
                clocks[name].offset_s * 1e3 if name in clocks else math.nan)
        slow = [n for n, r in rates.items() if r < self._config.min_fps]
        if self._loop.received and slow:
            health.escalate('WARN', f'views below {self._config.min_fps:g} FPS: {slow}')
        return health, stats

    def _status_line(self) -> str:
        now = time.time()
        views = ', '.join(f'{n} {v.rate.rate_hz(now):.1f}' for n, v in self._views.items())
        offset_s, calibrated = self._stream.clock_summary()
        return (f'frames/s: {views} | dropped {self._loop.drops.total()} | lost '
                f'{sum(self._stream.gaps.values())} | restarts {self._stream.restarts} | '
                f'clock offset {offset_s * 1e3:+.3f} ms{"" if calibrated else " (calibrating)"}')

    def destroy_node(self) -> None:
        # attributes are absent when __init__ failed half-way
        close_bridge(getattr(self, '_loop', None), getattr(self, '_zmq', None),
                     getattr(self, '_curve', None))
        super().destroy_node()


def main(args=None) -> int:
    return run_node(CameraBridgeNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
