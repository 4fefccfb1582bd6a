"""Message -> core data readers, free of ROS: the read half of `vla_insertion.conversions`.

Each reader only reads a message's fields, so it takes an rclpy message in a node and the
rosbags message of a recorded bag alike: the live node and every offline tool convert with the
same code, and a training box without ROS reads bags. `vla_insertion.conversions` re-exports
these next to the writers (which need the generated message classes).

Joint states: the robot's joints and, under the name `gripper`, the gripper (0 open .. 1
closed), the way ros2_control's joint_state_broadcaster publishes a gripper joint. The robot
state of a tick is the newest joint state and the newest pose, stamped with the older of the two.
"""
from __future__ import annotations

import numpy as np

from vla_insertion.core.data import (
    ActionChunkData, CameraFrame, JointTrajectoryData, NodeStatsData, RobotState,
    SensorWindowData, ToolPose, TrajectoryPointData, VLFeatureData)

GRIPPER_JOINT = 'gripper'          # JointState name of the gripper, position 0 open .. 1 closed


class ConversionError(ValueError):
    """A message does not hold what its fields claim (shape, size, finite values)."""


def time_from_msg(t) -> float:
    return t.sec + t.nanosec * 1e-9


def matrix_from_flat(data, rows: int, cols: int, what: str) -> np.ndarray:
    flat = np.array(data, dtype=np.float32)  # a copy: bag buffers are read-only
    if flat.size != rows * cols:
        raise ConversionError(
            f'{what}: data has {flat.size} values, expected {rows} x {cols} = {rows * cols}')
    return flat.reshape(rows, cols)


# --- cameras ------------------------------------------------------------------------------

def camera_frame_from_msg(msg, view: str) -> CameraFrame:
    return CameraFrame(view=view, stamp_s=time_from_msg(msg.header.stamp),
                       data=bytes(msg.data), encoding=msg.format.split(';')[0].strip() or 'jpeg')


# --- robot --------------------------------------------------------------------------------

def joint_state_from_msg(msg) -> tuple[float, np.ndarray]:
    """Return (stamp [s], arm joint positions [rad] float64) of a JointState, gripper left out."""
    names = list(msg.name)
    positions = np.asarray(msg.position, dtype=np.float64)
    if GRIPPER_JOINT in names and names.index(GRIPPER_JOINT) < positions.size:
        positions = np.delete(positions, names.index(GRIPPER_JOINT))
    return time_from_msg(msg.header.stamp), positions


def gripper_from_msg(msg) -> float | None:
    """Return the `gripper` entry of a JointState [0..1], None when it has none."""
    names = list(msg.name)
    if GRIPPER_JOINT not in names:
        return None
    i = names.index(GRIPPER_JOINT)
    if i >= len(msg.position):
        raise ConversionError(f'JointState names {names} but only {len(msg.position)} positions')
    return float(msg.position[i])


def robot_state_from_msgs(joints, pose=None) -> RobotState:
    """Combine a JointState and a PoseStamped into one RobotState, stamped with the older.

    Without a pose the tool pose is the origin with the identity orientation; without a
    `gripper` joint the gripper is 0.
    """
    stamp, positions = joint_state_from_msg(joints)
    names = tuple(n for n in joints.name if n != GRIPPER_JOINT)
    gripper = gripper_from_msg(joints)
    state = RobotState(stamp_s=stamp, joint_positions_rad=positions,
                       tool_position_m=np.zeros(3),
                       tool_orientation_xyzw=np.array([0.0, 0.0, 0.0, 1.0]),
                       gripper=0.0 if gripper is None else gripper, joint_names=names)
    return state if pose is None else state.with_pose(pose_from_msg(pose))


def robot_state_from_joint_states(joints, joint_map) -> RobotState:
    """Read a ros2_control JointState through a JointStateMap (core/bridge/joint_map.py).

    The arm's joints and the gripper by the map's names, every other joint ignored; the tool
    pose left out. A joint the map needs and does not find raises its JointMapError.
    """
    return joint_map.robot_state(time_from_msg(joints.header.stamp), joints.name,
                                 joints.position)


