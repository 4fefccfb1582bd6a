"""chunk_executor: action chunks -> a smooth, latency-aware, safety-gated command stream.

Subscribes (QoS from core/topics.py):
    vla/action_chunk     vla_insertion/ActionChunk      chunks of the action expert
    robot/joint_states   sensor_msgs/JointState          measured joints and gripper, or
                         ros2_control's joint_states (joint_state_source: joint_states)
    sensor/window        vla_insertion/SensorWindow      force/torque for the gate
    robot/pose           geometry_msgs/PoseStamped       the tool, for the workspace box
    safety/estop         std_msgs/Bool                   true: stop, latch fault `estop`
    safety/heartbeat     std_msgs/Bool                   the operator's deadman (deadman_timeout_s)
Publishes:
    vla/command          vla_insertion/ExecutorCommand   every control step, armed or not
    robot/joint_trajectory  trajectory_msgs/JointTrajectory  when armed, at the chunk rate,
                         and a stop's braking at once (outputs contains joint_trajectory)
    vla/committed_prefix vla_insertion/ActionChunk      merge = prefix: what is committed
    gripper/commands     std_msgs/Float64MultiArray     gripper_output: forward_command
    /diagnostics, vla/stats: state, gate.<cause>, stops.<trigger>, starvation, delays, jerk
Sends: command_v1 (docs/wire.md) to robot_ip:command_port when armed, HOLD during a stop.
Services: ~/enable (std_srvs/SetBool: arm / disarm; a refusal names its reason, also in
    /diagnostics `arming.refusal`), ~/reset_fault (std_srvs/Trigger).
Parameters: the fields of core.config.ExecutorConfig and joint_limits.<joint>.<key> in
    ros2_control's shape (read-only).

Everything that decides lives in core.executor.ChunkExecutor; this shell feeds it under a lock
and ticks it on absolute deadlines (core.ticker) in its own thread. It starts disarmed: the
commands are computed and published on vla/command for preview and nothing reaches the robot
until ~/enable is called (or start_armed is true).
"""
from __future__ import annotations

import secrets
import sys
import threading
import time

from geometry_msgs.msg import PoseStamped
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from std_msgs.msg import Bool
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from vla_insertion import conversions as conv
from vla_insertion.core import topics
from vla_insertion.core.config import ExecutorConfig
from vla_insertion.core.data import ActionChunkData, NodeStatsData
from vla_insertion.core.executor import ChunkExecutor
from vla_insertion.core.executor.command import CommandSender
from vla_insertion.core.executor.limits import limits_from_params, LimitsTable, PARAM_PREFIX
from vla_insertion.core.executor.stats import executor_health, executor_status_line
from vla_insertion.core.health import DropCounter, HealthReport, RateMeter
from vla_insertion.core.ticker import DeadlineTicker
from vla_insertion.msg import ActionChunk, ExecutorCommand, SensorWindow
from vla_insertion.ros.monitoring import NodeMonitor
from vla_insertion.ros.parameters import declare_config
from vla_insertion.ros.qos import publisher, subscription
from vla_insertion.ros.ros2_control import GripperCommand, JOINT_STATE_DROPS, JointStateInput
from vla_insertion.ros.run import run_node

# Inputs and sends this shell drops (the executor counts its own chunk rejections).
DROPS = ('bad_chunk', 'bad_sensor_window', 'send_queue_full') + JOINT_STATE_DROPS


