"""action_expert: the 10 Hz action loop of the dual-rate VLA policy.

Subscribes (newest kept; QoS from core/topics.py):
    vla/features         vla_insertion/VLFeatures
    sensor/window        vla_insertion/SensorWindow
    robot/joint_states   sensor_msgs/JointState [rad] and `gripper` [0..1], or joint_states
    robot/pose           geometry_msgs/PoseStamped
    vla/committed_prefix vla_insertion/ActionChunk   the executor's committed actions (prefix)
    vla/feature_contract std_msgs/String (JSON)      the VLM's: a mismatch names what differs
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
launch file drives it with lifecycle transitions instead.

Subscriptions convert each message into `core.expert.inputs.LatestInputs`; each tick hands the
newest to `core.expert.runner.ExpertRunner` (staleness rules, policy, stamps), which offline
evaluation and training tick too. `scheduler: thread` ticks on absolute deadlines
(core.ticker.DeadlineTicker); `scheduler: timer` uses an rclpy timer (it follows /clock with
use_sim_time). Sync mode requests features per step and waits at most sync_timeout_s.
"""
from __future__ import annotations

import functools
import sys
import threading

from geometry_msgs.msg import PoseStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from std_msgs.msg import Header, String

from vla_insertion import conversions as conv
from vla_insertion.core import topics
from vla_insertion.core.config import ConfigError, ExpertConfig
from vla_insertion.core.data import NodeStatsData
from vla_insertion.core.expert.inputs import LatestInputs, put_converted, ROBOT, tick_newest
from vla_insertion.core.expert.live import (
    apply_live, ExpertDiagnostics, load_runner, run_ticks)
