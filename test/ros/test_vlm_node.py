"""vlm_node on real DDS with the tiny untrained model: images in, VLFeatures out.

An in-process VlmNode and a helper node that plays five cameras spin in one executor in a
background thread. Checks: stamps (header = newest capture, one stamp per view), contract hash,
untrained flag, skipped sets counted by cause in /diagnostics, sync mode and the exit status of
a failed load. Waits are bounded; torch runs on one thread.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
from PIL import Image
import pytest
from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage
from std_msgs.msg import Header, String

from vla_insertion import conversions as conv
from vla_insertion.core.config import VlmConfig
from vla_insertion.core.data import CameraFrame
from vla_insertion.core.feature_contract import FeatureContract
from vla_insertion.core.vlm import feature_contract_for
from vla_insertion.msg import VLFeatures
from vla_insertion.nodes.vlm_node import EXIT_LOAD_ERROR, VlmNode
from vla_insertion.ros.qos import DIAGNOSTICS_QOS, LATEST_QOS, SENSOR_QOS, STATIC_QOS

os.environ.setdefault('HF_HUB_OFFLINE', '1')
VIEWS = ('zed_1', 'zed_2', 'zed_3', 'zed_4', 'oak')


def jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (180, 320, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, 'JPEG', quality=80)
    return buffer.getvalue()


class FakeCameras(Node):
    """Publishes camera frames on request; records features and the VLM's diagnostics."""

    def __init__(self, context) -> None:
        super().__init__('fake_cameras', context=context)
        self.lock = threading.Lock()
        self.features: list[VLFeatures] = []
        self.diagnostics: list[dict[str, str]] = []
        self.images = {v: jpeg(i) for i, v in enumerate(VIEWS)}
        self.pubs = {v: self.create_publisher(CompressedImage, f'cameras/{v}/image/compressed',
                                              SENSOR_QOS) for v in VIEWS}
        self.request_pub = self.create_publisher(Header, 'vla/feature_request', LATEST_QOS)
        self.contracts: list[FeatureContract] = []
        self.create_subscription(VLFeatures, 'vla/features', self._on_features, LATEST_QOS)
        self.create_subscription(String, 'vla/feature_contract', self._on_contract, STATIC_QOS)
        self.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, DIAGNOSTICS_QOS)

    def now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def publish(self, stamps: dict[str, float]) -> None:
        for view, stamp in stamps.items():
            self.pubs[view].publish(conv.camera_frame_to_msg(
                CameraFrame(view=view, stamp_s=stamp, data=self.images[view])))

    def _on_features(self, msg: VLFeatures) -> None:
        with self.lock:
            self.features.append(msg)

    def _on_contract(self, msg: String) -> None:
        with self.lock:
            self.contracts.append(FeatureContract.from_json(msg.data))

    def _on_diag(self, msg: DiagnosticArray) -> None:
        with self.lock:
            self.diagnostics += [{kv.key: kv.value for kv in s.values}
                                 for s in msg.status if s.name.startswith('vlm_node')]

    def snapshot(self) -> tuple[list[VLFeatures], list[dict[str, str]]]:
        with self.lock:
            return list(self.features), list(self.diagnostics)


