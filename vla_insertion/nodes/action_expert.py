"""action_expert: the 10 Hz action loop of the dual-rate VLA policy.

Subscribes (relative names):
    vla/features         vla_insertion/VLFeatures      LATEST_QOS  newest kept
    sensor/window        vla_insertion/SensorWindow    WINDOW_QOS  newest kept
    robot/joint_states   sensor_msgs/JointState [rad]  STATE_QOS   newest kept
    robot/pose           geometry_msgs/PoseStamped     STATE_QOS   newest kept
Publishes:
    vla/action_chunk     vla_insertion/ActionChunk     STATE_QOS   one per accepted tick
    vla/feature_request  std_msgs/Header               LATEST_QOS  sync mode: one per step
    /diagnostics, vla/stats (NodeMonitor): rate, latency, reuse, ages, refused ticks by reason
Parameters: the fields of core.config.ExpertConfig (checkpoint, rate_hz, max_feature_age_s,
max_sensor_age_s, max_robot_age_s, require_complete_window, device, torch_threads, mode,
sync_timeout_s, flow_steps, seed, scheduler, realtime_priority).

Subscriptions only store the newest message of each input under a lock. Each tick takes the
newest of each, applies the staleness rules (core.expert.staleness) and, when they pass, runs the
policy under torch.inference_mode() and publishes the chunk stamped with the tick time. A refused
tick publishes nothing; its reason is counted (`drops.<reason>` in /diagnostics) with a throttled
warning. In async mode a tick never waits for the VLM.

Scheduling: `scheduler: thread` (default) runs the ticks in a dedicated thread that sleeps until
absolute deadlines start + k / rate_hz on the steady clock, so the rate has no drift and a late
tick does not delay the next; missed deadlines are skipped and counted as overruns.
`scheduler: timer` uses an rclpy timer in its own MutuallyExclusiveCallbackGroup instead (it
follows the ROS clock, e.g. /clock when replaying a bag with use_sim_time).

Sync mode (`mode: sync`): each step publishes a request on vla/feature_request and waits, in the
tick's thread and at most sync_timeout_s, for features with a newer arrival than the request;
then it acts on them (ActionChunk.mode = MODE_SYNC). Other callbacks keep running meanwhile.
"""
from __future__ import annotations

import dataclasses
import math
import os
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
from vla_insertion.core.config import ConfigError, ExpertConfig
from vla_insertion.core.data import MODE_ASYNC, MODE_SYNC, NodeStatsData, RobotState
from vla_insertion.core.expert.checkpoint import CheckpointError, ContractMismatch, load_checkpoint
from vla_insertion.core.expert.policy import ExpertPolicy, ObservationError
from vla_insertion.core.expert.staleness import (
    check_inputs, CONTRACT_MISMATCH, ReuseCounter, StalenessLimits)
from vla_insertion.core.health import DropCounter, HealthReport, LatencyStats, RateMeter
from vla_insertion.core.interfaces import ExpertObservation
from vla_insertion.msg import ActionChunk, SensorWindow, VLFeatures
from vla_insertion.nodes.common import (
    declare_config, LATEST_QOS, NodeMonitor, run_node, STATE_QOS, WINDOW_QOS)

SYNC_TIMEOUT = 'sync_timeout'
SWITCH_INTERVAL_S = 0.0005
BAD_OBSERVATION = 'bad_observation'


