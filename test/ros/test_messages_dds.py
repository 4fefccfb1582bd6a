"""Each custom message travels over real DDS on loopback and converts back to numpy."""
import numpy as np
import pytest
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from vla_insertion import conversions as conv
from vla_insertion.core.data import (
    ActionChunkData, NodeStatsData, SensorWindowData, VLFeatureData)
from vla_insertion.msg import ActionChunk, NodeStats, SensorWindow, VLFeatures
from vla_insertion.ros.qos import LATEST_QOS

rng = np.random.default_rng(1)
CASES = [
    (ActionChunk, conv.action_chunk_to_msg, conv.action_chunk_from_msg,
     ActionChunkData(stamp_s=10.0, actions=rng.standard_normal((8, 7)).astype(np.float32),
                     dt_s=0.1, sequence=3, feature_sequence=1, reuse_index=2),
     lambda d: d.actions),
    (SensorWindow, conv.sensor_window_to_msg, conv.sensor_window_from_msg,
     SensorWindowData(stamp_s=10.0, samples=rng.standard_normal((65, 4)).astype(np.float32),
                      valid_samples=65, sample_rate_hz=650.0, channel_names=('a', 'b', 'c', 'd')),
     lambda d: d.samples),
    (VLFeatures, conv.vl_features_to_msg, conv.vl_features_from_msg,
     VLFeatureData(stamp_s=10.0, features=rng.standard_normal((8, 32)).astype(np.float32),
                   sequence=4, contract_hash='h', model_id='m', view_names=('v',),
                   view_stamps_s=(9.9,)),
     lambda d: d.features),
    (NodeStats, conv.node_stats_to_msg, conv.node_stats_from_msg,
     NodeStatsData(stamp_s=10.0, node='n', rate_hz=10.0, published=99),
     lambda d: np.array([d.rate_hz, d.published])),
]


@pytest.mark.parametrize('msg_type,to_msg,from_msg,data,payload', CASES,
                         ids=[c[0].__name__ for c in CASES])
def test_message_over_dds(rclpy_context, spin_until, msg_type, to_msg, from_msg, data, payload):
    node = Node(f'dds_test_{msg_type.__name__.lower()}', context=rclpy_context)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    received = []
    pub = node.create_publisher(msg_type, 'dds_test', LATEST_QOS)
    node.create_subscription(msg_type, 'dds_test', received.append, LATEST_QOS)
    try:
        def published_and_received():
            if not received:
                pub.publish(to_msg(data))
            return bool(received)
        assert spin_until(executor, published_and_received, timeout_s=10.0), 'nothing received'
        back = from_msg(received[0])
        np.testing.assert_array_equal(payload(back), payload(data))
        assert back.stamp_s == pytest.approx(data.stamp_s)
    finally:
        executor.shutdown()
        node.destroy_node()
