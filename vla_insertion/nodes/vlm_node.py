"""vlm_node: Qwen2.5-VL features from the newest camera views, in the background.

Topics
    in   cameras/<view>/image/compressed  sensor_msgs/CompressedImage  SENSOR_QOS   per view
    in   vla/feature_request              std_msgs/Header              LATEST_QOS   sync mode
    out  vla/features                     vla_insertion/VLFeatures     LATEST_QOS
    out  vla/feature_contract             std_msgs/String (JSON)       STATIC_QOS   per activation
    out  /diagnostics, vla/stats          (NodeMonitor)

Parameters: the fields of `VlmConfig` (core/config.py): model, device, dtype,
attn_implementation, view_names, image_width, image_height, instruction, pool_grid_h,
pool_grid_w, sync_tolerance_s, max_view_age_s, max_rate_hz, mode, torch_threads, warmup_runs,
artificial_delay_s (wraps the model in DelayedVlm: the comparison experiment's heavier model),
preprocessing, preprocess_threads, torch_compile, compile_mode (docs/vlm.md).
Live (applied to the next set): sync_tolerance_s, max_view_age_s, max_rate_hz. The others, the
instruction included (it is part of the feature contract), change while the node is
unconfigured and are used at the next configure.

A managed (lifecycle) node: configure loads the model and creates the topics, activate
publishes the feature contract and starts the worker, deactivate stops it, cleanup frees the
model (and the GPU memory), so another VLM or instruction is swapped in without restarting the
graph. `autostart` (default true) drives it to active at start; the launch file drives it with
lifecycle transitions instead.

Subscriptions only store the newest frame per view (core.vlm.selection.LatestFrames): a frame
stamped in the future of the node's clock is refused, and an older-stamped frame replaces a held
one stored more than max_view_age_s ago, so a camera sender that restarted or re-based its clock
is followed again within max_view_age_s (refused frames: `refused_frames.<cause>`). One worker
thread (core.vlm.worker.VlmWorker) runs the model: in async mode (default) it waits for a new
frame, selects the newest complete set whose capture stamps lie within sync_tolerance_s and
none older than max_view_age_s, runs inference, publishes the features stamped with the newest
view's capture time and starts again at once (or at max_rate_hz). A set that is incomplete,
stale or out of sync is skipped, counted by cause and reported in /diagnostics; a set already
run is never run again. In sync mode (`mode: sync`) the worker runs once per request on
vla/feature_request, on the newest views (a repeated set is run again and counted as
`repeated_sets`).

Exit status (autostart): 2 for an invalid parameter, 3 when the model cannot be loaded (the log
names the missing folder, config, weights, tokenizer or processor). Driven by lifecycle
transitions, the same failures make configure fail and the node stays unconfigured.
"""
from __future__ import annotations

import functools
import sys

from sensor_msgs.msg import CompressedImage
from std_msgs.msg import Header, String
import torch

from vla_insertion.conversions import camera_frame_from_msg, vl_features_to_msg
from vla_insertion.core import topics
from vla_insertion.core.config import ConfigError, VlmConfig
from vla_insertion.core.data import NodeStatsData, VLFeatureData
from vla_insertion.core.health import HealthReport
from vla_insertion.core.vlm.extractor import DelayedVlm, VlmFeatureExtractor
from vla_insertion.core.vlm.selection import LatestFrames
from vla_insertion.core.vlm.source import VlmLoadError
from vla_insertion.core.vlm.worker import VlmStats, VlmWorker
from vla_insertion.msg import VLFeatures
from vla_insertion.ros.lifecycle import EXIT_CONFIG, ManagedNode
from vla_insertion.ros.monitoring import NodeMonitor
from vla_insertion.ros.parameters import declare_config
from vla_insertion.ros.qos import LATEST_QOS, lifecycle_publisher, SENSOR_QOS
from vla_insertion.ros.run import run_node

EXIT_LOAD_ERROR = 3


