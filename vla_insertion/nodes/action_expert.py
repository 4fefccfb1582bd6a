"""action_expert: the 10 Hz action loop of the dual-rate VLA policy.

Subscribes (newest kept; QoS from core/topics.py):
    vla/features         vla_insertion/VLFeatures
    sensor/window        vla_insertion/SensorWindow
    robot/joint_states   sensor_msgs/JointState [rad], with the `gripper` entry [0..1]
    robot/pose           geometry_msgs/PoseStamped
Publishes:
    vla/action_chunk     vla_insertion/ActionChunk, one per accepted tick, stamped with the tick
    vla/feature_request  std_msgs/Header, sync mode: one per step
    /diagnostics, vla/stats: rate, latency, reuse, ages, refused ticks (`drops.<reason>`)
Parameters: the fields of core.config.ExpertConfig.

Subscriptions only store the newest input of each stream under a lock. Each tick hands them to
`core.expert.runner.ExpertRunner`, which applies the staleness rules, runs the policy under
torch.inference_mode() and stamps the chunk; offline evaluation and training tick the same
runner. `scheduler: thread` (default) ticks in a dedicated thread on absolute deadlines of the
steady clock (core.ticker.DeadlineTicker); `scheduler: timer` uses an rclpy timer in its own
callback group (it follows /clock when replaying with use_sim_time). Sync mode publishes a
request per step and waits, at most sync_timeout_s, for features newer than the request.
"""
from __future__ import annotations

import sys
import threading
import time

from geometry_msgs.msg import PoseStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Header
import torch

from vla_insertion import conversions as conv
from vla_insertion.core import topics
from vla_insertion.core.config import ConfigError, ExpertConfig
from vla_insertion.core.data import MODE_ASYNC, MODE_SYNC, NodeStatsData
from vla_insertion.core.expert.checkpoint import CheckpointError, load_checkpoint
from vla_insertion.core.expert.policy import ExpertPolicy
from vla_insertion.core.expert.runner import expert_health, ExpertRunner, TickResult
from vla_insertion.core.expert.staleness import StalenessLimits, SYNC_TIMEOUT
from vla_insertion.core.health import HealthReport, LatencyStats, RateMeter
from vla_insertion.core.processes import set_fifo_priority
from vla_insertion.core.ticker import DeadlineTicker
from vla_insertion.msg import ActionChunk, SensorWindow, VLFeatures
from vla_insertion.nodes.common import (
    declare_config, NodeMonitor, publisher, run_node, subscription)

# Every torch op releases the GIL and takes it back; with the default 5 ms switch interval a busy
# executor thread can hold it that long per op, turning a 3 ms forward into tens of ms.
SWITCH_INTERVAL_S = 0.0005