def pose_from_msg(msg) -> ToolPose:
    """Return the tool pose of a PoseStamped."""
    p, o = msg.pose.position, msg.pose.orientation
    return ToolPose(stamp_s=time_from_msg(msg.header.stamp), position_m=np.array([p.x, p.y, p.z]),
                    orientation_xyzw=np.array([o.x, o.y, o.z, o.w]))


# --- sensor window, features, chunks, stats ----------------------------------------------

def sensor_window_from_msg(msg) -> SensorWindowData:
    samples = matrix_from_flat(msg.data, msg.num_samples, msg.num_channels, 'SensorWindow')
    if msg.valid_samples > msg.num_samples:
        raise ConversionError(
            f'SensorWindow: valid_samples {msg.valid_samples} > num_samples {msg.num_samples}')
    return SensorWindowData(
        stamp_s=time_from_msg(msg.header.stamp), samples=samples,
        valid_samples=int(msg.valid_samples), sample_rate_hz=float(msg.sample_rate_hz),
        channel_names=tuple(msg.channel_names), clock_offset_s=float(msg.clock_offset_s),
        clock_calibrated=bool(msg.clock_calibrated), gap_samples=int(msg.gap_samples),
        late_samples=int(msg.late_samples))


def vl_features_from_msg(msg) -> VLFeatureData:
    features = matrix_from_flat(msg.data, msg.num_tokens, msg.feature_dim, 'VLFeatures')
    if len(msg.view_stamps) != len(msg.view_names):
        raise ConversionError(f'VLFeatures: {len(msg.view_stamps)} view stamps for '
                              f'{len(msg.view_names)} view names')
    return VLFeatureData(
        stamp_s=time_from_msg(msg.header.stamp), features=features, sequence=int(msg.sequence),
        contract_hash=msg.contract_hash, model_id=msg.model_id,
        view_names=tuple(msg.view_names),
        view_stamps_s=tuple(time_from_msg(t) for t in msg.view_stamps),
        inference_ms=float(msg.inference_ms), untrained=bool(msg.untrained))


def action_chunk_from_msg(msg) -> ActionChunkData:
    actions = matrix_from_flat(msg.actions, msg.horizon, msg.action_dim, 'ActionChunk')
    return ActionChunkData(
        stamp_s=time_from_msg(msg.header.stamp), actions=actions, dt_s=float(msg.dt_s),
        sequence=int(msg.sequence), feature_sequence=int(msg.feature_sequence),
        feature_age_s=float(msg.feature_age_s), reuse_index=int(msg.reuse_index),
        sensor_stamp_s=time_from_msg(msg.sensor_window_stamp),
        sensor_age_s=float(msg.sensor_age_s), inference_ms=float(msg.inference_ms),
        # Bags recorded before the field existed carry no flag.
        mode=int(msg.mode), untrained=bool(getattr(msg, 'untrained', False)),
        features_untrained=bool(getattr(msg, 'features_untrained', False)))


def node_stats_from_msg(msg) -> NodeStatsData:
    return NodeStatsData(
        stamp_s=time_from_msg(msg.header.stamp), node=msg.node, rate_hz=msg.rate_hz,
        latency_mean_ms=msg.latency_mean_ms, latency_p99_ms=msg.latency_p99_ms,
        input_age_s=msg.input_age_s, published=msg.published, dropped=msg.dropped)


# --- executor outputs ---------------------------------------------------------------------

def joint_trajectory_from_msg(msg) -> JointTrajectoryData:
    """Return a trajectory_msgs/JointTrajectory as it is, array sizes and all (for checking)."""
    return JointTrajectoryData(
        stamp_s=time_from_msg(msg.header.stamp), joint_names=tuple(msg.joint_names),
        points=tuple(TrajectoryPointData(
            time_from_start_s=time_from_msg(p.time_from_start),
            positions=np.array(p.positions, dtype=np.float64),
            velocities=np.array(p.velocities, dtype=np.float64),
            accelerations=np.array(p.accelerations, dtype=np.float64),
            effort=np.array(p.effort, dtype=np.float64)) for p in msg.points))
