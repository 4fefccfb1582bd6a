"""sensor_bridge: 650 Hz sensor batches (UDP) -> sensor/window, the newest window_size samples.

Topics out:
  sensor/window        vla_insertion/SensorWindow, WINDOW_QOS, one per received batch;
                       header.stamp is the newest sample's time on the local clock
  /diagnostics, vla/stats   datagram rate, drops by cause, gaps, late samples, window fill,
                       clock offset, message age
Parameters: the fields of core.config.SensorBridgeConfig (bind_address, port, wire_format,
channel_names, sample_rate_hz, window_size, max_datagram_bytes, socket_buffer_bytes,
receive_timeout_s, calibration_batches, min_fill, stale_after_s).

The clock offset is calibrated from the first calibration_batches datagrams and tracked after.
Missing sequence numbers are counted as gaps and restart the window's valid run; samples older
than the newest one taken are late and dropped; a new sender session restarts the window.
"""
from __future__ import annotations

import time

from rclpy.node import Node

from vla_insertion.conversions import sensor_window_to_msg
from vla_insertion.core.bridge import (
    bridge_health, close_bridge, Drop, LATE, ReceiveLoop, STALE_SESSION, UdpSource)
from vla_insertion.core.clock import ClockOffsetEstimator, MonotonicStamp
from vla_insertion.core.config import SensorBridgeConfig
from vla_insertion.core.data import NodeStatsData
from vla_insertion.core.health import HealthReport, RateMeter
from vla_insertion.core.sensor_window import SensorWindowBuffer
from vla_insertion.core.wire import make_codec, SensorBatch
from vla_insertion.msg import SensorWindow
from vla_insertion.nodes.common import declare_config, NodeMonitor, run_node, WINDOW_QOS


class SensorBridgeNode(Node):
    """Bridge the sensor sender's UDP batches to a sliding window topic."""

    def __init__(self) -> None:
        super().__init__('sensor_bridge')
        self._config = cfg = declare_config(self, SensorBridgeConfig)
        self._codec = make_codec(cfg.wire_format, 'sensor', max_bytes=cfg.max_datagram_bytes,
                                 channels=len(cfg.channel_names))
        self._sender_clock = ClockOffsetEstimator(cfg.calibration_batches)
        self._stamp = MonotonicStamp()
        self._window = SensorWindowBuffer(cfg.window_size, cfg.channel_names, cfg.sample_rate_hz)
        self._publisher = self.create_publisher(SensorWindow, 'sensor/window', WINDOW_QOS)
        self._rate = RateMeter()
        self._published = 0
        self._dropped_reported = 0
        self._gaps_reported = 0
        self._loop = ReceiveLoop(
            'sensor_rx', lambda: UdpSource(cfg.bind_address, cfg.port, cfg.receive_timeout_s,
                                           cfg.max_datagram_bytes, cfg.socket_buffer_bytes),
            self._on_datagram, on_drop=self._warn_drop)
        self._monitor = NodeMonitor(self, self._report, status_line=self._status_line)
        self._loop.start()
        self.get_logger().info(
            f'sensor UDP bound on {cfg.bind_address}:{cfg.port}, {len(cfg.channel_names)} '
            f'channels at {cfg.sample_rate_hz:g} Hz, window {cfg.window_size} samples')

    def _on_datagram(self, data: bytes, t_recv: float) -> None:
        # receive thread: decode -> window -> map the newest sample's time -> publish
        batch: SensorBatch = self._codec.decode(data)
        result = self._window.push(batch)
        if result.stale:
            raise Drop(STALE_SESSION, 'batch from a sender session that was replaced')
        if result.restarted:
            self.get_logger().warning('sensor sender restarted (new session or sequence reset)')
        if result.gap:
            self.get_logger().warning(f'sensor gap: {result.gap} samples missing',
                                      throttle_duration_sec=2.0)
        if result.accepted == 0:
            raise Drop(LATE, f'batch of {result.late} samples older than the window')
        offset = self._sender_clock.update(float(batch.times_s[-1]), t_recv)
        stamp = self._stamp(self._window.newest_time_s - offset)
        clock = self._sender_clock.report()
        window = self._window.window(stamp, clock.offset_s, clock.calibrated)
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
        health, stats = bridge_health(
            self._loop, self._sender_clock, now, cfg.stale_after_s, 'sensor_bridge',
            published=self._published, rate_hz=rate, dropped_before=self._dropped_reported)
        self._dropped_reported = stats.dropped
        fill = window.valid_samples
        health.values.update({
            'window_fill': fill, 'window_size': cfg.window_size,
            'sample_rate_hz': rate * window.accepted_samples / max(1, self._published),
            'gap_samples': window.gap_samples, 'late_samples': window.late_samples,
            'sender_restarts': window.restarts})
        stats.extra['window_fill'] = fill
        if self._loop.received and fill < cfg.min_fill:
            health.escalate('WARN', f'window holds {fill}/{cfg.window_size} samples')
        if window.gap_samples > self._gaps_reported:
            health.escalate('WARN', f'{window.gap_samples - self._gaps_reported} samples lost')
        self._gaps_reported = window.gap_samples
        return health, stats

    def _status_line(self) -> str:
        clock, window = self._sender_clock.report(), self._window
        return (f'sensor {self._rate.rate_hz(time.time()):.1f} batches/s | window '
                f'{window.valid_samples}/{self._config.window_size} | gaps {window.gap_samples}'
                f' late {window.late_samples} restarts {window.restarts} | dropped '
                f'{self._loop.drops.total()} | clock offset {clock.offset_s * 1e3:+.2f} ms'
                f'{"" if clock.calibrated else " (calibrating)"}')

    def destroy_node(self) -> None:
        # attributes are absent when __init__ failed half-way
        close_bridge(getattr(self, '_loop', None))
        super().destroy_node()


def main(args=None) -> int:
    return run_node(SensorBridgeNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
