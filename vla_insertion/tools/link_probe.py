"""link_probe: measure the DDS link between two hosts with what the cell sends over it.

    link_probe send --duration 20                  # on the GPU host: 3B-size VLFeatures, 2.6 Hz
    link_probe listen --duration 25 > robot.jsonl  # on the robot host: one JSON line a message
    link_probe listen --duration 25 > gpu.jsonl    # and on the GPU host, to compare arrivals

`send` publishes synthetic VLFeatures on vla/features, of the real 3B model's size by default
(41 tokens x 2048 float32 = 336 KB) at its rate, stamped when published, numbered from 0, with
the topic table's QoS: a stand-in for vlm_node when only the link is in question (a cell before
its models are installed, the benchmark). It prints {"topic": "sent", "stamp_s", "sequence"}
for each, and {"published": n} at the end.

`listen` subscribes to vla/features, vla/action_chunk and /diagnostics with the table's QoS and
prints, per message, a JSON line with its arrival time `t_s` on this host's clock:
    {"topic": "vla/features", "t_s", "stamp_s", "age_s", "sequence", "bytes"}
    {"topic": "vla/action_chunk", "t_s", "stamp_s", "sequence"}
    {"topic": "/diagnostics", "t_s", "node", "level", "values": {key: value}}
`age_s` is the arrival less the header stamp (the capture time of the newest view, for
vlm_node's features): what the expert's max_feature_age_s compares. What the link adds is the
arrival here less the same sequence's arrival at a `listen` on the sending host
(core/evaluation/link.py `link_delays`); DDS's own source and reception timestamps do not say
it for a fragmented sample (a 336 KB set over a 50 Mbit/s link: 1.6 ms between them, 70 ms
from publish to callback). Ages across hosts need their clocks in sync (docs/bringup.md "Two
hosts": chrony or PTP).

`--reliability` and `--depth` replace the features' QoS, to measure the alternatives
(benchmarks/bench_two_hosts.py); both ends must agree. SIGINT or SIGTERM end either mode.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions

from vla_insertion import conversions as conv
from vla_insertion.core import topics
from vla_insertion.core.data import VLFeatureData
from vla_insertion.core.orchestration.processes import StopRequest
from vla_insertion.msg import ActionChunk, VLFeatures
from vla_insertion.ros.qos import qos_profile

TOKENS_3B, DIM_3B, RATE_3B_HZ = 41, 2048, 2.6   # Qwen2.5-VL-3B features, as vlm_node sends them


def feature_qos(reliability: str, depth: int) -> QoSProfile:
    """Return the table's QoS of vla/features with `reliability` / `depth` replaced if given."""
    qos = qos_profile(topics.FEATURES.qos)
    if reliability != 'table':
        qos.reliability = (ReliabilityPolicy.BEST_EFFORT if reliability == 'best_effort'
                           else ReliabilityPolicy.RELIABLE)
    if depth > 0:
        qos.depth = depth
    return qos


def _emit(record: dict) -> None:
    sys.stdout.write(json.dumps(record) + '\n')
    sys.stdout.flush()


class ListenNode(Node):
    """Print a JSON line for every feature set, chunk and diagnostics status received."""

    def __init__(self, qos: QoSProfile) -> None:
        super().__init__('link_probe')
        self.create_subscription(VLFeatures, topics.FEATURES.name, self._on_features, qos)
        self.create_subscription(ActionChunk, topics.ACTION_CHUNK.name, self._on_chunk,
                                 qos_profile(topics.ACTION_CHUNK.qos))
        self.create_subscription(DiagnosticArray, topics.DIAGNOSTICS.name,
                                 self._on_diagnostics, qos_profile(topics.DIAGNOSTICS.qos))

    def _on_features(self, msg: VLFeatures) -> None:
        now, stamp = time.time(), conv.time_from_msg(msg.header.stamp)
        _emit({'topic': topics.FEATURES.name, 't_s': now, 'stamp_s': stamp,
               'age_s': now - stamp, 'sequence': int(msg.sequence), 'bytes': 4 * len(msg.data)})

    def _on_chunk(self, msg: ActionChunk) -> None:
        _emit({'topic': topics.ACTION_CHUNK.name, 't_s': time.time(),
               'stamp_s': conv.time_from_msg(msg.header.stamp), 'sequence': int(msg.sequence)})

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        now = time.time()
        for status in msg.status:
            _emit({'topic': topics.DIAGNOSTICS.name, 't_s': now, 'node': status.name,
                   'level': ord(status.level) if isinstance(status.level, bytes)
                   else int(status.level),
                   'values': {kv.key: kv.value for kv in status.values}})


class SendNode(Node):
    """Publish synthetic VLFeatures of (tokens, dim) float32 at rate_hz, stamped when sent."""

    def __init__(self, qos: QoSProfile, tokens: int, dim: int, rate_hz: float) -> None:
        super().__init__('link_probe_sender')
        self._pub = self.create_publisher(VLFeatures, topics.FEATURES.name, qos)
        self._features = np.zeros((tokens, dim), dtype=np.float32)
        self.published = 0
        self.create_timer(1.0 / rate_hz, self._send)

    def _send(self) -> None:
        stamp = time.time()
        self._pub.publish(conv.vl_features_to_msg(VLFeatureData(
            stamp_s=stamp, features=self._features, sequence=self.published,
            contract_hash='link_probe', model_id='link_probe')))
        _emit({'topic': 'sent', 'stamp_s': stamp, 'sequence': self.published})
        self.published += 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('mode', choices=('send', 'listen'))
    parser.add_argument('--duration', type=float, default=0.0,
                        help='seconds to run (0: until SIGINT or SIGTERM)')
    parser.add_argument('--tokens', type=int, default=TOKENS_3B, help='send: feature tokens')
    parser.add_argument('--dim', type=int, default=DIM_3B, help='send: feature dimension')
    parser.add_argument('--rate-hz', type=float, default=RATE_3B_HZ, help='send: rate [Hz]')
    parser.add_argument('--reliability', choices=('table', 'reliable', 'best_effort'),
                        default='table', help="the features' reliability (table: the topic "
                        "table's)")
    parser.add_argument('--depth', type=int, default=0,
                        help="the features' history depth (0: the topic table's)")
    args = parser.parse_args(argv)
    if args.tokens < 1 or args.dim < 1 or args.rate_hz <= 0:
        parser.error('--tokens and --dim must be >= 1, --rate-hz > 0')
    qos = feature_qos(args.reliability, args.depth)
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    stop = StopRequest()
    previous = stop.install()
    node = (SendNode(qos, args.tokens, args.dim, args.rate_hz) if args.mode == 'send'
            else ListenNode(qos))
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    deadline = time.monotonic() + args.duration if args.duration > 0 else float('inf')
    try:
        while not stop.requested and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
    finally:
        executor.shutdown(timeout_sec=2.0)
        if args.mode == 'send':
            _emit({'published': node.published})
        node.destroy_node()
        rclpy.try_shutdown()
        StopRequest.restore(previous)
    return 0


if __name__ == '__main__':
    sys.exit(main())