@pytest.fixture
def cell(rclpy_context, tiny_vlm_dir, request):
    """Yield (vlm node, fake cameras) spinning in a background executor."""
    overrides = {'model': str(tiny_vlm_dir), 'device': 'cpu', 'torch_threads': 1,
                 'warmup_runs': 0, 'sync_tolerance_s': 0.05, 'max_view_age_s': 1.0,
                 **getattr(request, 'param', {})}
    vlm = VlmNode(context=rclpy_context,
                  parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
    assert vlm.start() == 0, vlm.exit_code     # configure + activate, as autostart does
    cameras = FakeCameras(rclpy_context)
    executor = MultiThreadedExecutor(num_threads=4, context=rclpy_context)
    executor.add_node(vlm)
    executor.add_node(cameras)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    _wait(lambda: all(p.get_subscription_count() > 0 for p in cameras.pubs.values()), 10.0)
    try:
        yield vlm, cameras
    finally:
        executor.shutdown(timeout_sec=2.0)
        thread.join(timeout=5.0)
        vlm.destroy_node()
        cameras.destroy_node()


def _wait(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def _settled(vlm: VlmNode, cameras: FakeCameras) -> bool:
    """Return whether the worker waits with nothing new to run and its features all arrived."""
    worker = vlm._worker
    return worker is not None and worker.idle and \
        len(cameras.snapshot()[0]) == vlm._stats.published


def _publish_until(cameras: FakeCameras, predicate, timeout_s: float, spread_s: float = 0.01,
                   skip: tuple[str, ...] = (), age_s: float = 0.0) -> dict[str, float]:
    """Publish a fresh set of views (capture stamps `spread_s` apart) until predicate holds."""
    deadline = time.monotonic() + timeout_s
    stamps: dict[str, float] = {}
    while time.monotonic() < deadline and not predicate():
        base = cameras.now_s() - age_s
        stamps = {v: base - spread_s * i for i, v in enumerate(VIEWS) if v not in skip}
        cameras.publish(stamps)
        time.sleep(0.1)
    return stamps


def test_images_in_features_out_with_stamps_and_contract(cell, tiny_vlm_dir):
    vlm, cameras = cell
    _publish_until(cameras, lambda: cameras.snapshot()[0], 30.0)
    features, _ = cameras.snapshot()
    assert features, 'no VLFeatures within 30 s'
    msg = features[0]
    view_stamps = [conv.time_from_msg(t) for t in msg.view_stamps]
    assert list(msg.view_names) == list(VIEWS)
    assert conv.time_from_msg(msg.header.stamp) == pytest.approx(max(view_stamps), abs=1e-9)
    assert max(view_stamps) - min(view_stamps) <= 0.05 + 1e-9
    contract = feature_contract_for(VlmConfig(model=str(tiny_vlm_dir)))
    assert msg.contract_hash == contract.digest
    assert (msg.num_tokens, msg.feature_dim) == (contract.num_tokens, contract.feature_dim)
    assert len(msg.data) == contract.num_tokens * contract.feature_dim
    assert msg.untrained and msg.model_id == contract.model_id and msg.sequence == 1
    assert msg.inference_ms > 0.0
    # the same frames are never run twice: once the cameras stop, at most the set that arrived
    # during the last inference is run, and no set of view stamps appears twice. Waited for:
    # the worker has looked at every frame it received, and each set it published arrived here
    assert _wait(lambda: _settled(vlm, cameras), 30.0), 'the worker never caught up'
    features, _ = cameras.snapshot()
    view_sets = [tuple((t.sec, t.nanosec) for t in f.view_stamps) for f in features]
    assert len(set(view_sets)) == len(view_sets) and len(features) <= 3
    assert [f.sequence for f in features] == list(range(1, len(features) + 1))


def test_missing_and_out_of_sync_views_are_skipped_and_counted(cell):
    vlm, cameras = cell

    def diag_has(key):
        return lambda: any(key in d and int(d[key]) > 0 for d in cameras.snapshot()[1])
    _publish_until(cameras, diag_has('skipped.missing_views'), 20.0, skip=('oak',))
    _publish_until(cameras, diag_has('skipped.out_of_sync'), 20.0, spread_s=0.2)
    _publish_until(cameras, diag_has('skipped.stale_views'), 20.0, age_s=5.0)
    features, diagnostics = cameras.snapshot()
    assert not features, 'no features from incomplete, out-of-sync or stale sets'
    last = diagnostics[-1]
    for cause in ('missing_views', 'out_of_sync', 'stale_views'):
        assert int(last[f'skipped.{cause}']) > 0, last
    assert last['untrained'] == 'True' and last['vl_updates'] == '0'
    assert int(last['frames.zed_1']) > 0


@pytest.mark.parametrize('cell', [{'mode': 'sync'}], indirect=True)
def test_sync_mode_computes_only_on_request(cell):
    vlm, cameras = cell
    # fresh complete sets until the node has received several, no request: none is run
    _publish_until(cameras, lambda: min(vlm._stats.frames[v] for v in VIEWS) >= 5, 20.0)
    assert min(vlm._stats.frames[v] for v in VIEWS) >= 5, dict(vlm._stats.frames)
    assert _wait(lambda: _settled(vlm, cameras), 10.0)
    assert not cameras.snapshot()[0] and vlm._stats.published == 0, \
        'sync mode must wait for a request'
    newest_stamps = set()
    for _ in range(100):
        stamps = _publish_until(cameras, lambda: False, 0.15)  # best effort: send again
        newest_stamps.add(max(stamps.values()))
        cameras.request_pub.publish(Header(stamp=conv.time_to_msg(cameras.now_s())))
        if _wait(lambda: cameras.snapshot()[0], 0.3):
            break
    features, _ = cameras.snapshot()
    assert features, 'no features within 100 requests'
    stamp = conv.time_from_msg(features[0].header.stamp)
    assert any(abs(stamp - s) < 2e-6 for s in newest_stamps), (stamp, newest_stamps)  # ns


def test_a_failed_load_exits_3_naming_the_missing_folder(ros_env, tmp_path):
    missing = tmp_path / 'no_model_here'
    result = subprocess.run(
        [sys.executable, '-c', 'import sys; from vla_insertion.nodes.vlm_node import main; '
         'sys.exit(main(sys.argv))', '--ros-args', '-p', f'model:={missing}'],
        env={**ros_env, 'HF_HUB_OFFLINE': '1'}, capture_output=True, text=True, timeout=120)
    assert result.returncode == EXIT_LOAD_ERROR, result.stderr[-2000:]
    assert 'model folder not found' in result.stderr and str(missing) in result.stderr


def test_lifecycle_stops_frees_and_swaps_the_instruction(cell, tiny_vlm_dir):
    vlm, cameras = cell
    assert _wait(lambda: cameras.contracts, 10.0), 'no contract on vla/feature_contract'
    assert cameras.contracts[0] == feature_contract_for(
        VlmConfig(model=str(tiny_vlm_dir), view_names=VIEWS))
    # the instruction is part of the contract: not live
    result = vlm.set_parameters([Parameter('instruction', value='Insert the peg.')])[0]
    assert not result.successful and 'unconfigured' in result.reason
    # the scheduling limits are live, validated as at start-up
    assert vlm.set_parameters([Parameter('max_view_age_s', value=2.0)])[0].successful
    assert vlm._config.max_view_age_s == 2.0
    result = vlm.set_parameters([Parameter('sync_tolerance_s', value=-0.1)])[0]
    assert not result.successful and 'sync_tolerance_s must be' in result.reason
    assert vlm._config.sync_tolerance_s == 0.05
    _publish_until(cameras, lambda: cameras.snapshot()[0], 30.0)
    assert cameras.snapshot()[0], 'no features while active'

    assert vlm.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    # the worker has stopped: once two reports say inactive (a feature published before the
    # first may still be taken after it: the listener serves the two topics in any order),
    # nothing more comes across two further reports, while fresh views keep arriving

    def inactive_reports() -> int:
        return sum(d.get('lifecycle_state') == 'inactive' for d in cameras.snapshot()[1])
    _publish_until(cameras, lambda: inactive_reports() >= 2, 30.0)
    published = len(cameras.snapshot()[0])
    _publish_until(cameras, lambda: inactive_reports() >= 4, 30.0)
    assert inactive_reports() >= 4
    assert len(cameras.snapshot()[0]) == published
    assert vlm.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    assert vlm._extractor is None and vlm._model is None   # the model is freed

    result = vlm.set_parameters([Parameter('instruction', value='Insert the peg.')])[0]
    assert result.successful, result.reason
    assert vlm.start() == 0
    assert _wait(lambda: len(cameras.contracts) >= 2, 30.0)
    new = cameras.contracts[-1]
    assert 'Task: Insert the peg.' in new.prompt and new.digest != cameras.contracts[0].digest
    _publish_until(cameras, lambda: len(cameras.snapshot()[0]) > published, 30.0)
    assert cameras.snapshot()[0][-1].contract_hash == new.digest