class ChunkExecutorNode(Node):
    """Execute action chunks on the robot at control_rate_hz, behind the safety gate."""

    def __init__(self, **node_kwargs) -> None:
        super().__init__('chunk_executor', **node_kwargs)
        self._config = cfg = declare_config(self, ExecutorConfig)
        self._executor = ChunkExecutor(cfg, self._declare_limits(cfg.joint_names))
        self._lock = threading.Lock()
        self._sequence = 0
        self._drops = DropCounter(DROPS)
        self._rate = RateMeter(window_s=5.0)
        self._stop = ''                # the stop in force, to log each once

        subscription(self, ActionChunk, topics.ACTION_CHUNK, self._on_chunk)
        JointStateInput(self, cfg, self._executor.on_robot_state, self._drops, self._lock)
        subscription(self, SensorWindow, topics.SENSOR_WINDOW, self._on_window)
        subscription(self, PoseStamped, topics.POSE, self._on_pose)
        subscription(self, Bool, topics.ESTOP, self._on_estop)
        subscription(self, Bool, topics.HEARTBEAT, self._on_heartbeat)
        self._command_pub = publisher(self, ExecutorCommand, topics.COMMAND)
        self._trajectory_pub = (publisher(self, JointTrajectory, topics.JOINT_TRAJECTORY)
                                if 'joint_trajectory' in cfg.outputs else None)
        self._prefix_pub = (publisher(self, ActionChunk, topics.COMMITTED_PREFIX)
                            if cfg.merge == 'prefix' else None)
        self._gripper = GripperCommand(self, cfg)    # gripper_output: forward_command
        self.create_service(SetBool, '~/enable', self._on_enable)
        self.create_service(Trigger, '~/reset_fault', self._on_reset_fault)
        self._sender = (CommandSender(cfg, secrets.randbits(32))
                        if 'command_v1' in cfg.outputs else None)
        self._monitor = NodeMonitor(self, self._report, status_line=self._status_line)
        where = (f'command_v1 -> {self._sender.endpoint}' if self._sender is not None
                 else 'no command_v1')
        self.get_logger().info(
            f'{cfg.merge} merge at {cfg.control_rate_hz:g} Hz, outputs {list(cfg.outputs)} '
            f'({where}); ' + ('arms at the first chunk it may arm on' if cfg.start_armed else
                              'DISARMED: preview only until ~/enable'))
        if cfg.allow_untrained_vlm:
            self.get_logger().warning('allow_untrained_vlm is set: arming on features of an '
                                      'UNTRAINED VLM is allowed (sim and demo only)')
        self._ticker = DeadlineTicker(cfg.control_rate_hz)
        self._thread = threading.Thread(target=self._loop, name='executor_loop', daemon=True)
        self._thread.start()

    def _declare_limits(self, joint_names) -> LimitsTable:
        """Read joint_limits.* from the overrides (validated), declare them read-only."""
        given = {name: p.value for name, p in getattr(self, '_parameter_overrides', {}).items()
                 if name.startswith(PARAM_PREFIX + '.')}
        table = limits_from_params(given, tuple(joint_names))     # ConfigError: fatal, exit 2
        for name, value in table.to_params().items():
            self.declare_parameter(name, value, ParameterDescriptor(
                description='ros2_control joint_limits (SI units)', read_only=True))
        return table

    # --- inputs ---------------------------------------------------------------------------

    def _on_chunk(self, msg: ActionChunk) -> None:
        chunk = self._read(conv.action_chunk_from_msg, msg, 'bad_chunk')
        if chunk is not None:
            with self._lock:
                self._executor.on_chunk(chunk, self._now_s())

    def _on_window(self, msg: SensorWindow) -> None:
        window = self._read(conv.sensor_window_from_msg, msg, 'bad_sensor_window')
        if window is not None:
            with self._lock:
                self._executor.on_sensor_window(window)

    def _on_pose(self, msg: PoseStamped) -> None:
        with self._lock:
            self._executor.on_tool_pose(conv.pose_from_msg(msg))

    def _on_estop(self, msg: Bool) -> None:
        with self._lock:
            self._executor.on_estop(msg.data)
        if msg.data:
            self.get_logger().error('e-stop active: stopped, fault latched', once=True)

    def _on_heartbeat(self, msg: Bool) -> None:
        with self._lock:
            self._executor.on_heartbeat(msg.data, self._now_s())

    def _read(self, reader, msg, cause: str):
        try:
            return reader(msg)
        except conv.ConversionError as exc:
            self._drops.count(cause)
            self.get_logger().warning(f'{cause}: {exc}', throttle_duration_sec=2.0)
            return None

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response):
        with self._lock:
            ok, message = (self._executor.arm(self._now_s()) if request.data
                           else self._executor.disarm())
        response.success, response.message = ok, message
        if message != 'already armed':        # asked again: nothing new to say
            self.get_logger().warning(f'{"enable" if request.data else "disable"}: {message}')
        return response

    def _on_reset_fault(self, request: Trigger.Request, response: Trigger.Response):
        with self._lock:
            response.success, response.message = self._executor.reset_fault()
        self.get_logger().info(f'reset_fault: {response.message}')
        return response

    # --- the control loop -----------------------------------------------------------------

    def _loop(self) -> None:
        while self._ticker.wait():
            self.step()

    def step(self, now_s: float | None = None) -> None:
        """One control period: compute, send when armed or stopping, publish the preview."""
        now_s = self._now_s() if now_s is None else now_s
        with self._lock:
            command = self._executor.step(now_s)
            prefix = self._executor.committed_prefix(now_s) if self._prefix_pub else None
            # a stop's braking, or the plan at the chunk rate (a few ms to build)
            trajectory = self._executor.trajectory_update() if self._trajectory_pub else None
            delay = self._executor.last_delay_s
        self._sequence += 1
        # the robot's outputs first: a stop leaves before anything is published for plots
        sent = command.to_robot and self._send_command(command, now_s)
        self._gripper.publish(command)
        if trajectory is not None:
            self._trajectory_pub.publish(conv.joint_trajectory_to_msg(trajectory))
        if command.stop != self._stop:
            self._stop = command.stop
            if command.stop:
                self.get_logger().warning(f'stop: {command.stop}, braking to rest')
        self._command_pub.publish(conv.executor_command_to_msg(
            command, self._config.joint_names, sent, delay, self._sequence))
        if prefix is not None:
            self._prefix_pub.publish(conv.action_chunk_to_msg(ActionChunkData(
                stamp_s=prefix[0], actions=prefix[1], dt_s=self._executor.chunk_dt_s)))
        self._rate.tick(time.monotonic())

    def _send_command(self, command, now_s: float) -> bool:
        if self._sender is None:
            return False
        if self._sender.send(command, sequence=self._sequence, now_s=now_s):
            return True
        self._drops.count('send_queue_full')   # no robot connected, or not reading: never queue
        return False

    def _sent_count(self) -> int:
        return self._sender.sent if self._sender is not None else 0

    def _now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # --- monitoring -----------------------------------------------------------------------

    def _report(self) -> tuple[HealthReport, NodeStatsData]:
        with self._lock:
            stats = self._executor.stats()
        rate = self._rate.rate_hz(time.monotonic())
        report = executor_health(stats, rate_hz=rate, sent=self._sent_count(),
                                 drops=self._drops.as_dict())
        return report, NodeStatsData(
            stamp_s=self._now_s(), node='', rate_hz=rate,
            latency_mean_ms=stats.get('delay_s.p50', float('nan')) * 1e3,
            latency_p99_ms=stats.get('delay_s.p99', float('nan')) * 1e3,
            input_age_s=float('nan'), published=self._sequence,
            dropped=sum(v for k, v in stats.items() if k.startswith('chunks.rejected.')))

    def _status_line(self) -> str:
        with self._lock:
            stats = self._executor.stats()
        return executor_status_line(stats, commands=self._sequence, sent=self._sent_count())

    def destroy_node(self) -> None:
        ticker = getattr(self, '_ticker', None)    # absent when __init__ failed half-way
        if ticker is not None:
            ticker.stop()
            self._thread.join(timeout=2.0)
        if getattr(self, '_sender', None) is not None:
            self._sender.close()
        super().destroy_node()


def main(args=None) -> int:
    # subscriptions and services, the monitor; the control loop has its own thread
    return run_node(ChunkExecutorNode, args, threads=2)


if __name__ == '__main__':
    sys.exit(main())
