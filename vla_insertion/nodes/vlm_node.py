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
thread runs the model: in async mode (default) it waits for a new frame, selects the newest
complete set whose capture stamps lie within sync_tolerance_s and none older than
max_view_age_s, runs inference, publishes the features stamped with the newest view's capture
time and starts again at once (or at max_rate_hz). A set that is incomplete, stale or out of sync
is skipped, counted by cause and reported in /diagnostics; a set already run is never run again.
In sync mode (`mode: sync`) the worker runs once per request on vla/feature_request, on the
newest views (a repeated set is run again and counted as `repeated_set`).

Exit status (autostart): 2 for an invalid parameter, 3 when the model cannot be loaded (the log
names the missing folder, config, weights, tokenizer or processor). Driven by lifecycle
transitions, the same failures make configure fail and the node stays unconfigured.
"""
from __future__ import annotations

from collections import Counter
import functools
import sys
import threading
import time

from sensor_msgs.msg import CompressedImage
from std_msgs.msg import Header, String
import torch

from vla_insertion.conversions import camera_frame_from_msg, vl_features_to_msg
from vla_insertion.core import topics
from vla_insertion.core.config import ConfigError, VlmConfig
from vla_insertion.core.data import NodeStatsData
from vla_insertion.core.health import DropCounter, HealthReport, LatencyStats, RateMeter
from vla_insertion.core.interfaces import VlmObservation
from vla_insertion.core.vlm.extractor import DelayedVlm, VlmFeatureExtractor, VlmInputError
from vla_insertion.core.vlm.selection import (
    LatestFrames, MISSING_VIEWS, NO_NEW_FRAMES, OUT_OF_SYNC, REFUSALS, STALE_VIEWS)
from vla_insertion.core.vlm.source import VlmLoadError
from vla_insertion.msg import VLFeatures
from vla_insertion.ros.lifecycle import EXIT_CONFIG, ManagedNode
from vla_insertion.ros.monitoring import NodeMonitor
from vla_insertion.ros.parameters import declare_config
from vla_insertion.ros.qos import LATEST_QOS, lifecycle_publisher, SENSOR_QOS
from vla_insertion.ros.run import run_node

EXIT_LOAD_ERROR = 3
WAIT_STEP_S = 0.1        # worker wake-up period to notice shutdown [s]
SKIP_BACKOFF_S = 0.05    # after a skipped set, wait this long before trying again [s]
BAD_IMAGE = 'bad_image'  # skip cause: a view did not decode


class VlmNode(ManagedNode):
    """Publish VL features of the newest complete, in-sync set of camera views."""

    FAILURES = {ConfigError: EXIT_CONFIG, VlmLoadError: EXIT_LOAD_ERROR}

    def __init__(self, **node_kwargs) -> None:
        super().__init__('vlm_node', **node_kwargs)
        self._config = declare_config(self, VlmConfig, on_change=self._apply,
                                      reconfigurable=self.unconfigured)
        self._frame_counts: Counter[str] = Counter()
        # sets not run and frames not stored, by cause (every cause reported from the start)
        self._skipped = DropCounter((MISSING_VIEWS, STALE_VIEWS, OUT_OF_SYNC, BAD_IMAGE))
        self._refused_frames = DropCounter(REFUSALS)
        self._rate = RateMeter()
        self._inference_ms = LatencyStats()
        self._feature_age_s = LatencyStats()  # at publication: publish time - newest capture
        self._stage_ms = {}
        self._sequence = 0
        self._repeated_sets = 0
        self._requests = 0
        self._last_skip = ''
        self._published_at_report = 0
        self._worker_error = ''
        self._extractor = None               # configured: the model is loaded
        self._model = None
        self._contract_hash = ''
        self._frames: LatestFrames | None = None
        self._entities: list = []            # subscriptions made at configure
        self._pub = self._contract_pub = None
        self._request = threading.Event()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
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
        self._worker_error = ''
        self._stop = threading.Event()
        self._request.clear()
        self._worker = threading.Thread(target=self._run, args=(self._stop,),
                                        name='vlm_worker', daemon=True)
        self._worker.start()

    def _deactivate(self) -> None:
        worker, self._worker = self._worker, None
        self._stop.set()
        self._request.set()
        if worker is not None and worker.is_alive() and worker is not threading.current_thread():
            worker.join(timeout=30.0)          # at most one inference

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

    # --- callbacks: store and return -------------------------------------------------------

    def _on_image(self, view: str, msg: CompressedImage) -> None:
        self._frame_counts[view] += 1
        frames = self._frames
        if frames is not None:
            refused = frames.put(camera_frame_from_msg(msg, view), self._now_s())
            if refused:
                self._refused_frames.count(refused)

    def _on_request(self, msg: Header) -> None:
        self._requests += 1
        self._request.set()

    # --- worker ---------------------------------------------------------------------------

    def _now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _run(self, stop: threading.Event) -> None:
        try:
            self._loop(stop)
        except Exception as exc:
            self._worker_error = f'{type(exc).__name__}: {exc}'
            self.get_logger().fatal(f'VLM worker stopped: {self._worker_error}')
            raise

    def _loop(self, stop: threading.Event) -> None:
        sync = self._config.mode == 'sync'
        frames, model, pub = self._frames, self._model, self._pub
        next_start = time.monotonic()
        while not stop.is_set():
            cfg = self._config                 # live limits: read for every set
            period_s = 1.0 / cfg.max_rate_hz if cfg.max_rate_hz > 0 else 0.0
            if sync:  # one run per request, on the newest views
                if not self._request.wait(WAIT_STEP_S):
                    continue
                self._request.clear()
            else:  # one run per new set, no sooner than max_rate_hz allows
                if not frames.wait_for_new(WAIT_STEP_S):
                    continue
                if period_s and stop.wait(max(0.0, next_start - time.monotonic())):
                    break
            selection = frames.select(self._now_s(), cfg.sync_tolerance_s,
                                      cfg.max_view_age_s, require_new=not sync)
            if not selection.ready:
                if selection.cause != NO_NEW_FRAMES:
                    self._skip(selection.cause, selection.describe())
                    stop.wait(0.0 if sync else SKIP_BACKOFF_S)
                continue
            next_start = time.monotonic() + period_s
            self._repeated_sets += int(selection.repeated)
            obs = VlmObservation(frames=selection.frames, sequence=self._sequence + 1)
            try:
                with torch.inference_mode():
                    features = model.infer(obs)
            except VlmInputError as exc:
                self._skip(BAD_IMAGE, str(exc))
                continue
            pub.publish(vl_features_to_msg(features))
            self._sequence += 1
            now = self._now_s()
            self._rate.tick(time.monotonic())
            self._inference_ms.add(features.inference_ms)
            self._feature_age_s.add(now - features.stamp_s)
            self._stage_ms = dict(model.last_timings)

    def _skip(self, cause: str, detail: str) -> None:
        self._skipped.count(cause)
        self._last_skip = f'{cause}: {detail}'
        self.get_logger().warning(f'VL set skipped: {detail}', throttle_duration_sec=2.0)

    # --- monitoring -----------------------------------------------------------------------

    def _report(self) -> tuple[HealthReport, NodeStatsData]:
        rate = self._rate.rate_hz(time.monotonic())
        latency = self._inference_ms.summary()
        age = self._feature_age_s.summary()
        published = self._sequence
        state = self.lifecycle_state
        extractor = self._extractor
        report = HealthReport()
        if self._worker_error:
            report.escalate('ERROR', f'worker stopped: {self._worker_error}')
        elif state != 'active':
            report.escalate('WARN', f'{state}: not publishing' + (
                ' (activate starts the worker)' if extractor is not None
                else f' (configure loads {self._config.model})'))
        elif published == self._published_at_report and self._last_skip:
            report.escalate('WARN', f'not publishing: {self._last_skip}')
        elif published == 0:
            report.escalate('WARN', 'no features published yet')
        self._published_at_report = published
        self._last_skip = ''
        untrained = extractor is not None and extractor.untrained
        if untrained:
            report.message += ' (untrained weights)'
        report.values = {
            'lifecycle_state': state, 'mode': self._config.mode,
            'model_id': extractor.model_id if extractor is not None else '',
            'contract': self._contract_hash, 'untrained': untrained,
            'vl_updates': published, 'vl_rate_hz': rate,
            'inference_ms_mean': latency['mean'], 'inference_ms_p99': latency['p99'],
            'feature_age_s_mean': age['mean'], 'feature_age_s_p99': age['p99'],
            'repeated_sets': self._repeated_sets, 'requests': self._requests,
            'artificial_delay_s': self._config.artificial_delay_s,
            **{f'skipped.{k}': v for k, v in sorted(self._skipped.as_dict().items())},
            **{f'refused_frames.{k}': v
               for k, v in sorted(self._refused_frames.as_dict().items())},
            **{f'frames.{v}': self._frame_counts[v] for v in self._config.view_names},
            **{f'stage.{k}': v for k, v in self._stage_ms.items()},
        }
        stats = NodeStatsData(
            stamp_s=self._now_s(), node='', rate_hz=rate, latency_mean_ms=latency['mean'],
            latency_p99_ms=latency['p99'], input_age_s=age['mean'], published=published,
            dropped=self._skipped.total())
        return report, stats

    def _status_line(self) -> str:
        latency = self._inference_ms.summary()
        age = self._feature_age_s.summary()
        line = f'VL updates: {self._sequence}'
        if latency['n']:
            line += (f' | VL avg: {latency["mean"]:.0f}ms | VL rate: '
                     f'{self._rate.rate_hz(time.monotonic()):.2f} Hz | feature age avg: '
                     f'{age["mean"] * 1e3:.0f}ms')
        line += ' | frames: ' + ' '.join(f'{v}={self._frame_counts[v]}'
                                         for v in self._config.view_names)
        skipped = {k: v for k, v in self._skipped.as_dict().items() if v}
        if skipped:
            line += ' | skipped ' + ', '.join(f'{k}={v}' for k, v in sorted(skipped.items()))
        extractor = self._extractor
        if extractor is not None and extractor.untrained:
            line += ' | untrained'
        if self.lifecycle_state != 'active':
            line = f'{self.lifecycle_state} | {line}'
        return line


def main(args=None) -> int:
    return run_node(VlmNode, args)


if __name__ == '__main__':
    sys.exit(main())
