"""sensor_bridge: 650 Hz sensor batches (UDP) -> sensor/window, the newest window_size samples.

Topics out:
  sensor/window        vla_insertion/SensorWindow, WINDOW_QOS, one per received batch;
                       header.stamp is the newest sample's time on the local clock
  /diagnostics, vla/stats   datagram rate, drops by cause, gaps, late samples, window fill,
                       clock offset and steps, restarts, message age
Parameters: the fields of core.config.SensorBridgeConfig (bind_address, port, allowed_sources,
wire_format,
channel_names, sample_rate_hz, window_size, max_datagram_bytes, socket_buffer_bytes,
receive_timeout_s, calibration_batches, min_fill, stale_after_s).

Sessions, sequences and the sender clock are checked by core.stream.StreamTracker (docs/wire.md):
missing sequence numbers are counted as gaps and restart the window's valid run; samples not
newer than the newest one taken are late and dropped; a new sender session restarts the window.
A datagram whose time cannot be right still adds its samples (the sequence places them) but
publishes no window. A datagram from a source address not in allowed_sources is dropped unread
(drops.source): it never reaches the window.
"""
from __future__ import annotations

import time

from rclpy.node import Node

from vla_insertion.conversions import sensor_window_to_msg
from vla_insertion.core.bridge.receive import (
    BRIDGE_CAUSES, BridgeHealth, close_bridge, Drop, ReceiveLoop, SOURCE, SourceAllowList,
    UdpSource)
from vla_insertion.core.bridge.sensor_window import SensorWindowBuffer
from vla_insertion.core.bridge.stream import StreamTracker
from vla_insertion.core.config import SensorBridgeConfig
from vla_insertion.core.data import NodeStatsData
from vla_insertion.core.health import HealthReport, RateMeter
from vla_insertion.core.wire import make_codec, SensorBatch
from vla_insertion.msg import SensorWindow
from vla_insertion.ros.monitoring import log_events, NodeMonitor
from vla_insertion.ros.parameters import declare_config
from vla_insertion.ros.qos import WINDOW_QOS
from vla_insertion.ros.run import run_node


class SensorBridgeNode(Node):
    """Bridge the sensor sender's UDP batches to a sliding window topic."""

    def __init__(self, **node_kwargs) -> None:
        super().__init__('sensor_bridge', **node_kwargs)
        self._config = cfg = declare_config(self, SensorBridgeConfig)
        self._codec = make_codec(cfg.wire_format, 'sensor', max_bytes=cfg.max_datagram_bytes,
                                 channels=len(cfg.channel_names))
        self._stream = StreamTracker(calibration_batches=cfg.calibration_batches)
        self._window = SensorWindowBuffer(cfg.window_size, cfg.channel_names, cfg.sample_rate_hz)
        self._publisher = self.create_publisher(SensorWindow, 'sensor/window', WINDOW_QOS)
        self._rate = RateMeter()
        self._published = 0
        allowed = SourceAllowList(cfg.allowed_sources)
        self._loop = ReceiveLoop(
            'sensor_rx', lambda: UdpSource(cfg.bind_address, cfg.port, cfg.receive_timeout_s,
                                           cfg.max_datagram_bytes, cfg.socket_buffer_bytes,
                                           allowed),
            self._on_datagram, on_drop=self._warn_drop, causes=BRIDGE_CAUSES + (SOURCE,))
        self._health = BridgeHealth('sensor_bridge', self._loop, self._stream, cfg.stale_after_s,
                                    gap_key='gap_samples', link=False)
        self._monitor = NodeMonitor(self, self._report, status_line=self._status_line)
        self._loop.start()
        self.get_logger().info(
            f'sensor UDP bound on {cfg.bind_address}:{cfg.port}, senders {allowed}, '
            f'{len(cfg.channel_names)} channels at {cfg.sample_rate_hz:g} Hz, window '
            f'{cfg.window_size} samples')

    def _on_datagram(self, data: bytes, t_recv: float) -> None:
        # receive thread: decode -> session, sequence, clock -> window -> publish
        batch: SensorBatch = self._codec.decode(data)
        newest_s = float(batch.times_s[-1])
        admitted = self._stream.admit('', batch.session, batch.sequence, newest_s, t_recv,
                                      count=batch.count)
        log_events(self, admitted)
        if admitted.gap:
            self.get_logger().warning(f'sensor gap: {admitted.gap} samples missing',
                                      throttle_duration_sec=2.0)
        self._window.push(batch.samples[admitted.late:], admitted.contiguous)
        if admitted.drop:
            raise Drop(admitted.drop, f'sample time {newest_s:.6f} maps to '
                                      f'{admitted.drop.replace("_", " ")}')
        offset_s, calibrated = self._stream.clock_summary()
        window = self._window.window(admitted.stamp_s, offset_s, calibrated,
                                     self._stream.gaps[''], self._stream.late[''])
        self._publisher.publish(sensor_window_to_msg(window))
        self._published += 1
        self._rate.tick(t_recv)

    def _warn_drop(self, cause: str, text: str) -> None:
        self.get_logger().warning(f'dropped a sensor datagram ({cause}): {text}',
                                  throttle_duration_sec=2.0)

    def _report(self) -> tuple[HealthReport, NodeStatsData]:
        now = time.time()
        cfg, window = self._config, self._window
        rate = self._rate.rate_hz(now)
        health, stats = self._health.report(now, published=self._published, rate_hz=rate)
        fill = window.valid_samples
        health.values.update({
            'window_fill': fill, 'window_size': cfg.window_size,
            'sample_rate_hz': rate * window.accepted_samples / max(1, self._published),
            'late_samples': self._stream.late['']})
        stats.extra['window_fill'] = fill
        if self._loop.received and fill < cfg.min_fill:
            health.escalate('WARN', f'window holds {fill}/{cfg.window_size} samples')
        return health, stats

    def _status_line(self) -> str:
        stream = self._stream
        offset_s, calibrated = stream.clock_summary()
        return (f'sensor {self._rate.rate_hz(time.time()):.1f} batches/s | window '
                f'{self._window.valid_samples}/{self._config.window_size} | gaps '
                f'{stream.gaps[""]} late {stream.late[""]} restarts {stream.restarts} | dropped '
                f'{self._loop.drops.total()} | clock offset {offset_s * 1e3:+.3f} ms'
                f'{"" if calibrated else " (calibrating)"}')

    def destroy_node(self) -> None:
        # attributes are absent when __init__ failed half-way
        close_bridge(getattr(self, '_loop', None))
        super().destroy_node()


def main(args=None) -> int:
    return run_node(SensorBridgeNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
