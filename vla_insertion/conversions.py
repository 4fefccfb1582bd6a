"""Message <-> numpy conversions at the ROS edge.

The module nodes call for both directions. The writers (core data -> messages) are here and
import the generated message classes, never rclpy; the readers (messages -> core data) live in
`core.messages`, ROS-free, so recorded bags convert with the same code on a machine without ROS,
and are re-exported here. Times are float seconds in the core and builtin_interfaces/Time on the
wire; robot joints are radians and poses metres with a unit quaternion (REP 103); the gripper is
the `gripper` entry of the joint states (0 open .. 1 closed).
"""
from __future__ import annotations

import array
import math

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
import numpy as np
from sensor_msgs.msg import CompressedImage, JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from vla_insertion.core.bag.messages import (  # noqa: F401 - the readers, re-exported
    action_chunk_from_msg, camera_frame_from_msg, ConversionError, gripper_from_msg, GRIPPER_JOINT,
    joint_state_from_msg, joint_trajectory_from_msg, node_stats_from_msg, pose_from_msg,
    robot_state_from_joint_states, robot_state_from_msgs, sensor_window_from_msg, time_from_msg,
    vl_features_from_msg)
from vla_insertion.core.data import (
    ActionChunkData, CameraFrame, JointTrajectoryData, NodeStatsData, RobotState,
    SensorWindowData, VLFeatureData)
from vla_insertion.core.executor.trajectory_rules import duration_ns
from vla_insertion.msg import ActionChunk, ExecutorCommand, NodeStats, SensorWindow, VLFeatures


# --- time ---------------------------------------------------------------------------------