class ActionExpertNode(Node):
    """Turn the newest features, sensor window and robot state into action chunks at rate_hz."""

    def __init__(self, **node_kwargs) -> None:
        super().__init__('action_expert', **node_kwargs)
        self._config = cfg = declare_config(self, ExpertConfig)
        if cfg.torch_threads > 0:
            torch.set_num_threads(cfg.torch_threads)
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))  # process-wide
        try:
            checkpoint = load_checkpoint(cfg.checkpoint, device=cfg.device)
        except CheckpointError as exc:
            raise ConfigError(f'checkpoint: {exc}') from None
        policy = ExpertPolicy(checkpoint, device=cfg.device, steps=cfg.flow_steps or None,
                              seed=None if cfg.seed < 0 else cfg.seed)
        policy.warm_up()
        self._sync = cfg.mode == 'sync'
        self._runner = ExpertRunner(policy, StalenessLimits.from_config(cfg),
                                    MODE_SYNC if self._sync else MODE_ASYNC)

        # the newest input of each stream, written by the subscriptions, read by the tick
        self._lock = threading.Lock()
        self._features_arrived = threading.Condition(self._lock)
        self._features, self._window, self._joints, self._pose = None, None, None, None
        self._feature_arrivals = 0
        self._rate = RateMeter(window_s=5.0)
        self._lateness_ms = LatencyStats(maxlen=600)  # tick start after its deadline
        self._published_at_report = 0
        self._failed = ''

        subscription(self, VLFeatures, topics.FEATURES, self._on_features)
        subscription(self, SensorWindow, topics.SENSOR_WINDOW, self._on_window)
        subscription(self, JointState, topics.JOINT_STATES, self._on_joints)
        subscription(self, PoseStamped, topics.POSE, self._on_pose)
        self._chunk_pub = publisher(self, ActionChunk, topics.ACTION_CHUNK)
        self._request_pub = (publisher(self, Header, topics.FEATURE_REQUEST)
                             if self._sync else None)
        self._monitor = NodeMonitor(self, self._report, status_line=self._status_line)

        meta = policy.meta
        label = 'UNTRAINED (random weights, actions are meaningless)' if meta.untrained \
            else 'trained'
        self.get_logger().info(
            f'checkpoint {cfg.checkpoint}: {label}, head {meta.model.head} ({policy.steps} '
            f'steps), contract {meta.contract_digest} {meta.feature_shape}, {cfg.mode} mode at '
            f'{cfg.rate_hz} Hz ({cfg.scheduler})')
        if meta.untrained:
            self.get_logger().warning('UNTRAINED action-expert checkpoint: never drive a '
                                      'real robot')
        if cfg.realtime_priority > 0:
            why_not = set_fifo_priority(cfg.realtime_priority)
            self.get_logger().info(f'threads run under SCHED_FIFO {cfg.realtime_priority}'
                                   if why_not is None else f'realtime_priority not granted '
                                   f'({why_not}); the loop runs at normal priority')
        self._ticker = DeadlineTicker(cfg.rate_hz)
        # a timer tick may block on sync-mode features: it needs callbacks running beside it
        self.needs_parallel_callbacks = cfg.scheduler == 'timer'
        self._thread = None
        if cfg.scheduler == 'thread':
            self._thread = threading.Thread(target=self._loop, name='action_expert_loop',
                                            daemon=True)
            self._thread.start()
        else:
            self.create_timer(1.0 / cfg.rate_hz, self.tick,
                              callback_group=MutuallyExclusiveCallbackGroup())

    # --- inputs: store the newest of each -------------------------------------------------

    def _on_features(self, msg: VLFeatures) -> None:
        features = self._convert(conv.vl_features_from_msg, msg, 'bad_features')
        if features is not None:
            with self._features_arrived:
                self._features = features
                self._feature_arrivals += 1
                self._features_arrived.notify_all()

    def _on_window(self, msg: SensorWindow) -> None:
        window = self._convert(conv.sensor_window_from_msg, msg, 'bad_sensor_window')
        if window is not None:
            with self._lock:
                self._window = window

    def _on_joints(self, msg: JointState) -> None:
        with self._lock:
            self._joints = msg

    def _on_pose(self, msg: PoseStamped) -> None:
        with self._lock:
            self._pose = msg

    def _convert(self, reader, msg, cause: str):
        try:
            return reader(msg)
        except conv.ConversionError as exc:
            self._runner.refuse(cause, str(exc))
            self.get_logger().warning(f'{cause}: {exc}', throttle_duration_sec=2.0)
            return None

    # --- ticks ----------------------------------------------------------------------------

    def _loop(self) -> None:
        while self._ticker.wait():
            try:
                self.tick()
            except Exception as exc:  # unexpected: make it loud, then let it propagate
                self._failed = f'{type(exc).__name__}: {exc}'
                self.get_logger().fatal(f'action loop stopped by an unexpected error: '
                                        f'{self._failed}')
                raise
            self._lateness_ms.add(self._ticker.last_lateness_s * 1e3)

    def tick(self, now_s: float | None = None) -> TickResult:
        """Run one tick on the newest inputs at `now_s` (default: the node's clock)."""
        if self._sync and not self._request_features():
            return self._refused(self._runner.refuse(
                SYNC_TIMEOUT, f'no features within sync_timeout_s {self._config.sync_timeout_s}'
                ' s of the request'))
        now_s = self._now_s() if now_s is None else now_s
        with self._lock:
            features, window = self._features, self._window
            joints, pose = self._joints, self._pose
        robot = (conv.robot_state_from_msgs(joints, pose)
                 if joints is not None and pose is not None else None)
        result = self._runner.tick(features, window, robot, now_s)
        if not result.published:
            return self._refused(result)
        self._chunk_pub.publish(conv.action_chunk_to_msg(result.chunk))
        self._rate.tick(time.monotonic())
        return result

    def _refused(self, result: TickResult) -> TickResult:
        d = result.decision
        self.get_logger().warning(f'no action chunk: {d.reason}: {d.detail}',
                                  throttle_duration_sec=2.0)
        return result

    def _request_features(self) -> bool:
        """Sync mode: ask the VLM for features now and wait for them (bounded)."""
        with self._lock:
            arrivals = self._feature_arrivals
        header = Header()
        header.stamp = conv.time_to_msg(self._now_s())
        header.frame_id = str(self._runner.stats.published + 1)
        self._request_pub.publish(header)
        with self._features_arrived:
            return self._features_arrived.wait_for(
                lambda: self._feature_arrivals > arrivals or self._ticker.stopped,
                timeout=self._config.sync_timeout_s) and not self._ticker.stopped

    def _now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # --- monitoring -----------------------------------------------------------------------

    def _report(self) -> tuple[HealthReport, NodeStatsData]:
        stats, cfg = self._runner.stats, self._config
        rate = self._rate.rate_hz(time.monotonic())
        report = expert_health(stats, self._published_at_report, rate, cfg.rate_hz,
                               self._failed)
        self._published_at_report = stats.published
        meta = self._runner.policy.meta
        report.values = {
            'rate_hz': rate, 'mode': cfg.mode, **stats.values(),
            'tick_lateness_ms_p99': self._lateness_ms.summary()['p99'],
            'overruns': self._ticker.overruns, 'untrained': meta.untrained,
            'contract': meta.contract_digest}
        latency = stats.inference_ms.summary()
        return report, NodeStatsData(
            stamp_s=self._now_s(), node=self.get_name(), rate_hz=rate,
            latency_mean_ms=latency['mean'], latency_p99_ms=latency['p99'],
            input_age_s=stats.feature_age_s.summary()['mean'], published=stats.published,
            dropped=stats.refused.total())

    def _status_line(self) -> str:
        stats = self._runner.stats
        refused = stats.refused.as_dict()
        line = (f'Actions: {stats.published} | rate {self._rate.rate_hz(time.monotonic()):.1f} '
                f'Hz | avg {stats.inference_ms.summary()["mean"]:.1f} ms | reuse avg '
                f'{stats.chunks_per_features.summary()["mean"]:.1f} | feature age avg '
                f'{stats.feature_age_s.summary()["mean"]:.2f} s')
        if refused:
            line += ' | refused ' + ', '.join(f'{k}={v}' for k, v in sorted(refused.items()))
        return line

    def destroy_node(self) -> None:
        ticker = getattr(self, '_ticker', None)   # absent when __init__ failed half-way
        if ticker is not None:
            ticker.stop()
            with self._features_arrived:
                self._features_arrived.notify_all()
        thread = getattr(self, '_thread', None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
        super().destroy_node()


def main(args=None) -> int:
    # subscriptions, the monitor and (scheduler: timer) the tick: three callback groups
    return run_node(ActionExpertNode, args, threads=3)


if __name__ == '__main__':
    sys.exit(main())
