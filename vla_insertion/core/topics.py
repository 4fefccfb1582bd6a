"""The topic table: every topic of the package, its type, its QoS and who uses it.

One home for topic names. Nodes build their QoS profiles from `QOS` (ros/qos.py), the
recorder's default topic set, the bag reader's known topics and the evaluator's inputs come from
`TOPICS`, and docs/development.md shows `markdown_table()` (a test keeps them equal). Names are
relative, so a namespace or a remap moves the whole cell; camera topics hold the view name:
`cameras/<view>/image/compressed`, one per configured view.
"""
from __future__ import annotations

from dataclasses import dataclass
import fnmatch

CAMERA_PATTERN = 'cameras/*/image/compressed'


@dataclass(frozen=True)
class QosSpec:
    """A QoS profile as plain data (rclpy profiles are built from it in ros/qos.py)."""

    reliable: bool                 # RELIABLE, else BEST_EFFORT
    depth: int                     # KEEP_LAST history depth [messages]
    transient_local: bool = False  # late joiners get the last value
    why: str = ''


QOS: dict[str, QosSpec] = {
    'sensor': QosSpec(False, 5, why='cameras: the newest frame matters, a lost one is not resent'),
    'window': QosSpec(True, 100, why='sensor windows: ~1.5 s of history at 65 Hz so a reader '
                                     'starved of CPU for a moment still gets every window'),
    'robot': QosSpec(True, 20, why='robot state at 100 Hz: 200 ms of history, same reason'),
    'state': QosSpec(True, 2, why='state-like outputs (chunks, commands): the newest matters'),
    'latest': QosSpec(True, 1, why='features, requests, stats: only the newest matters'),
    'static': QosSpec(True, 1, transient_local=True, why='metadata: late joiners get it'),
    'diagnostics': QosSpec(True, 10, why='/diagnostics, as diagnostic_updater publishes it'),
    'clock': QosSpec(False, 1, why='/clock while replaying a bag (rclcpp::ClockQoS)'),
}


@dataclass(frozen=True)
class Topic:
    """One topic: relative name (or pattern), type, QoS kind, and what it carries."""

    name: str                      # relative name; cameras: CAMERA_PATTERN
    msgtype: str                   # 'pkg/msg/Type'
    qos: str                       # key of QOS
    description: str
    recorded: bool = True          # in the documented recorded set (docs/evaluation.md)


CAMERAS = Topic(CAMERA_PATTERN, 'sensor_msgs/msg/CompressedImage', 'sensor',
                'JPEG of one view, stamped with the capture time (camera_bridge)')
JOINT_STATES = Topic('robot/joint_states', 'sensor_msgs/msg/JointState', 'robot',
                     'joints [rad] and the `gripper` entry [0 open..1 closed] (robot_bridge)')
POSE = Topic('robot/pose', 'geometry_msgs/msg/PoseStamped', 'robot',
             'tool pose in the base frame [m, quaternion] (robot_bridge)')
SENSOR_WINDOW = Topic('sensor/window', 'vla_insertion/msg/SensorWindow', 'window',
                      'the newest 65 x 7 samples of the 650 Hz sensor (sensor_bridge)')
FEATURES = Topic('vla/features', 'vla_insertion/msg/VLFeatures', 'latest',
                 'VL features of one set of views (vlm_node)')
FEATURE_CONTRACT = Topic('vla/feature_contract', 'std_msgs/msg/String', 'static',
                         'the feature contract of vla/features as JSON, once per activation '
                         '(vlm_node); the expert names the fields that differ from its '
                         "checkpoint's")
FEATURE_REQUEST = Topic('vla/feature_request', 'std_msgs/msg/Header', 'latest',
                        'sync mode: "compute features now" (action_expert)')
ACTION_CHUNK = Topic('vla/action_chunk', 'vla_insertion/msg/ActionChunk', 'state',
                     '8 x 7 actions stamped with the observation time (action_expert)')
COMMAND = Topic('vla/command', 'vla_insertion/msg/ExecutorCommand', 'state',
                'what the executor commanded each control step, armed or not (chunk_executor)')
COMMITTED_PREFIX = Topic('vla/committed_prefix', 'vla_insertion/msg/ActionChunk', 'latest',
                         'merge = prefix: the actions already committed (chunk_executor)')
JOINT_TRAJECTORY = Topic('robot/joint_trajectory', 'trajectory_msgs/msg/JointTrajectory',
                         'state', 'future points for ros2_control, when armed; the braking '
                         'of each stop at once (chunk_executor)')
