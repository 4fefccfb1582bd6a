"""bag_player: publish a bag's topics with their recorded timing, and /clock.

Node `bag_player`, the counterpart of bag_recorder for machines without `ros2 bag play`. The
serialized CDR bytes of each message are published as they are (no deserialisation), each at
its recorded log time scaled by `rate`, so the real nodes run on recorded input.

Time: with `clock:=true` the player publishes rosgraph_msgs/Clock on /clock at
`clock_rate_hz`, carrying the bag time; nodes started with `use_sim_time:=true` then see the
recorded time, and the recorded header stamps are consistent with it. With `restamp:=true` the
header stamps are instead shifted to the current wall clock (a constant offset per pass), for
nodes that compare stamps with the wall clock; only the leading std_msgs/Header is shifted.

Topics out: the bag's topics (documented ones with the QoS of ros/qos.py, others reliable),
    /clock.
Parameters: the fields of core.config.BagPlayerConfig.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from rosgraph_msgs.msg import Clock

from vla_insertion.core import bag, topics
from vla_insertion.core.config import BagPlayerConfig, ConfigError
from vla_insertion.core.orchestration.processes import StopRequest
from vla_insertion.ros.parameters import declare_config, split_ros_args, with_parameters
from vla_insertion.ros.qos import message_class, publisher, qos_profile

DEFAULT_QOS = QoSProfile(reliability=ReliabilityPolicy.RELIABLE,
                         history=HistoryPolicy.KEEP_LAST, depth=10,
                         durability=DurabilityPolicy.VOLATILE)
CLOCK_QOS = qos_profile(topics.CLOCK.qos)


class BagPlayerNode(Node):
    """Publish a bag's messages at their recorded times from a player thread."""

    def __init__(self, config: BagPlayerConfig | None = None, **node_kwargs) -> None:
        super().__init__('bag_player', **node_kwargs)
        self._config = config if config is not None else declare_config(self, BagPlayerConfig)
        c = self._config
        if not c.bag:
            raise ConfigError('bag must name a bag folder')
        self.info = bag.bag_info(c.bag)
        wanted = [t for t in c.topics if t]
        self._topics = [t for t in self.info.topics
                        if not wanted or any(topics.matches(t, w) for w in wanted)]
        if not self._topics:
            raise ConfigError(f'none of the topics {wanted} is in {c.bag}')
        self._pubs = {}
        for topic in self._topics:
            msgtype = self.info.topics[topic].msgtype
            known = topics.find(topic)
            profile = (qos_profile(known.qos) if known and known is not topics.CLOCK
                       else DEFAULT_QOS)
            self._pubs[topic] = self.create_publisher(message_class(msgtype), topic, profile)
        self._clock_pub = publisher(self, Clock, topics.CLOCK) if c.clock else None
        self.published = dict.fromkeys(self._topics, 0)
        self.passes = 0
        self.shift_ns = 0                       # restamp offset of the current pass [ns]
        self.done = threading.Event()
        self._stop = threading.Event()
        self._time_base: tuple[float, int] | None = None  # (wall s, bag ns) at pass start
        self._thread = threading.Thread(target=self._play, name='bag_player', daemon=True)
        self._thread.start()
        if self._clock_pub is not None:
            self._clock_thread = threading.Thread(target=self._clock_loop, daemon=True)
            self._clock_thread.start()
        self.get_logger().info(f'playing {len(self._topics)} topics of {c.bag} '
                               f'({self.info.duration_s:.1f} s) at rate {c.rate}')

    def _play(self) -> None:
        c = self._config
        deadline = time.monotonic() + c.start_delay_s
        while not all(p.get_subscription_count() for p in self._pubs.values()):
            if self._stop.wait(0.02):
                return
            if time.monotonic() >= deadline:
                break
        start_ns = self.info.start_ns + int(c.start_offset_s * 1e9)
        while not self._stop.is_set():
            wall0 = time.monotonic()
            shift_ns = time.time_ns() - start_ns if c.restamp else 0
            self.shift_ns = shift_ns
            self._time_base = (wall0, start_ns)
            for topic, _msgtype, stamp_ns, data in bag.read_raw(c.bag, self._topics):
                if stamp_ns < start_ns:
                    continue
                due = wall0 + (stamp_ns - start_ns) * 1e-9 / c.rate
                delay = due - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
                if shift_ns:
                    data = bag.cdr_restamp(data, bag.cdr_header_stamp_ns(data) + shift_ns)
                self._pubs[topic].publish(bytes(data))
                self.published[topic] += 1
            self.passes += 1
            if not c.loop:
                break
        self._time_base = None
        self._write_report()
        self.done.set()
        if c.exit_when_done and not c.loop:
            self.get_logger().info(f'done: {sum(self.published.values())} messages published')

    def _write_report(self) -> None:
        """Write what was played, and the restamp shift that maps stamps back to the bag."""
        if self._config.report:
            with open(self._config.report, 'w', encoding='utf-8') as f:
                json.dump({'bag': self._config.bag, 'shift_ns': self.shift_ns,
                           'passes': self.passes, 'published': self.published}, f, indent=2)

    def _clock_loop(self) -> None:
        period = 1.0 / self._config.clock_rate_hz
        while not self._stop.wait(period):
            base = self._time_base
            if base is None:
                continue
            wall0, start_ns = base
            now_ns = start_ns + int((time.monotonic() - wall0) * self._config.rate * 1e9)
            msg = Clock()
            msg.clock.sec, msg.clock.nanosec = divmod(now_ns, 1_000_000_000)
            self._clock_pub.publish(msg)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def destroy_node(self) -> None:
        self.stop()
        super().destroy_node()


def main(args=None) -> int:
    argv, ros_args = split_ros_args(list(sys.argv[1:] if args is None else args))
    parser = argparse.ArgumentParser(
        prog='bag_player', description='Play a rosbag2 bag with its recorded timing and '
        '/clock. ROS parameters (BagPlayerConfig) follow --ros-args; the flags are shortcuts.')
    parser.add_argument('bag', nargs='?', help='bag folder')
    parser.add_argument('-r', '--rate', type=float, help='playback speed factor')
    parser.add_argument('--start-offset', type=float, help='skip this many seconds')
    parser.add_argument('-l', '--loop', action='store_true', help='play again at the end')
    parser.add_argument('--restamp', action='store_true',
                        help='shift header stamps to the current wall clock')
    parser.add_argument('--topics', nargs='+', help='topics to play (default all)')
    opts, rest = parser.parse_known_args(argv)
    ros_args = with_parameters(ros_args, {
        'bag': opts.bag, 'rate': opts.rate, 'start_offset_s': opts.start_offset,
        'loop': opts.loop, 'restamp': opts.restamp, 'topics': opts.topics})
    # SIGINT/SIGTERM only set a flag (not rclpy's handlers): the loop ends, the node stops its
    # threads and only then is the context shut down, whatever signals follow
    rclpy.init(args=['bag_player', *rest, *ros_args],
               signal_handler_options=SignalHandlerOptions.NO)
    stop = StopRequest()
    stop.install()
    node = None
    try:
        try:
            node = BagPlayerNode()
        except (ConfigError, bag.BagError) as exc:
            rclpy.logging.get_logger('bag_player').fatal(f'cannot play: {exc}')
            return 2
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.requested and rclpy.ok() and not (
                node.done.is_set() and node._config.exit_when_done):
            executor.spin_once(timeout_sec=0.1)
    except ExternalShutdownException:
        pass
    finally:                               # the flag stays: no signal cuts the close short
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
