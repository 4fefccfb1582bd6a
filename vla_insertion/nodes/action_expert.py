"""action_expert: the 10 Hz action loop of the dual-rate VLA policy.

Subscribes (newest kept; QoS from core/topics.py):
    vla/features         vla_insertion/VLFeatures
    sensor/window        vla_insertion/SensorWindow
    robot/joint_states   sensor_msgs/JointState [rad], with the `gripper` entry [0..1]
    robot/pose           geometry_msgs/PoseStamped
    vla/committed_prefix vla_insertion/ActionChunk   the executor's committed actions (prefix)
Publishes:
    vla/action_chunk     vla_insertion/ActionChunk, one per accepted tick, stamped with the tick
    vla/feature_request  std_msgs/Header, sync mode: one per step
    /diagnostics, vla/stats: rate, latency, reuse, ages, refused ticks (`drops.<reason>`)
Parameters: the fields of core.config.ExpertConfig.

Subscriptions only store the newest message of each stream. Each tick converts them and hands
them to `core.expert.runner.ExpertRunner` (staleness rules, policy, stamps), which offline
evaluation and training tick too. `scheduler: thread` ticks on absolute deadlines
(core.ticker.DeadlineTicker); `scheduler: timer` uses an rclpy timer (it follows /clock with
use_sim_time). Sync mode requests features per step and waits at most sync_timeout_s.
"""
from __future__ import annotations

import functools
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
from vla_insertion.core.executor.merge import align_prefix
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
                              seed=None if cfg.seed < 0 else cfg.seed, precision=cfg.precision)
        policy.warm_up()
        self._sync = cfg.mode == 'sync'
        self._runner = ExpertRunner(policy, StalenessLimits.from_config(cfg),
                                    MODE_SYNC if self._sync else MODE_ASYNC)

        # the newest input of each stream, written by the subscriptions, read by the tick
        self._lock = threading.Lock()
        self._features_arrived = threading.Condition(self._lock)
        self._inputs = dict.fromkeys(('features', 'window', 'joints', 'pose', 'prefix'))
        self._feature_arrivals = 0
        self._rate = RateMeter(window_s=5.0)
        self._lateness_ms = LatencyStats(maxlen=600)  # tick start after its deadline
        self._published_at_report = 0
        self._failed = ''

        subscription(self, VLFeatures, topics.FEATURES, self._on_features)
        for name, msg_type, topic in (('window', SensorWindow, topics.SENSOR_WINDOW),
                                      ('joints', JointState, topics.JOINT_STATES),
                                      ('pose', PoseStamped, topics.POSE),
                                      ('prefix', ActionChunk, topics.COMMITTED_PREFIX)):
            subscription(self, msg_type, topic, functools.partial(self._store, name))
        self._chunk_pub = publisher(self, ActionChunk, topics.ACTION_CHUNK)
        self._request_pub = (publisher(self, Header, topics.FEATURE_REQUEST)
                             if self._sync else None)
        self._monitor = NodeMonitor(self, self._report, status_line=self._status_line)

        self.get_logger().info(f'checkpoint {cfg.checkpoint}: {policy.describe()}, {cfg.mode} '
                               f'mode at {cfg.rate_hz} Hz ({cfg.scheduler})')
        if policy.meta.untrained:
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

    # --- inputs: store the newest of each (converted at the tick) -----------------------

    def _on_features(self, msg: VLFeatures) -> None:
        with self._features_arrived:
            self._inputs['features'] = msg
            self._feature_arrivals += 1
            self._features_arrived.notify_all()

    def _store(self, name: str, msg) -> None:
        with self._lock:
            self._inputs[name] = msg

    def _newest(self, now_s: float) -> tuple:
        """Return (features, window, robot, prefix) of the newest messages (None when bad).

        The prefix is what the chunk executor has committed (merge = prefix), resampled to
        actions applying from now_s; a flow head continues it, a regression head ignores it.
        """
        with self._lock:
            msgs = dict(self._inputs)
        data = []
        for name, read in (('features', conv.vl_features_from_msg),
                           ('window', conv.sensor_window_from_msg),
                           ('prefix', conv.action_chunk_from_msg)):
            try:
                data.append(read(msgs[name]) if msgs[name] is not None else None)
            except conv.ConversionError as exc:
                self._runner.refuse(f'bad_{name}', str(exc))
                self.get_logger().warning(f'bad {name}: {exc}', throttle_duration_sec=2.0)
                data.append(None)
        features, window, committed = data
        joints, pose = msgs['joints'], msgs['pose']
        robot = (conv.robot_state_from_msgs(joints, pose)
                 if joints is not None and pose is not None else None)
        prefix = None if committed is None else align_prefix(
            committed.stamp_s, committed.actions, committed.dt_s, now_s)
        return features, window, robot, prefix

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
        features, window, robot, prefix = self._newest(now_s)
        result = self._runner.tick(features, window, robot, now_s, prefix=prefix)
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
        return report, stats.node_stats(self._now_s(), rate)

    def _status_line(self) -> str:
        return self._runner.stats.status_line(self._rate.rate_hz(time.monotonic()))

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