from vla_insertion.core.expert.runner import ExpertRunner, TickResult
from vla_insertion.core.expert.staleness import SYNC_TIMEOUT
from vla_insertion.core.health import HealthReport
from vla_insertion.core.orchestration.processes import set_fifo_priority
from vla_insertion.core.ticker import DeadlineTicker
from vla_insertion.msg import ActionChunk, SensorWindow, VLFeatures
from vla_insertion.ros.lifecycle import ManagedNode
from vla_insertion.ros.monitoring import NodeMonitor
from vla_insertion.ros.parameters import declare_config
from vla_insertion.ros.qos import lifecycle_publisher, subscription
from vla_insertion.ros.ros2_control import joint_state_source
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
        self._inputs = LatestInputs()  # written by the subscriptions, read by the tick
        self._diagnostics = ExpertDiagnostics()
        self._priority_set = False
        self._runner: ExpertRunner | None = None   # configured: checkpoint loaded
        self._ticker: DeadlineTicker | None = None  # active: the loop runs
        self._thread = self._timer = None
        self._topics: list = []        # subscriptions made at configure
        self._chunk_pub = self._request_pub = None
        self._monitor = NodeMonitor(self, self._report, status_line=self._status_line)

    # --- lifecycle: configure loads, activate ticks, deactivate stops, cleanup frees ------

    def _configure(self) -> None:
        cfg = self._config
        if cfg.scheduler == 'timer' and not self.needs_parallel_callbacks:
            raise ConfigError('scheduler timer needs a restart of the node (its executor is '
                              'chosen at start-up with the scheduler then set)')
        self._runner = load_runner(cfg)   # ConfigError: configure fails, saying how to fix it
        self._sync, policy = cfg.mode == 'sync', self._runner.policy
        self._diagnostics.new_checkpoint(self._runner)   # statistics of this checkpoint only
        inputs = self._inputs
        self._topics = [subscription(self, String, topics.FEATURE_CONTRACT, self._on_contract)]
        for msg_type, topic, put, read in (
                (VLFeatures, topics.FEATURES, inputs.put_features, conv.vl_features_from_msg),
                (SensorWindow, topics.SENSOR_WINDOW, inputs.put_window,
                 conv.sensor_window_from_msg),
                joint_state_source(cfg, inputs.put_joints),   # robot_bridge's or ros2_control's
                (PoseStamped, topics.POSE, inputs.put_pose, conv.pose_from_msg),
                (ActionChunk, topics.COMMITTED_PREFIX, inputs.put_prefix,
                 conv.action_chunk_from_msg)):
            self._topics.append(subscription(self, msg_type, topic,
                                             functools.partial(put_converted, put, read)))
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
        self._diagnostics.failed = ''
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
            self._inputs.wake()       # a sync-mode tick waiting for features
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        timer, self._timer = self._timer, None
        if timer is not None:
            self.destroy_timer(timer)

    def _cleanup(self) -> None:
        for entity in self._topics:
            self.destroy_subscription(entity)
        for pub in (self._chunk_pub, self._request_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self._topics, self._chunk_pub, self._request_pub = [], None, None
        self._inputs.clear()
        self._runner = None

    def _apply(self, config: ExpertConfig) -> None:
        """Take a parameter change: live ones at once, the others at the next configure."""
        old, self._config = self._config, config
        if self._runner is None:
            return
        apply_live(self._runner, old, config)
        if config.rate_hz != old.rate_hz and self._ticker is not None:
            self._deactivate()        # the loop restarts on the new grid
            self._activate()

    # --- inputs: converted at the edge, the newest kept by LatestInputs --------------------

    def _on_contract(self, msg: String) -> None:
        try:
            error = self._diagnostics.contract_announced(msg.data, self._runner)
        except ConfigError as exc:
            self.get_logger().warning(f'bad vla/feature_contract: {exc}')
            return
        if error:
            self.get_logger().error(error)

    # --- ticks ----------------------------------------------------------------------------

    def _loop(self, ticker: DeadlineTicker) -> None:
        run_ticks(ticker, self.tick, self._diagnostics, self.get_logger().fatal, 'action loop')

    def tick(self, now_s: float | None = None) -> TickResult:
        """Run one tick on the newest inputs at `now_s` (default: the node's clock)."""
        if self._sync and not self._request_features():
            return self._refused(self._runner.refuse(
                SYNC_TIMEOUT, f'no features within sync_timeout_s {self._config.sync_timeout_s}'
                ' s of the request'))
        now_s = self._now_s() if now_s is None else now_s
        result, inputs = tick_newest(self._runner, self._inputs, now_s)
        for stream, detail in inputs.malformed:
            self.get_logger().warning(f'bad {"robot state" if stream == ROBOT else stream}: '
                                      f'{detail}', throttle_duration_sec=2.0)
        if not result.published:
            return self._refused(result)
        self._chunk_pub.publish(conv.action_chunk_to_msg(result.chunk))
        self._diagnostics.published()
        return result

    def _refused(self, result: TickResult) -> TickResult:
        self.get_logger().warning(self._diagnostics.explain(result.decision),
                                  throttle_duration_sec=2.0)
        return result

    def _request_features(self) -> bool:
        """Sync mode: ask the VLM for features now and wait for them (bounded)."""
        arrivals = self._inputs.feature_arrivals
        self._request_pub.publish(Header(stamp=conv.time_to_msg(self._now_s()),
                                         frame_id=str(self._runner.stats.published + 1)))
        ticker = self._ticker        # None once deactivated (a timer tick may still be here)
        return self._inputs.wait_for_features(
            arrivals, self._config.sync_timeout_s,
            stopped=lambda: ticker is None or ticker.stopped)

    def _now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # --- monitoring -----------------------------------------------------------------------

    def _report(self) -> tuple[HealthReport, NodeStatsData]:
        cfg, ticker = self._config, self._ticker
        return self._diagnostics.report(
            self._runner, self.lifecycle_state, cfg.mode, cfg.rate_hz, cfg.checkpoint,
            ticker.overruns if ticker is not None else 0, self._now_s())

    def _status_line(self) -> str:
        return self._diagnostics.status_line(self._runner, self.lifecycle_state)


def main(args=None) -> int:
    # subscriptions, the monitor and (scheduler: timer) the tick: three callback groups
    return run_node(ActionExpertNode, args, threads=3)


if __name__ == '__main__':
    sys.exit(main())