class ActionExpertNode(Node):
    """Turn the newest features, sensor window and robot state into action chunks at rate_hz."""

    def __init__(self, **node_kwargs) -> None:
        super().__init__('action_expert', **node_kwargs)
        self._config = cfg = declare_config(self, ExpertConfig)
        if cfg.torch_threads > 0:
            torch.set_num_threads(cfg.torch_threads)
        # Every torch op releases the GIL and must take it back. With the default 5 ms switch
        # interval a busy Python thread (executor callbacks) keeps it up to 5 ms per op, which
        # turns a 3 ms forward pass into tens of ms; 0.5 ms bounds that convoy. Process-wide,
        # which is why the expert runs in a process of its own.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        try:
            checkpoint = load_checkpoint(cfg.checkpoint, device=cfg.device)
        except CheckpointError as exc:
            raise ConfigError(f'checkpoint: {exc}') from None
        self._policy = ExpertPolicy(checkpoint, device=cfg.device, steps=cfg.flow_steps or None,
                                    seed=None if cfg.seed < 0 else cfg.seed,
                                    precision=cfg.precision)
        meta = self._policy.meta
        self._warm_up()
        self._limits = StalenessLimits(cfg.max_feature_age_s, cfg.max_sensor_age_s,
                                       cfg.max_robot_age_s, cfg.require_complete_window)
        self._mode = MODE_SYNC if cfg.mode == 'sync' else MODE_ASYNC
        self._period_s = 1.0 / cfg.rate_hz

        # newest inputs, written by the subscriptions, read by the tick
        self._lock = threading.Lock()
        self._features_arrived = threading.Condition(self._lock)
        self._features = None
        self._feature_arrivals = 0
        self._window = None
        self._joints: JointState | None = None
        self._pose: PoseStamped | None = None

        # statistics
        self._sequence = 0
        self._reuse = ReuseCounter()
        self._refused = DropCounter()
        self._last_refusal = ''
        self._refusal_level = 'OK'
        self._published_at_report = 0
        self._rate = RateMeter(window_s=5.0)
        self._inference_ms = LatencyStats(maxlen=600)
        self._period_error_ms = LatencyStats(maxlen=600)
        self._reuse_values = LatencyStats(maxlen=100)
        self._chunks_per_features = LatencyStats(maxlen=50)  # chunks each feature set served
        self._last_reuse = 0
        self._feature_age_s = LatencyStats(maxlen=100)
        self._sensor_age_s = LatencyStats(maxlen=100)
        self._overruns = 0
        self._failed = ''
        self._last_tick_mono: float | None = None

        self.create_subscription(VLFeatures, 'vla/features', self._on_features, LATEST_QOS)
        self.create_subscription(SensorWindow, 'sensor/window', self._on_window, WINDOW_QOS)
        self.create_subscription(JointState, 'robot/joint_states', self._on_joints, STATE_QOS)
        self.create_subscription(PoseStamped, 'robot/pose', self._on_pose, STATE_QOS)
        self._chunk_pub = self.create_publisher(ActionChunk, 'vla/action_chunk', STATE_QOS)
        self._request_pub = (self.create_publisher(Header, 'vla/feature_request', LATEST_QOS)
                             if self._mode == MODE_SYNC else None)
        self._monitor = NodeMonitor(self, self._report, status_line=self._status_line)

        label = 'UNTRAINED (random weights, actions are meaningless)' if meta.untrained \
            else 'trained'
        self.get_logger().info(
            f'checkpoint {cfg.checkpoint}: {label}, head {meta.model.head} '
            f'({self._policy.steps} steps), contract {meta.contract_digest} '
            f'{meta.feature_shape}, {cfg.mode} mode at {cfg.rate_hz} Hz ({cfg.scheduler})')
        if meta.untrained:
            self.get_logger().warning('UNTRAINED action-expert checkpoint: never drive a '
                                      'real robot')

        self._set_realtime_priority(cfg.realtime_priority)
        self._stop = threading.Event()
        self._thread = None
        self._timer = None
        # a timer tick may block on sync-mode features: it needs callbacks running beside it
        self.needs_parallel_callbacks = cfg.scheduler == 'timer'
        if cfg.scheduler == 'thread':
            self._thread = threading.Thread(target=self._loop, name='action_expert_loop',
                                            daemon=True)
            self._thread.start()
        else:
            self._timer = self.create_timer(self._period_s, self._tick,
                                            callback_group=MutuallyExclusiveCallbackGroup())

    def _warm_up(self, runs: int = 3) -> None:
        """Run the model on zeros so lazy initialisation does not land on the first tick."""
        cfg = self._policy.meta.model
        with torch.inference_mode():
            for _ in range(runs):
                self._policy.model(torch.zeros(1, cfg.feature_tokens, cfg.feature_dim),
                                   torch.zeros(1, cfg.window_samples, cfg.sensor_channels),
                                   torch.zeros(1, cfg.state_dim), steps=self._policy.steps)

    # --- inputs: store the newest of each -------------------------------------------------

    def _on_features(self, msg: VLFeatures) -> None:
        try:
            features = conv.vl_features_from_msg(msg)
        except conv.ConversionError as exc:
            self._bad_input('bad_features', exc)
            return
        with self._features_arrived:
            self._features = features
            self._feature_arrivals += 1
            self._features_arrived.notify_all()

    def _on_window(self, msg: SensorWindow) -> None:
        try:
            window = conv.sensor_window_from_msg(msg)
        except conv.ConversionError as exc:
            self._bad_input('bad_sensor_window', exc)
            return
        with self._lock:
            self._window = window

    def _on_joints(self, msg: JointState) -> None:
        with self._lock:
            self._joints = msg

    def _on_pose(self, msg: PoseStamped) -> None:
        with self._lock:
            self._pose = msg

    def _bad_input(self, cause: str, exc: Exception) -> None:
        self._refused.count(cause)
        self.get_logger().warning(f'{cause}: {exc}', throttle_duration_sec=2.0)

    # --- scheduling -----------------------------------------------------------------------

    def _loop(self) -> None:
        """Tick at absolute deadlines start + k * period (steady clock) until stopped."""
        deadline = time.monotonic()
        while not self._stop.is_set():
            delay = deadline - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            try:
                self._tick()
            except Exception as exc:  # unexpected: make it loud, then let it propagate
                self._failed = f'{type(exc).__name__}: {exc}'
                self.get_logger().fatal(f'action loop stopped by an unexpected error: '
                                        f'{self._failed}')
                raise
            deadline += self._period_s
            late = time.monotonic() - deadline
            if late > 0:  # the tick overran one or more deadlines: skip them, keep the grid
                missed = math.floor(late / self._period_s) + 1
                self._overruns += missed
                deadline += missed * self._period_s

    def _set_realtime_priority(self, priority: int) -> None:
        """Run the process's threads under SCHED_FIFO so other processes cannot delay a tick.

        Every thread, not only the loop: a tick needs the GIL, and a normal-priority executor
        thread preempted by another process while holding it would stall the tick (priority
        inversion). Threads created later (executor, loop) inherit the policy. The process
        sleeps most of the time (~5-10% of a core). Needs CAP_SYS_NICE or an rtprio limit;
        without it the node warns and runs at normal priority.
        """
        if priority <= 0:
            return
        try:
            param = os.sched_param(priority)
            os.sched_setscheduler(0, os.SCHED_FIFO, param)
            for task in os.listdir('/proc/self/task'):
                os.sched_setscheduler(int(task), os.SCHED_FIFO, param)
            self.get_logger().info(f'threads run under SCHED_FIFO priority {priority}')
        except (AttributeError, OSError) as exc:
            self.get_logger().warning(f'realtime_priority {priority} not granted ({exc}); the '
                                      'loop runs at normal priority')

    def _now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # --- one tick -------------------------------------------------------------------------

    def _tick(self) -> None:
        mono = time.monotonic()
        if self._last_tick_mono is not None:
            self._period_error_ms.add(abs(mono - self._last_tick_mono - self._period_s) * 1e3)
        self._last_tick_mono = mono
        if self._mode == MODE_SYNC and not self._request_features():
            return
        now_s = self._now_s()
        with self._lock:
            features, window = self._features, self._window
            robot = self._robot_state()
        meta = self._policy.meta
        decision = check_inputs(features, window, robot, now_s, self._limits,
                                meta.contract_digest, meta.feature_shape)
        if not decision.publish:
            self._refuse(decision.reason, decision.detail)
            return
        try:
            chunk = self._policy.infer(ExpertObservation(features, window, robot, now_s))
        except ContractMismatch as exc:
            self._refuse(CONTRACT_MISMATCH, str(exc))
            return
        except ObservationError as exc:
            self._refuse(BAD_OBSERVATION, str(exc))
            return
        self._sequence += 1
        chunk = dataclasses.replace(chunk, sequence=self._sequence,
                                    reuse_index=self._reuse.use(features.sequence),
                                    mode=self._mode)
        self._chunk_pub.publish(conv.action_chunk_to_msg(chunk))
        self._rate.tick(time.monotonic())
        self._inference_ms.add(chunk.inference_ms)
        self._reuse_values.add(chunk.reuse_index)
        if chunk.reuse_index == 1 and self._last_reuse > 0:
            self._chunks_per_features.add(self._last_reuse)
        self._last_reuse = chunk.reuse_index
        self._feature_age_s.add(chunk.feature_age_s)
        self._sensor_age_s.add(chunk.sensor_age_s)

    def _robot_state(self) -> RobotState | None:
        """Joints and pose as one RobotState stamped with the older of the two (lock held)."""
        if self._joints is None or self._pose is None:
            return None
        joints = self._joints
        names, positions = list(joints.name), list(joints.position)
        gripper = 0.0
        for i, name in enumerate(names):
            if 'gripper' in name and i < len(positions):
                gripper = float(positions.pop(i))
                names.pop(i)
                break
        joints = JointState(header=joints.header, name=names, position=positions)
        state = conv.robot_state_from_msgs(joints, self._pose, gripper=gripper)
        pose_stamp = conv.time_from_msg(self._pose.header.stamp)
        return dataclasses.replace(state, stamp_s=min(state.stamp_s, pose_stamp))

    def _request_features(self) -> bool:
        """Sync mode: ask the VLM for features now and wait for them (bounded)."""
        with self._lock:
            arrivals = self._feature_arrivals
        header = Header()
        header.stamp = conv.time_to_msg(self._now_s())
        header.frame_id = str(self._sequence + 1)
        self._request_pub.publish(header)
        with self._features_arrived:
            fresh = self._features_arrived.wait_for(
                lambda: self._feature_arrivals > arrivals or self._stop.is_set(),
                timeout=self._config.sync_timeout_s)
        if not fresh or self._stop.is_set():
            self._refuse(SYNC_TIMEOUT, f'no features within sync_timeout_s '
                         f'{self._config.sync_timeout_s} s of the request')
            return False
        return True

    def _refuse(self, reason: str, detail: str) -> None:
        self._refused.count(reason)
        self._last_refusal = f'{reason}: {detail}'
        log = self.get_logger()
        if reason == CONTRACT_MISMATCH:
            self._refusal_level = 'ERROR'
            log.error(f'refusing VL features: {detail}', throttle_duration_sec=5.0)
        else:
            if self._refusal_level != 'ERROR':
                self._refusal_level = 'WARN'
            log.warning(f'no action chunk: {reason}: {detail}', throttle_duration_sec=2.0)

    # --- monitoring -----------------------------------------------------------------------

    def _report(self) -> tuple[HealthReport, NodeStatsData]:
        now = time.monotonic()
        rate = self._rate.rate_hz(now)
        latency = self._inference_ms.summary()
        refused = self._refused.as_dict()
        published = self._rate.count
        report = HealthReport()
        if self._failed:
            report.escalate('ERROR', f'action loop stopped: {self._failed}')
        if published == self._published_at_report and self._last_refusal:
            # nothing published since the last report: say why
            level = self._refusal_level if self._refusal_level != 'OK' else 'WARN'
            report.escalate(level, f'not publishing: {self._last_refusal}')
        elif published == self._published_at_report:
            report.escalate('WARN', 'not publishing yet')
        elif rate < 0.9 * self._config.rate_hz:
            report.escalate('WARN', f'rate {rate:.2f} Hz < rate_hz {self._config.rate_hz}')
        self._published_at_report = published
        self._refusal_level = 'OK'
        self._last_refusal = ''
        period = self._period_error_ms.summary()
        report.values = {
            'chunks': published, 'rate_hz': rate, 'mode': self._config.mode,
            'inference_ms_mean': latency['mean'], 'inference_ms_p99': latency['p99'],
            'reuse_index_mean': self._reuse_values.summary()['mean'],
            'chunks_per_features_mean': self._chunks_per_features.summary()['mean'],
            'feature_age_s_mean': self._feature_age_s.summary()['mean'],
            'sensor_age_s_mean': self._sensor_age_s.summary()['mean'],
            'period_error_ms_p99': period['p99'], 'overruns': self._overruns,
            'untrained': self._policy.meta.untrained,
            'contract': self._policy.meta.contract_digest,
            **{f'drops.{k}': v for k, v in sorted(refused.items())},
        }
        stats = NodeStatsData(
            stamp_s=self._now_s(), node='', rate_hz=rate, latency_mean_ms=latency['mean'],
            latency_p99_ms=latency['p99'], input_age_s=self._feature_age_s.summary()['mean'],
            published=published, dropped=self._refused.total())
        return report, stats

    def _status_line(self) -> str:
        latency = self._inference_ms.summary()
        refused = self._refused.as_dict()
        line = (f'Actions: {self._rate.count} | rate {self._rate.rate_hz(time.monotonic()):.1f} '
                f'Hz | avg {latency["mean"]:.1f} ms | reuse avg '
                f'{self._chunks_per_features.summary()["mean"]:.1f} | feature age avg '
                f'{self._feature_age_s.summary()["mean"]:.2f} s')
        if refused:
            line += ' | refused ' + ', '.join(f'{k}={v}' for k, v in sorted(refused.items()))
        return line

    def destroy_node(self) -> None:
        self._stop.set()
        with self._features_arrived:
            self._features_arrived.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        super().destroy_node()


def main(args=None) -> int:
    # subscriptions, the monitor and (scheduler: timer) the tick: three callback groups
    return run_node(ActionExpertNode, args, threads=3)


if __name__ == '__main__':
    sys.exit(main())
