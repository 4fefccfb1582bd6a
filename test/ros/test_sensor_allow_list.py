"""A datagram from a source not on sensor_bridge's allow-list never reaches sensor/window.

The node runs in the test process on a free port with only 127.0.0.1 allowed. Valid sensor_v1
batches sent from 127.0.0.2 (another loopback address, bound by the sender) carry a marker value
that a real sensor never reads; they are counted under drops.source in /diagnostics, no window
is published for them, and none of the windows published for the allowed sender's batches,
sent between the stranger's, holds the marker.
"""
from __future__ import annotations

import socket
import time

from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
import pytest
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from support import free_port

from vla_insertion.conversions import sensor_window_from_msg
from vla_insertion.core.wire import SensorBatch, SensorCodecV1
from vla_insertion.msg import SensorWindow
from vla_insertion.nodes.sensor_bridge import SensorBridgeNode
from vla_insertion.ros.qos import DIAGNOSTICS_QOS, WINDOW_QOS

MARKER = 999.0              # [N] in every channel of the stranger's samples
BATCH = 10                  # samples per datagram
WAIT_S = 30.0


class Sender:
    """sensor_v1 batches at 650 Hz sample spacing from one bound source address."""

    def __init__(self, source: str, port: int, value: float) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((source, 0))
        self.port = port
        self.value = value
        self.session = 0x5EED0000 + int(value)
        self.sequence = 0
        self.codec = SensorCodecV1()

    def send(self) -> None:
        times = time.time() - np.arange(BATCH - 1, -1, -1) / 650.0
        samples = np.full((BATCH, 7), self.value, np.float32)
        self.sock.sendto(self.codec.encode(SensorBatch(self.sequence, times, samples,
                                                       self.session)), ('127.0.0.1', self.port))
        self.sequence += BATCH

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def cell(rclpy_context):
    port = free_port(socket.SOCK_DGRAM)
    bridge = SensorBridgeNode(context=rclpy_context, parameter_overrides=[
        Parameter('port', value=port), Parameter('allowed_sources', value=['127.0.0.1']),
        Parameter('calibration_batches', value=1)])
    listener = Node('allow_list_listener', context=rclpy_context)
    windows, drops = [], {}

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.hardware_id.lstrip('/') == 'sensor_bridge':
                drops.update({kv.key: int(float(kv.value)) for kv in status.values
                              if kv.key.startswith('drops.')})

    listener.create_subscription(SensorWindow, 'sensor/window', windows.append, WINDOW_QOS)
    listener.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics,
                                 DIAGNOSTICS_QOS)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(bridge)
    executor.add_node(listener)
    stranger, sensor = Sender('127.0.0.2', port, MARKER), Sender('127.0.0.1', port, 1.0)
    try:
        yield executor, windows, drops, stranger, sensor
    finally:
        stranger.close()
        sensor.close()
        executor.shutdown()
        listener.destroy_node()
        bridge.destroy_node()


def test_a_stranger_s_datagrams_are_counted_and_never_reach_the_window(cell, spin_until):
    executor, windows, drops, stranger, sensor = cell
    for _ in range(20):
        stranger.send()
    assert spin_until(executor, lambda: drops.get('drops.source') == 20, WAIT_S), drops
    assert windows == [], 'no window for datagrams from a source off the allow-list'

    for _ in range(20):         # the allowed sender, with the stranger's batches in between
        sensor.send()
        stranger.send()
    assert spin_until(executor, lambda: drops.get('drops.source') == 40 and len(windows) == 20,
                      WAIT_S), (drops, len(windows))
    for msg in windows:
        window = sensor_window_from_msg(msg)
        values = window.samples[np.isfinite(window.samples)]
        assert values.size and not np.any(values == MARKER), 'a stranger sample in the window'
    assert {k: v for k, v in drops.items() if v} == {'drops.source': 40}
