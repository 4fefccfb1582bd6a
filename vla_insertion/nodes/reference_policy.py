"""reference_policy: the simulated cell's scripted demonstrator as an action-chunk publisher.

Subscribes:
    robot/joint_states   sensor_msgs/JointState     the measured arm (and gripper)
    robot/pose           geometry_msgs/PoseStamped  the measured tool pose
    sensor/window        vla_insertion/SensorWindow the wrist sensor: the demonstrator feels the
                                                    block top and a wedge (core/sim/reference.py)
Reads: sim_cell's episode stream (episode_v1, ZMQ SUB on episode_host:episode_port): which
    episode runs, hence the hole (privileged: this is the demonstrator, not a policy).
Publishes:
    vla/action_chunk     vla_insertion/ActionChunk  at rate_hz, in the action expert's form
    /diagnostics, vla/stats
Parameters: the fields of core.config.ReferencePolicyConfig.

It stands where the action expert stands, so the scripted trajectory drives the arm through the
same command path as a learned policy (chunk_executor -> command_v1 -> sim_cell), closed loop on
the measured state: the ceiling of the closed-loop evaluation and the demonstrator of the
recorded training sessions (`record_demonstrations`). Only for the simulated cell.
"""
from __future__ import annotations

import dataclasses
import sys
import threading
import time

from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import JointState

from vla_insertion import conversions as conv
from vla_insertion.core import topics
from vla_insertion.core.config import ReferencePolicyConfig
from vla_insertion.core.data import NodeStatsData
from vla_insertion.core.health import HealthReport, RateMeter
from vla_insertion.core.orchestration.episode_listener import EpisodeListener
from vla_insertion.core.sim.reference import EpisodeReference
from vla_insertion.core.ticker import DeadlineTicker
from vla_insertion.msg import ActionChunk, SensorWindow
from vla_insertion.ros.monitoring import NodeMonitor
from vla_insertion.ros.parameters import declare_config
from vla_insertion.ros.qos import publisher, subscription
from vla_insertion.ros.run import run_node


class ReferencePolicyNode(Node):
    """Publish the demonstrator's chunks for the running episode at rate_hz."""

    def __init__(self, **node_kwargs) -> None:
        super().__init__('reference_policy', **node_kwargs)
        self._config = cfg = declare_config(self, ReferencePolicyConfig)
        self._reference = EpisodeReference()
        self._lock = threading.Lock()
        self._joints = self._pose = self._window = None
        self._sequence = 0
        self._rate = RateMeter()
        subscription(self, JointState, topics.JOINT_STATES, self._store('_joints'))
        subscription(self, PoseStamped, topics.POSE, self._store('_pose'))
        subscription(self, SensorWindow, topics.SENSOR_WINDOW, self._store('_window'))
        self._chunk_pub = publisher(self, ActionChunk, topics.ACTION_CHUNK)
        self._episodes = EpisodeListener(cfg.episode_host, cfg.episode_port)
        self._episodes.start()
        self._monitor = NodeMonitor(self, self._report)
        self._ticker = DeadlineTicker(cfg.rate_hz)
        self._thread = threading.Thread(target=self._loop, name='reference_loop', daemon=True)
        self._thread.start()
        self.get_logger().warning('the scripted demonstrator drives the arm: it knows the '
                                  'hole from the simulated cell (privileged, sim only)')

    def _store(self, name: str):
        def store(msg) -> None:
            with self._lock:
                setattr(self, name, msg)
        return store

    def _loop(self) -> None:
        while self._ticker.wait():
            self.tick()

    def tick(self) -> None:
        with self._lock:
            joints, pose, window = self._joints, self._pose, self._window
        robot = None if joints is None or pose is None else \
            conv.robot_state_from_msgs(joints, pose)
        try:        # no window yet, or an unreadable one: geometry alone decides
            window = None if window is None else conv.sensor_window_from_msg(window)
        except conv.ConversionError:
            window = None
        chunk = self._reference.act(self._episodes.latest, robot, window)
        if chunk is None:
            return
        self._sequence += 1       # stamped with the observation: the measured state's time
        self._chunk_pub.publish(conv.action_chunk_to_msg(
            dataclasses.replace(chunk, sequence=self._sequence)))
        self._rate.tick(time.monotonic())

    def _report(self) -> tuple[HealthReport, NodeStatsData]:
        report = HealthReport()
        if self._reference.waiting:
            report.escalate('WARN', f'not publishing: {self._reference.waiting}')
        rate = self._rate.rate_hz(time.monotonic())
        episode = self._episodes.latest
        report.values = {'chunks': self._sequence, 'rate_hz': rate,
                         'episode': episode.episode if episode else -1,
                         **{f'drops.{k}': v for k, v in self._episodes.drops.items()}}
        return report, NodeStatsData(stamp_s=time.time(), node='', rate_hz=rate,
                                     published=self._sequence)

    def destroy_node(self) -> None:
        if getattr(self, '_ticker', None) is not None:
            self._ticker.stop()
            self._thread.join(timeout=2.0)
        if getattr(self, '_episodes', None) is not None:
            self._episodes.stop()
        super().destroy_node()


def main(args=None) -> int:
    return run_node(ReferencePolicyNode, args, threads=2)


if __name__ == '__main__':
    sys.exit(main())
