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
Parameters: the fields of core.config.ExpertConfig. Live (applied at the next tick): rate_hz,
the staleness limits, sync_timeout_s, flow_steps. The others (checkpoint, device, mode, ...)
change while the node is unconfigured and are used at the next configure.

A managed (lifecycle) node: configure loads the checkpoint and creates the topics, activate
starts the loop, deactivate stops it, cleanup frees the model, so a checkpoint is swapped
without restarting the graph. `autostart` (default true) drives it to active at start; the
launch file drives it with lifecycle transitions instead. It also reads the VLM's contract on
vla/feature_contract to name what differs when the features' contract is not the checkpoint's.

Subscriptions only store the newest message of each stream. Each tick converts them and hands
them to `core.expert.runner.ExpertRunner` (staleness rules, policy, stamps), which offline
evaluation and training tick too. `scheduler: thread` ticks on absolute deadlines
(core.ticker.DeadlineTicker); `scheduler: timer` uses an rclpy timer (it follows /clock with
use_sim_time). Sync mode requests features per step and waits at most sync_timeout_s.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
import sys
import threading
import time

from geometry_msgs.msg import PoseStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from sensor_msgs.msg import JointState
from std_msgs.msg import Header, String
import torch

from vla_insertion import conversions as conv
from vla_insertion.core import topics
from vla_insertion.core.config import ConfigError, ExpertConfig
from vla_insertion.core.data import MODE_ASYNC, MODE_SYNC, NodeStatsData
from vla_insertion.core.executor.merge import align_prefix
from vla_insertion.core.expert.capture import StampedHistory
from vla_insertion.core.expert.checkpoint import CheckpointError, load_checkpoint
from vla_insertion.core.expert.policy import ExpertPolicy
from vla_insertion.core.expert.runner import expert_health, ExpertRunner, TickResult
from vla_insertion.core.expert.staleness import CONTRACT_MISMATCH, StalenessLimits, SYNC_TIMEOUT
from vla_insertion.core.feature_contract import describe_mismatch, FeatureContract
from vla_insertion.core.health import HealthReport, LatencyStats, RateMeter
from vla_insertion.core.orchestration.processes import set_fifo_priority
from vla_insertion.core.ticker import DeadlineTicker
from vla_insertion.msg import ActionChunk, SensorWindow, VLFeatures
from vla_insertion.ros.lifecycle import ManagedNode
from vla_insertion.ros.monitoring import NodeMonitor
from vla_insertion.ros.parameters import declare_config
from vla_insertion.ros.qos import lifecycle_publisher, subscription
from vla_insertion.ros.run import run_node

# Every torch op releases the GIL and takes it back; with the default 5 ms switch interval a busy
# executor thread can hold it that long per op, turning a 3 ms forward into tens of ms.
SWITCH_INTERVAL_S = 0.0005