def time_to_msg(t_s: float) -> Time:
    """Convert float seconds to builtin_interfaces/Time (nanosecond resolution)."""
    if not math.isfinite(t_s) or t_s < 0.0:
        raise ConversionError(f'time must be finite and >= 0, got {t_s}')
    total_ns = int(round(t_s * 1e9))
    return Time(sec=total_ns // 1_000_000_000, nanosec=total_ns % 1_000_000_000)


# --- helpers ------------------------------------------------------------------------------

def _flat_float32(matrix: np.ndarray) -> array.array:
    # rosidl stores float32[] as array.array('f'); building it from bytes is one memcpy, while
    # handing it a numpy array costs a Python-level copy per element (~0.3 ms per 455 floats).
    return array.array('f', np.ascontiguousarray(matrix, dtype=np.float32).tobytes())


# --- cameras ------------------------------------------------------------------------------

def camera_frame_to_msg(frame: CameraFrame, frame_id: str = '') -> CompressedImage:
    msg = CompressedImage()
    msg.header.stamp = time_to_msg(frame.stamp_s)
    msg.header.frame_id = frame_id or frame.view
    msg.format = frame.encoding
    msg.data = frame.data
    return msg


# --- robot --------------------------------------------------------------------------------

def robot_state_to_msgs(state: RobotState, base_frame: str = 'base_link'
                        ) -> tuple[JointState, PoseStamped]:
    """Return the joint states (the arm's joints, then `gripper`) and the tool pose."""
    joints = JointState()
    joints.header.stamp = time_to_msg(state.stamp_s)
    joints.name = list(state.joint_names) + [GRIPPER_JOINT]
    joints.position = [float(v) for v in state.joint_positions_rad] + [float(state.gripper)]
    pose = PoseStamped()
    pose.header.stamp = joints.header.stamp
    pose.header.frame_id = base_frame
    p, q = state.tool_position_m, state.tool_orientation_xyzw
    pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = (float(v) for v in p)
    (pose.pose.orientation.x, pose.pose.orientation.y,
     pose.pose.orientation.z, pose.pose.orientation.w) = (float(v) for v in q)
    return joints, pose


# --- sensor window ------------------------------------------------------------------------

def sensor_window_to_msg(window: SensorWindowData) -> SensorWindow:
    rows, cols = window.samples.shape
    msg = SensorWindow()
    msg.header.stamp = time_to_msg(window.stamp_s)
    msg.sample_rate_hz = float(window.sample_rate_hz)
    msg.num_samples, msg.num_channels = rows, cols
    msg.channel_names = list(window.channel_names)
    msg.data = _flat_float32(window.samples)
    msg.valid_samples = int(window.valid_samples)
    msg.clock_offset_s = float(window.clock_offset_s)
    msg.clock_calibrated = bool(window.clock_calibrated)
    msg.gap_samples, msg.late_samples = int(window.gap_samples), int(window.late_samples)
    return msg


# --- VL features --------------------------------------------------------------------------

def vl_features_to_msg(feat: VLFeatureData) -> VLFeatures:
    tokens, dim = feat.features.shape
    msg = VLFeatures()
    msg.header.stamp = time_to_msg(feat.stamp_s)
    msg.view_stamps = [time_to_msg(t) for t in feat.view_stamps_s]
    msg.view_names = list(feat.view_names)
    msg.sequence = int(feat.sequence)
    msg.model_id = feat.model_id
    msg.contract_hash = feat.contract_hash
    msg.untrained = bool(feat.untrained)
    msg.num_tokens, msg.feature_dim = tokens, dim
    msg.data = _flat_float32(feat.features)
    msg.inference_ms = float(feat.inference_ms)
    return msg


# --- action chunks ------------------------------------------------------------------------

def action_chunk_to_msg(chunk: ActionChunkData) -> ActionChunk:
    horizon, dim = chunk.actions.shape
    msg = ActionChunk()
    msg.header.stamp = time_to_msg(chunk.stamp_s)
    msg.dt_s = float(chunk.dt_s)
    msg.horizon, msg.action_dim = horizon, dim
    msg.actions = _flat_float32(chunk.actions)
    msg.sequence = int(chunk.sequence)
    msg.feature_sequence = int(chunk.feature_sequence)
    msg.feature_age_s = float(chunk.feature_age_s)
    msg.reuse_index = int(chunk.reuse_index)
    msg.sensor_window_stamp = time_to_msg(chunk.sensor_stamp_s)
    msg.sensor_age_s = float(chunk.sensor_age_s)
    msg.inference_ms = float(chunk.inference_ms)
    msg.mode = int(chunk.mode)
    msg.untrained = bool(chunk.untrained)
    msg.features_untrained = bool(chunk.features_untrained)
    return msg


# --- executor outputs ---------------------------------------------------------------------

def executor_command_to_msg(command, joint_names, sent: bool, chunk_delay_s: float,
                            sequence: int) -> ExecutorCommand:
    """One control step of the chunk executor (core.executor.JointCommand) for vla/command."""
    msg = ExecutorCommand()
    msg.header.stamp = time_to_msg(command.stamp_s)
    msg.joint_names = list(joint_names)
    msg.positions = [float(v) for v in command.positions]
    msg.velocities = [float(v) for v in command.velocities]
    msg.gripper = float(command.gripper)
    msg.target_lead_s = float(command.lead_s)
    msg.chunk_sequence = int(command.chunk_sequence)
    msg.action_index = float(command.action_index)
    msg.chunk_delay_s = float(chunk_delay_s)
    # hold: what command_v1 says (core/executor/command.py): a gate hold, or a stop in force
    msg.armed, msg.sent = bool(command.armed), bool(sent)
    msg.hold = bool(command.hold or command.stop)
    msg.fault, msg.state = command.fault, command.state
    msg.interventions = list(command.interventions)
    msg.sequence = int(sequence)
    return msg


def joint_trajectory_to_msg(trajectory: JointTrajectoryData) -> JointTrajectory:
    """Write a JointTrajectory for joint_trajectory_controller (core.data.JointTrajectoryData).

    header.stamp is the trajectory's stamp, each point's time_from_start relative to it in
    whole nanoseconds (core.executor.trajectory_rules.duration_ns, which its checker uses).
    """
    msg = JointTrajectory()
    msg.header.stamp = time_to_msg(trajectory.stamp_s)
    msg.joint_names = list(trajectory.joint_names)
    for p in trajectory.points:
        point = JointTrajectoryPoint()
        point.positions = [float(v) for v in p.positions]
        point.velocities = [float(v) for v in p.velocities]
        point.accelerations = [float(v) for v in p.accelerations]
        point.effort = [float(v) for v in p.effort]
        point.time_from_start.sec, point.time_from_start.nanosec = divmod(
            duration_ns(p.time_from_start_s), 1_000_000_000)
        msg.points.append(point)
    return msg


# --- stats and diagnostics ----------------------------------------------------------------

def node_stats_to_msg(stats: NodeStatsData) -> NodeStats:
    msg = NodeStats()
    msg.header.stamp = time_to_msg(stats.stamp_s)
    msg.node = stats.node
    msg.rate_hz = float(stats.rate_hz)
    msg.latency_mean_ms = float(stats.latency_mean_ms)
    msg.latency_p99_ms = float(stats.latency_p99_ms)
    msg.input_age_s = float(stats.input_age_s)
    msg.published, msg.dropped = int(stats.published), int(stats.dropped)
    return msg


_LEVELS = {'OK': DiagnosticStatus.OK, 'WARN': DiagnosticStatus.WARN,
           'ERROR': DiagnosticStatus.ERROR, 'STALE': DiagnosticStatus.STALE}


def diagnostic_status_to_msg(name: str, hardware_id: str, level: str, message: str,
                             values: dict) -> DiagnosticStatus:
    """One DiagnosticStatus; level is 'OK', 'WARN', 'ERROR' or 'STALE'."""
    status = DiagnosticStatus()
    status.level = _LEVELS[level]
    status.name = name
    status.hardware_id = hardware_id
    status.message = message
    status.values = [KeyValue(key=str(k), value=_format_value(v)) for k, v in values.items()]
    return status


def _format_value(value) -> str:
    # 6 significant digits, but at least 3 decimals from 10^4 on: a clock offset of 1234.5 s
    # reads 1234500.000 ms, not 1.234e+06
    if isinstance(value, float):
        return f'{value:.3f}' if abs(value) >= 1e4 else f'{value:.6g}'
    return str(value)