class VlmNode(ManagedNode):
    """Publish VL features of the newest complete, in-sync set of camera views."""

    FAILURES = {ConfigError: EXIT_CONFIG, VlmLoadError: EXIT_LOAD_ERROR}

    def __init__(self, **node_kwargs) -> None:
        super().__init__('vlm_node', **node_kwargs)
        self._config = declare_config(self, VlmConfig, on_change=self._apply,
                                      reconfigurable=self.unconfigured)
        self._stats = VlmStats()             # kept across lifecycle transitions
        self._extractor = None               # configured: the model is loaded
        self._model = None
        self._contract_hash = ''
        self._frames: LatestFrames | None = None
        self._entities: list = []            # subscriptions made at configure
        self._pub = self._contract_pub = None
        self._worker: VlmWorker | None = None  # active: the worker runs
        self._monitor = NodeMonitor(self, self._report, status_line=self._status_line)

    # --- lifecycle: configure loads, activate runs, deactivate stops, cleanup frees -------

    def _configure(self) -> None:
        cfg = self._config
        log = self.get_logger()
        log.info(f'loading VLM {cfg.model} (device {cfg.device}, dtype {cfg.dtype})')
        self._extractor = VlmFeatureExtractor(cfg)  # VlmLoadError: configure fails (exit 3)
        self._contract_hash = self._extractor.contract.digest
        self._model = self._extractor
        if cfg.artificial_delay_s > 0:
            self._model = DelayedVlm(self._extractor, cfg.artificial_delay_s)
            log.warning(f'artificial delay of {cfg.artificial_delay_s} s added to every '
                        'inference (comparison experiment)')
        if self._extractor.untrained:
            log.warning(f'VLM {self._extractor.model_id} has UNTRAINED (random) weights: its '
                        'features are for demos and tests only')
        if cfg.warmup_runs:
            with torch.inference_mode():
                self._extractor.warmup(cfg.warmup_runs)
        log.info(f'VLM ready: {self._extractor.model_id}, contract {self._contract_hash} '
                 f'({self._extractor.contract.num_tokens} x '
                 f'{self._extractor.contract.feature_dim}), mode {cfg.mode}')
        self._frames = LatestFrames(cfg.view_names, cfg.max_view_age_s)
        self._pub = lifecycle_publisher(self, VLFeatures, topics.FEATURES)
        self._contract_pub = lifecycle_publisher(self, String, topics.FEATURE_CONTRACT)
        self._entities = [
            self.create_subscription(CompressedImage, topics.camera_topic(view),
                                     functools.partial(self._on_image, view), SENSOR_QOS)
            for view in cfg.view_names]
        if cfg.mode == 'sync':
            self._entities.append(self.create_subscription(
                Header, topics.FEATURE_REQUEST.name, self._on_request, LATEST_QOS))

    def _activate(self) -> None:
        self._contract_pub.publish(String(data=self._extractor.contract.to_json()))
        self._stats.error = ''
        pub = self._pub

        def publish(features: VLFeatureData) -> None:
            pub.publish(vl_features_to_msg(features))
        self._worker = VlmWorker(self._model, self._frames, self._config, self._stats,
                                 clock=self._now_s, publish=publish, on_skip=self._skipped,
                                 on_error=self._failed).start()

    def _deactivate(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop(timeout_s=30.0)        # at most one inference

    def _cleanup(self) -> None:
        for sub in self._entities:
            self.destroy_subscription(sub)
        for pub in (self._pub, self._contract_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self._entities, self._pub, self._contract_pub = [], None, None
        if self._extractor is not None:
            self._extractor.close()            # its preprocessing threads
        self._extractor = self._model = self._frames = None

    def _apply(self, config: VlmConfig) -> None:
        """Take a parameter change: the worker reads the live limits at every set."""
        self._config = config
        worker = self._worker
        if worker is not None:
            worker.config = config

    # --- callbacks: store and return -------------------------------------------------------

    def _on_image(self, view: str, msg: CompressedImage) -> None:
        frames = self._frames
        self._stats.frame_put(view, frames.put(camera_frame_from_msg(msg, view), self._now_s())
                              if frames is not None else '')

    def _on_request(self, msg: Header) -> None:
        self._stats.requests += 1
        worker = self._worker
        if worker is not None:
            worker.request()

    def _skipped(self, cause: str, detail: str) -> None:
        self.get_logger().warning(f'VL set skipped: {detail}', throttle_duration_sec=2.0)

    def _failed(self, error: str) -> None:
        self.get_logger().fatal(f'VLM worker stopped: {error}')

    def _now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # --- monitoring -----------------------------------------------------------------------

    def _report(self) -> tuple[HealthReport, NodeStatsData]:
        return self._stats.report(self.lifecycle_state, self._config, self._extractor,
                                  self._contract_hash, self._now_s())

    def _status_line(self) -> str:
        extractor = self._extractor
        return self._stats.status_line(self.lifecycle_state, self._config.view_names,
                                       extractor is not None and extractor.untrained)


def main(args=None) -> int:
    return run_node(VlmNode, args)


if __name__ == '__main__':
    sys.exit(main())