ESTOP = Topic('safety/estop', 'std_msgs/msg/Bool', 'static',
              "true while the cell's e-stop or protective stop is active: the executor stops "
              "and latches a fault; published by the cell's relay of its safety PLC "
              '(safety_relay)')
HEARTBEAT = Topic('safety/heartbeat', 'std_msgs/msg/Bool', 'latest',
                  "the operator's deadman: true while held, at least every "
                  'deadman_timeout_s, from a hold-to-run console (operator)')
STATS = Topic('vla/stats', 'vla_insertion/msg/NodeStats', 'latest',
              'plottable health numbers of each node (every node)')
DIAGNOSTICS = Topic('/diagnostics', 'diagnostic_msgs/msg/DiagnosticArray', 'diagnostics',
                    'status, reasons and counters of each node (every node)')
# ros2_control cells (docs/bringup.md "ros2_control"): what its controllers publish and take.
ROS2_JOINT_STATES = Topic('joint_states', 'sensor_msgs/msg/JointState', 'robot',
                          "joint_state_broadcaster's joints in the controllers' units, read "
                          'through joint_names with joint_state_source: joint_states '
                          '(joint_state_broadcaster)')
GRIPPER_COMMAND = Topic('gripper/commands', 'std_msgs/msg/Float64MultiArray', 'state',
                        'the gripper position for a forward_command_controller while the '
                        'robot may move, with gripper_output: forward_command (chunk_executor)')
CLOCK = Topic('/clock', 'rosgraph_msgs/msg/Clock', 'clock',
              'bag time while replaying (bag_player)', recorded=False)

TOPICS: tuple[Topic, ...] = (CAMERAS, JOINT_STATES, POSE, SENSOR_WINDOW, FEATURES,
                             FEATURE_CONTRACT, FEATURE_REQUEST, ACTION_CHUNK, COMMAND,
                             COMMITTED_PREFIX, JOINT_TRAJECTORY, ESTOP, HEARTBEAT, STATS,
                             DIAGNOSTICS, ROS2_JOINT_STATES, GRIPPER_COMMAND, CLOCK)


# The documented recorded set (docs/evaluation.md): every camera view the cell publishes (a
# pattern, so a cell with other view names records its cameras), the robot, the sensor windows,
# the pipeline's outputs and health.
RECORDED: tuple[str, ...] = tuple(t.name for t in TOPICS if t.recorded)


def camera_topic(view: str) -> str:
    """Return the relative topic of one camera view."""
    return CAMERA_PATTERN.replace('*', view)


def view_of(topic: str) -> str | None:
    """Return the view name of a camera topic (any namespace), None for other topics."""
    parts = topic.strip('/').split('/')
    if len(parts) >= 4 and parts[-4] == 'cameras' and parts[-2:] == ['image', 'compressed']:
        return parts[-3]
    return None


def _relative(topic: str) -> str:
    """Strip a namespace: the part a table name is matched against."""
    name = topic.strip('/')
    if view_of(topic) is not None:
        return '/'.join(name.split('/')[-4:])
    return '/'.join(name.split('/')[-2:])


def find(topic: str) -> Topic | None:
    """Return the table entry of a topic name, whatever its namespace (None if unknown)."""
    for entry in TOPICS:
        if entry.name.startswith('/'):
            if '/' + topic.lstrip('/') == entry.name:
                return entry
        elif fnmatch.fnmatchcase(_relative(topic), entry.name):
            return entry
    return None


def matches(topic: str, wanted: str) -> bool:
    """Whether a topic name is `wanted`: relative names match any namespace, `*` a view."""
    if wanted.startswith('/'):
        return fnmatch.fnmatchcase(topic, wanted)
    name = topic.strip('/')
    depth = wanted.count('/') + 1
    return fnmatch.fnmatchcase('/'.join(name.split('/')[-depth:]), wanted)


def markdown_table() -> str:
    """Return the topic table as markdown (docs/development.md holds this text)."""
    lines = ['| topic | type | QoS | what |', '| --- | --- | --- | --- |']
    for t in TOPICS:
        q = QOS[t.qos]
        qos = (f'{t.qos}: {"reliable" if q.reliable else "best effort"}, depth {q.depth}'
               + (', transient local' if q.transient_local else ''))
        name = t.name.replace('*', '<view>')
        lines.append(f'| `{name}` | {t.msgtype.replace("/msg/", "/")} | {qos} | '
                     f'{t.description} |')
    return '\n'.join(lines)