class ActionExpertNode(ManagedNode):
    """Turn the newest features, sensor window and robot state into action chunks at rate_hz."""

    def __init__(self, **node_kwargs) -> None:
        super().__init__('action_expert', **node_kwargs)
        self._config = declare_config(self, ExpertConfig, on_change=self._apply,
                                      reconfigurable=self.unconfigured)
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))  # process-wide
        # the executor is chosen once, at start: a timer tick may block on sync-mode
        # features, so it needs callbacks running beside it
        self.needs_parallel_callbacks = self._config.scheduler == 'timer'

        # the newest input of each stream, written by the subscriptions, read by the tick
        self._lock = threading.Lock()
        self._features_arrived = threading.Condition(self._lock)
        self._inputs = dict.fromkeys(('features', 'window', 'joints', 'pose', 'prefix'))
        # every joint state and pose of the last seconds: the robot at the features' capture
        self._received = {name: StampedHistory(lambda m: conv.time_from_msg(m.header.stamp))
                          for name in ('joints', 'pose')}
        self._feature_arrivals = 0
        self._rate = RateMeter(window_s=5.0)
        self._lateness_ms = LatencyStats(maxlen=600)  # tick start after its deadline
        self._published_at_report = 0
        self._failed = ''
        self._vlm_contract: FeatureContract | None = None  # from vla/feature_contract
        self._mismatch = ''            # what differs between it and the checkpoint's
        self._priority_set = False
        self._runner: ExpertRunner | None = None   # configured: checkpoint loaded
        self._ticker: DeadlineTicker | None = None  # active: the loop runs
        self._thread = None
        self._timer = None
        self._topics: list = []        # subscriptions and publishers made at configure
        self._monitor = NodeMonitor(self, self._report, status_line=self._status_line)

    # --- lifecycle: configure loads, activate ticks, deactivate stops, cleanup frees ------

    def _configure(self) -> None:
        cfg = self._config
        if cfg.scheduler == 'timer' and not self.needs_parallel_callbacks:
            raise ConfigError('scheduler timer needs a restart of the node (its executor is '
                              'chosen at start-up with the scheduler then set)')
        if cfg.torch_threads > 0:
            torch.set_num_threads(cfg.torch_threads)
        try:
            checkpoint = load_checkpoint(cfg.checkpoint, device=cfg.device)
        except CheckpointError as exc:
            where = ('' if Path(cfg.checkpoint).is_absolute() else
                     f' (relative to the working directory {os.getcwd()})')
            raise ConfigError(f'checkpoint: {exc}{where}; pass checkpoint:=<folder> to the '
                              'launch file or -p checkpoint:=<folder>') from None
        policy = ExpertPolicy(checkpoint, device=cfg.device, steps=cfg.flow_steps or None,
                              seed=None if cfg.seed < 0 else cfg.seed, precision=cfg.precision)
        policy.warm_up()
        self._sync = cfg.mode == 'sync'
        self._runner = ExpertRunner(policy, StalenessLimits.from_config(cfg),
                                    MODE_SYNC if self._sync else MODE_ASYNC)
        self._rate = RateMeter(window_s=5.0)     # statistics of this checkpoint only
        self._published_at_report = 0
        self._mismatch = self._describe_mismatch()
        self._topics = [subscription(self, VLFeatures, topics.FEATURES, self._on_features),
                        subscription(self, String, topics.FEATURE_CONTRACT, self._on_contract)]
        for name, msg_type, topic in (('window', SensorWindow, topics.SENSOR_WINDOW),
                                      ('joints', JointState, topics.JOINT_STATES),
                                      ('pose', PoseStamped, topics.POSE),
                                      ('prefix', ActionChunk, topics.COMMITTED_PREFIX)):
            self._topics.append(subscription(self, msg_type, topic,
                                             functools.partial(self._store, name)))
        self._chunk_pub = lifecycle_publisher(self, ActionChunk, topics.ACTION_CHUNK)
        self._request_pub = (lifecycle_publisher(self, Header, topics.FEATURE_REQUEST)
                             if self._sync else None)
        self.get_logger().info(f'checkpoint {cfg.checkpoint}: {policy.describe()}, {cfg.mode} '
                               f'mode at {cfg.rate_hz} Hz ({cfg.scheduler})')
        if policy.meta.untrained:
            self.get_logger().warning('UNTRAINED action-expert checkpoint: never drive a '
                                      'real robot')
        if cfg.realtime_priority > 0 and not self._priority_set:
            why_not = set_fifo_priority(cfg.realtime_priority)
            self._priority_set = why_not is None
            self.get_logger().info(f'threads run under SCHED_FIFO {cfg.realtime_priority}'
                                   if why_not is None else f'realtime_priority not granted '
                                   f'({why_not}); the loop runs at normal priority')

    def _activate(self) -> None:
        cfg = self._config
        self._ticker = DeadlineTicker(cfg.rate_hz)
        self._failed = ''
        if cfg.scheduler == 'thread':
            self._thread = threading.Thread(target=self._loop, args=(self._ticker,),
                                            name='action_expert_loop', daemon=True)
            self._thread.start()
        else:
            self._timer = self.create_timer(1.0 / cfg.rate_hz, self.tick,
                                            callback_group=MutuallyExclusiveCallbackGroup())

    def _deactivate(self) -> None:
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.stop()
            with self._features_arrived:
                self._features_arrived.notify_all()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        timer, self._timer = self._timer, None
        if timer is not None:
            self.destroy_timer(timer)

    def _cleanup(self) -> None:
        for entity in self._topics:
            self.destroy_subscription(entity)
        for pub in (getattr(self, '_chunk_pub', None), getattr(self, '_request_pub', None)):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self._topics, self._chunk_pub, self._request_pub = [], None, None
        with self._lock:
            self._inputs = dict.fromkeys(self._inputs)
        for history in self._received.values():
            history.clear()
        self._runner = None

    def _apply(self, config: ExpertConfig) -> None:
        """Take a parameter change: live ones at once, the others at the next configure."""
        old, self._config = self._config, config
        runner = self._runner
        if runner is None:
            return
        limits = StalenessLimits.from_config(config)
        if limits != runner.limits:
            runner.limits = limits
        if config.flow_steps != old.flow_steps:
            runner.policy.set_steps(config.flow_steps or None)
        if config.rate_hz != old.rate_hz and self._ticker is not None:
            self._deactivate()        # the loop restarts on the new grid
            self._activate()

    # --- inputs: store the newest of each (converted at the tick) -----------------------

    def _on_features(self, msg: VLFeatures) -> None:
        with self._features_arrived:
            self._inputs['features'] = msg
            self._feature_arrivals += 1
            self._features_arrived.notify_all()

    def _store(self, name: str, msg) -> None:
        with self._lock:
            self._inputs[name] = msg
        if name in self._received:
            self._received[name].add(msg)

    def _on_contract(self, msg: String) -> None:
        try:
            contract = FeatureContract.from_json(msg.data)
        except ConfigError as exc:
            self.get_logger().warning(f'bad vla/feature_contract: {exc}')
            return
        self._vlm_contract = contract
        self._mismatch = self._describe_mismatch()
        if self._mismatch:
            self.get_logger().error(f'{self._mismatch}: every feature set will be refused '
                                    f'({CONTRACT_MISMATCH}); run the VLM as the checkpoint was '
                                    'trained, or use a checkpoint trained on these features')

    def _describe_mismatch(self) -> str:
        """Return what differs between the VLM's published contract and the checkpoint's."""
        runner, contract = self._runner, self._vlm_contract
        if runner is None or contract is None or \
                contract.digest == runner.policy.meta.contract_digest:
            return ''
        return describe_mismatch(runner.policy.meta.contract, contract)

    def _newest(self, now_s: float) -> tuple:
        """Return (features, window, robot, capture, prefix, bad) of the newest messages.

        `capture` is the robot when the features' views were taken: the newest joint state and
        pose received at or before their stamp, combined as a recording combines them. The
        prefix is what the chunk executor has committed (merge = prefix), resampled to actions
        applying from now_s; a flow head continues it, a regression head ignores it. `bad`:
        the refusal of the first malformed features, window or robot message (the tick then
        publishes nothing and counts only that), else None; a malformed prefix is counted and
        left out.
        """
        with self._lock:
            msgs = dict(self._inputs)
        data, bad = [], None
        for name, read in (('features', conv.vl_features_from_msg),
                           ('window', conv.sensor_window_from_msg),
                           ('prefix', conv.action_chunk_from_msg)):
            try:
                data.append(read(msgs[name]) if msgs[name] is not None else None)
            except conv.ConversionError as exc:
                refusal = self._runner.refuse(f'bad_{name}', str(exc))
                bad = bad or (refusal if name != 'prefix' else None)
                self.get_logger().warning(f'bad {name}: {exc}', throttle_duration_sec=2.0)
                data.append(None)
        features, window, committed = data
        robot = capture = None
        try:
            if msgs['joints'] is not None and msgs['pose'] is not None:
                robot = conv.robot_state_from_msgs(msgs['joints'], msgs['pose'])
            if features is not None:
                joints, pose = (self._received[n].at(features.stamp_s) for n in ('joints', 'pose'))
                if joints is not None and pose is not None:
                    capture = conv.robot_state_from_msgs(joints, pose)
        except ValueError as exc:      # e.g. fewer positions than joint names
            bad = bad or self._runner.refuse('bad_robot', str(exc))
            self.get_logger().warning(f'bad robot state: {exc}', throttle_duration_sec=2.0)
        prefix = None if committed is None else align_prefix(
            committed.stamp_s, committed.actions, committed.dt_s, now_s)
        return features, window, robot, capture, prefix, bad

    # --- ticks ----------------------------------------------------------------------------

    def _loop(self, ticker: DeadlineTicker) -> None:
        while ticker.wait():
            try:
                self.tick()
            except Exception as exc:  # unexpected: make it loud, then let it propagate
                self._failed = f'{type(exc).__name__}: {exc}'
                self.get_logger().fatal(f'action loop stopped by an unexpected error: '
                                        f'{self._failed}')
                raise
            self._lateness_ms.add(ticker.last_lateness_s * 1e3)

    def tick(self, now_s: float | None = None) -> TickResult:
        """Run one tick on the newest inputs at `now_s` (default: the node's clock)."""
        if self._sync and not self._request_features():
            return self._refused(self._runner.refuse(
                SYNC_TIMEOUT, f'no features within sync_timeout_s {self._config.sync_timeout_s}'
                ' s of the request'))
        now_s = self._now_s() if now_s is None else now_s
        features, window, robot, capture, prefix, bad = self._newest(now_s)
        if bad is not None:
            return self._refused(bad)
        result = self._runner.tick(features, window, robot, now_s, prefix=prefix,
                                   capture_robot=capture)
        if not result.published:
            return self._refused(result)
        self._chunk_pub.publish(conv.action_chunk_to_msg(result.chunk))
        self._rate.tick(time.monotonic())
        return result

    def _refused(self, result: TickResult) -> TickResult:
        d = result.decision
        why = self._why(d.reason, d.detail)
        self.get_logger().warning(f'no action chunk: {d.reason}: {why}',
                                  throttle_duration_sec=2.0)
        return result

    def _why(self, reason: str, detail: str) -> str:
        """Return a refusal's detail, naming the fields of a contract mismatch when known."""
        mismatch = self._mismatch
        if reason == CONTRACT_MISMATCH and mismatch and self._vlm_contract is not None \
                and self._vlm_contract.digest in detail:
            return f'{detail}: {mismatch}'
        return detail

    def _request_features(self) -> bool:
        """Sync mode: ask the VLM for features now and wait for them (bounded)."""
        with self._lock:
            arrivals = self._feature_arrivals
        header = Header()
        header.stamp = conv.time_to_msg(self._now_s())
        header.frame_id = str(self._runner.stats.published + 1)
        self._request_pub.publish(header)
        ticker = self._ticker        # None once deactivated (a timer tick may still be here)

        def stopped() -> bool:
            return ticker is None or ticker.stopped
        with self._features_arrived:
            return self._features_arrived.wait_for(
                lambda: self._feature_arrivals > arrivals or stopped(),
                timeout=self._config.sync_timeout_s) and not stopped()

    def _now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # --- monitoring -----------------------------------------------------------------------

    def _report(self) -> tuple[HealthReport, NodeStatsData]:
        runner, cfg, state = self._runner, self._config, self.lifecycle_state
        rate = self._rate.rate_hz(time.monotonic())
        if runner is None:
            report = HealthReport(values={'lifecycle_state': state, 'rate_hz': rate})
            report.escalate('WARN', f'{state}: no checkpoint loaded (configure loads '
                                    f'{cfg.checkpoint})')
            return report, NodeStatsData(stamp_s=self._now_s(), node='')
        stats = runner.stats
        if state == 'active':
            report = expert_health(stats, self._published_at_report, rate, cfg.rate_hz,
                                   self._failed)
            if self._mismatch and CONTRACT_MISMATCH in report.message:
                report.message += f' ({self._mismatch})'
        else:
            report = HealthReport()
            report.escalate('WARN', f'{state}: not ticking (activate starts the loop)')
        self._published_at_report = stats.published
        meta = runner.policy.meta
        ticker = self._ticker
        report.values = {
            'lifecycle_state': state, 'rate_hz': rate, 'mode': cfg.mode, **stats.values(),
            'tick_lateness_ms_p99': self._lateness_ms.summary()['p99'],
            'overruns': ticker.overruns if ticker is not None else 0,
            'untrained': meta.untrained, 'contract': meta.contract_digest,
            'vlm_contract': self._vlm_contract.digest if self._vlm_contract else '',
            'contract_mismatch': self._mismatch}
        return report, stats.node_stats(self._now_s(), rate)

    def _status_line(self) -> str:
        runner = self._runner
        if runner is None:
            return f'{self.lifecycle_state}: no checkpoint loaded'
        return runner.stats.status_line(self._rate.rate_hz(time.monotonic()))


def main(args=None) -> int:
    # subscriptions, the monitor and (scheduler: timer) the tick: three callback groups
    return run_node(ActionExpertNode, args, threads=3)


if __name__ == '__main__':
    sys.exit(main())
