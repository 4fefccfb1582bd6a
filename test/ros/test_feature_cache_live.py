"""The cache holds what vlm_node publishes live for the same frames (tiny VLM, real DDS).

A real VlmNode runs in-process with the cache's VLM settings. A handful of view sets from a
cached bag are published one at a time with their recorded stamps and JPEG bytes; each set is
sent again (best-effort camera QoS may drop a frame) until features with its view stamps come
back. The published features must equal the cached ones for the same view stamps (cosine >
0.999, fp16 storage). No timing is asserted; every wait is bounded.
"""
from __future__ import annotations

import os
import threading
import time

import numpy as np
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage

from vla_insertion import conversions as conv
from vla_insertion.core.bag.recording import load_recording
from vla_insertion.core.train.feature_cache import FeatureCache
from vla_insertion.msg import VLFeatures
from vla_insertion.nodes.vlm_node import VlmNode
from vla_insertion.ros.qos import LATEST_QOS, SENSOR_QOS

os.environ.setdefault('HF_HUB_OFFLINE', '1')


class Cameras(Node):
    """Publishes recorded frames; keeps the features it receives."""

    def __init__(self, context, views) -> None:
        super().__init__('recorded_cameras', context=context)
        self.lock = threading.Lock()
        self.features: list[VLFeatures] = []
        self.pubs = {v: self.create_publisher(CompressedImage, f'cameras/{v}/image/compressed',
                                              SENSOR_QOS) for v in views}
        self.create_subscription(VLFeatures, 'vla/features', self._on_features, LATEST_QOS)

    def _on_features(self, msg: VLFeatures) -> None:
        with self.lock:
            self.features.append(msg)

    def received(self) -> list[VLFeatures]:
        with self.lock:
            return list(self.features)


def wait_for(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_cached_features_equal_the_live_node_on_the_same_frames(rclpy_context, cached_bags):
    cfg = cached_bags['vlm_config']
    views = tuple(cfg.view_names)
    bag = cached_bags['bags'][2]
    cached = FeatureCache.load(cached_bags['cache']).bag(bag)
    rec = load_recording(bag, views=views)
    overrides = {'model': cfg.model, 'device': 'cpu', 'torch_threads': 1, 'warmup_runs': 0,
                 'view_names': list(views), 'image_width': cfg.image_width,
                 'image_height': cfg.image_height, 'sync_tolerance_s': cfg.sync_tolerance_s,
                 'max_view_age_s': 1e10}             # recorded stamps are old on this clock
    vlm = VlmNode(context=rclpy_context,
                  parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
    assert vlm.start() == 0, vlm.exit_code      # configure + activate, as autostart does
    cameras = Cameras(rclpy_context, views)
    executor = MultiThreadedExecutor(num_threads=3, context=rclpy_context)
    executor.add_node(vlm)
    executor.add_node(cameras)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: all(p.get_subscription_count() > 0
                                    for p in cameras.pubs.values()), 10.0)
        compared = 0
        for k in (2, 9, 16, 23, 30):                 # a handful of sets, in time order
            update = cached.updates[k]
            frames = {v: rec.frames[v].newest(s) for v, s in zip(views, update.view_stamps_s)}

            def arrived(stamps=update.view_stamps_s) -> VLFeatures | None:
                for msg in cameras.received():
                    got = tuple(conv.time_from_msg(t) for t in msg.view_stamps)
                    if np.allclose(got, stamps, rtol=0.0, atol=1e-6):  # epoch stamps
                        return msg
                return None
            for _ in range(10):                       # resend if a best-effort frame was lost
                for v in views:
                    cameras.pubs[v].publish(conv.camera_frame_to_msg(frames[v]))
                if wait_for(lambda: arrived() is not None, 3.0):
                    break
            msg = arrived()
            assert msg is not None, f'no live features for the views of update {k}'
            live = conv.vl_features_from_msg(msg)
            assert live.contract_hash == FeatureCache.load(cached_bags['cache']).contract.digest
            row = cached.features[k].astype(np.float32)
            assert cosine(row, live.features) > 0.999
            np.testing.assert_allclose(row, live.features, atol=3e-3 * np.abs(live.features).max())
            compared += 1
        assert compared == 5
    finally:
        executor.shutdown(timeout_sec=2.0)
        thread.join(timeout=5.0)
        vlm.destroy_node()
        cameras.destroy_node()
