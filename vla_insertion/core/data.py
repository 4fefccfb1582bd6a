"""Plain data types that flow through the pipeline, free of ROS.

Every time is in seconds on the local (receiver) clock unless a name says otherwise; ROS
messages carry the same values (see vla_insertion.conversions). Arrays are numpy, float32 for
payloads, with shape comments in the dataclasses.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
import math

import numpy as np

# The cell's vocabulary: one home for each constant every layer shares.
NUM_JOINTS = 6                  # arm joints of the robot (UR5e-like) [joints]
ACTION_DIM = NUM_JOINTS + 1     # one action: 6 joint targets [rad] + gripper [0..1]
DEFAULT_VIEWS = ('zed_1', 'zed_2', 'zed_3', 'zed_4', 'oak')   # camera views, prompt order
DEFAULT_SENSOR_CHANNELS = ('fx', 'fy', 'fz', 'tx', 'ty', 'tz', 'distance')   # F/T + distance


@dataclass(frozen=True)
class CameraFrame:
    """One compressed camera view as received from the cell."""

    view: str                      # view name, e.g. "zed_1"
    stamp_s: float                 # capture time mapped to the local clock [s]
    data: bytes                    # encoded image bytes
    encoding: str = 'jpeg'         # compression format ("jpeg" or "png")
    width: int = 0                 # pixels, 0 if unknown before decoding
    height: int = 0                # pixels, 0 if unknown before decoding


@dataclass(frozen=True)
class RobotState:
    """Robot joints and tool pose, SI units (REP 103)."""

    stamp_s: float                 # sender time mapped to the local clock [s]
    joint_positions_rad: np.ndarray  # (6,) joint angles [rad]
    tool_position_m: np.ndarray    # (3,) tool position in the robot base frame [m]
    tool_orientation_xyzw: np.ndarray  # (4,) unit quaternion, x y z w
    gripper: float = 0.0           # gripper command/state [0..1]
    joint_names: tuple[str, ...] = ('joint_1', 'joint_2', 'joint_3',
                                    'joint_4', 'joint_5', 'joint_6')

    @property
    def tool_pose(self) -> ToolPose:
        """The tool pose alone, stamped as these joints (as robot/pose carries it)."""
        return ToolPose(self.stamp_s, self.tool_position_m, self.tool_orientation_xyzw)

    def with_pose(self, pose: ToolPose) -> RobotState:
        """Return these joints with `pose`'s tool pose, stamped with the older of the two.

        One rule for a robot state made of a joint state and a pose that arrive apart
        (robot/joint_states, robot/pose): the live node and a recording combine them alike.
        """
        return replace(self, stamp_s=min(self.stamp_s, pose.stamp_s),
                       tool_position_m=pose.position_m,
                       tool_orientation_xyzw=pose.orientation_xyzw)


@dataclass(frozen=True)
class ToolPose:
    """The tool pose alone, as robot/pose carries it (REP 103)."""

    stamp_s: float                 # sender time mapped to the local clock [s]
    position_m: np.ndarray         # (3,) tool position in the robot base frame [m]
    orientation_xyzw: np.ndarray   # (4,) unit quaternion, x y z w


@dataclass(frozen=True)
class SensorWindowData:
    """The newest window of high-rate sensor samples."""

    stamp_s: float                 # time of the newest sample on the local clock [s]
    # (num_samples, num_channels) float32, oldest first; NaN rows where no sample was received
    samples: np.ndarray
    valid_samples: int             # rows at the end of the window holding received samples
    sample_rate_hz: float          # nominal sender rate [Hz]
    channel_names: tuple[str, ...] = ()
    clock_offset_s: float = 0.0    # estimated sender_clock - local_clock [s]
    clock_calibrated: bool = False
    gap_samples: int = 0           # running count of samples lost in sequence gaps
    late_samples: int = 0          # running count of samples dropped for arriving late

    @property
    def complete(self) -> bool:
        return self.valid_samples >= self.samples.shape[0]


@dataclass(frozen=True)
class VLFeatureData:
    """Features produced by the VLM for one set of views."""

    stamp_s: float                 # capture time of the newest view used [s]
    features: np.ndarray           # (num_tokens, feature_dim) float32
    sequence: int                  # increments per published feature set
    contract_hash: str             # hash of the feature contract (see core.feature_contract)
    model_id: str
    view_names: tuple[str, ...] = ()
    view_stamps_s: tuple[float, ...] = ()  # capture time per view [s]
    inference_ms: float = 0.0
    untrained: bool = False


MODE_ASYNC = 0
MODE_SYNC = 1


@dataclass(frozen=True)
class ActionChunkData:
    """One action chunk from the action expert."""

    stamp_s: float                 # time at which the first action applies [s]
    actions: np.ndarray            # (horizon, action_dim) float32
    dt_s: float                    # time between consecutive actions [s]
    sequence: int = 0
    feature_sequence: int = 0
    feature_age_s: float = 0.0     # age of the VL features at use [s]
    reuse_index: int = 0           # 1 for the first chunk that used these features
    sensor_stamp_s: float = 0.0    # stamp of the sensor window used [s]
    sensor_age_s: float = 0.0
    inference_ms: float = 0.0
    mode: int = MODE_ASYNC
    untrained: bool = False        # the expert's weights are random: never executed
    features_untrained: bool = False  # the VL features came from a random-weight VLM


def _no_values() -> np.ndarray:
    return np.zeros(0)


@dataclass(frozen=True)
class TrajectoryPointData:
    """One point of a joint trajectory (trajectory_msgs/JointTrajectoryPoint)."""

    time_from_start_s: float       # after the trajectory's stamp [s]
    positions: np.ndarray          # (J,) float64 joint positions [rad]
    velocities: np.ndarray         # (J,) float64 [rad/s]; (0,) when not given
    accelerations: np.ndarray = field(default_factory=_no_values)  # (J,) or (0,) [rad/s^2]
    effort: np.ndarray = field(default_factory=_no_values)         # (J,) or (0,) [N m]


@dataclass(frozen=True)
class JointTrajectoryData:
    """A joint trajectory for ros2_control's joint_trajectory_controller (JointTrajectory)."""

    stamp_s: float                 # header.stamp: the points' time origin; 0 = on arrival [s]
    joint_names: tuple[str, ...]   # the order of every point's arrays
    points: tuple[TrajectoryPointData, ...]
    stop: str = ''                 # the stop's trigger when it brakes to a stop ('' the plan);
    #                                not part of the message

    @property
    def end_s(self) -> float:
        """When the last point is due: stamp + its time_from_start [s] (NaN without points)."""
        return self.stamp_s + self.points[-1].time_from_start_s if self.points else math.nan


@dataclass(frozen=True)
class NodeStatsData:
    """Plottable health numbers of one node."""

    stamp_s: float
    node: str
    rate_hz: float = 0.0
    latency_mean_ms: float = 0.0
    latency_p99_ms: float = 0.0
    input_age_s: float = float('nan')
    published: int = 0
    dropped: int = 0
    extra: dict = field(default_factory=dict)
