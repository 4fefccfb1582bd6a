"""bag_recorder: record the cell's topics into a rosbag2 bag (MCAP or sqlite3) without rosbag2.

Node `bag_recorder`, for machines where `ros2 bag record` is not available (on a cell with
rosbag2, `ros2 bag record` of the same topics gives an equivalent bag; docs/evaluation.md).

Subscriptions are raw: the serialized CDR bytes go to the bag untouched, never deserialised.
The callbacks only enqueue; a writer thread drains the queue into `core.bag.BagWriter`, so disk
latency never stalls the executor. Drops are counted by cause (queue full, disk low, write
error) and reported in /diagnostics.

Topics in: every topic in `topics` (default: core.topics.RECORDED), with the QoS that
    matches its publishers (best effort for cameras or any best-effort publisher, else
    reliable, both with a deep queue).

As rosbag2 records (docs/evaluation.md): a message's log time is the time DDS received it
(MessageInfo.received_timestamp, system clock), not the time the callback ran, so messages
queued while the recorder starts keep their spacing; with use_sim_time the node's clock is
used. One difference: a sample that DDS repaired (resent after a loss) arrives after later
ones that were held back for it; it is logged at the receive time of the one before it, so a
topic's messages keep the order in which a subscriber takes them (rosbag2 would log the repair
after them). A topic enters the bag with its first message, its offered_qos_profiles one per
publisher known then (as rosbag2 lists those of the publishers it subscribed to), with the
history depth of the topic table where discovery does not report one; a subscribed topic that
never received a message is listed at the end with no messages.
Topics out: /diagnostics, vla/stats.
Parameters: the fields of core.config.BagRecorderConfig.

Crash behaviour: the bag is written as split files (`split_duration_s`); completed splits and
metadata.yaml always form a readable bag. After a SIGKILL or a power loss run
`bag_recorder --recover <bag>` to also salvage the flushed part of the last split.
"""
from __future__ import annotations

import argparse
from collections import Counter
import functools
from pathlib import Path
import queue
import shutil
import sys
import threading
import time

import rclpy
from rclpy._rclpy_pybind11 import RCLError
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions

from vla_insertion.core import bag, topics
from vla_insertion.core.config import BagRecorderConfig, ConfigError
from vla_insertion.core.data import NodeStatsData
from vla_insertion.core.health import DropCounter, HealthReport, RateMeter
from vla_insertion.core.orchestration.processes import StopRequest
from vla_insertion.ros.monitoring import NodeMonitor
from vla_insertion.ros.parameters import declare_config, split_ros_args, with_parameters
from vla_insertion.ros.qos import message_class

_STOP = object()


def bag_qos(profile: QoSProfile, depth: int | None = None) -> bag.Qos:
    """Describe an rclpy QoS profile for the bag's offered_qos_profiles."""
    return bag.qos(reliable=profile.reliability == ReliabilityPolicy.RELIABLE,
                   depth=profile.depth if depth is None else depth,
                   transient_local=profile.durability == DurabilityPolicy.TRANSIENT_LOCAL)


def offered_profiles(publishers, topic: str) -> list[bag.Qos]:
    """Return one profile per publisher, as rosbag2 stores them.

    DDS discovery carries no history depth (rmw reports 0 and history unknown); for a topic of
    the table the publishers' depth is the table's, since every node builds its QoS from it.
    """
    known = topics.find(topic)
    table_depth = topics.QOS[known.qos].depth if known is not None else 0
    return [bag_qos(p.qos_profile, p.qos_profile.depth or table_depth) for p in publishers]


class BagRecorderNode(Node):
    """Record topics raw into a bag through a queue and a writer thread."""

    def __init__(self, config: BagRecorderConfig | None = None, **node_kwargs) -> None:
        super().__init__('bag_recorder', **node_kwargs)
        self._config = config if config is not None else declare_config(self, BagRecorderConfig)
        c = self._config
        name = c.bag_name or time.strftime('vla_%Y%m%d_%H%M%S')
        self.path = Path(c.output_dir).expanduser().resolve() / name   # logged: absolute
        self._writer = bag.BagWriter(
            self.path, storage=c.storage, split_duration_s=c.split_duration_s,
            flush_period_s=c.flush_period_s,
            custom_data={'recorder': 'vla_insertion bag_recorder'})
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._queued_bytes = 0
        self._max_bytes = int(c.max_queue_mb * 2**20)
        self._lock = threading.Lock()
        self._drops = DropCounter()
        self.received: Counter[str] = Counter()
        self._rate = RateMeter()
        self._subs: dict[str, object] = {}
        self._types: dict[str, str] = {}      # subscribed topic -> message type
        self._in_bag: set[str] = set()        # topics added to the writer
        self._last_log_ns: dict[str, int] = {}  # per topic, log times never go back
        self._sim_time = self.get_parameter('use_sim_time').value
        self._pending = list(c.topics)
        self._accepting = True
        self._state = 'recording'
        self._stopped = threading.Event()
        self.finished = False              # duration_s reached
        self._subscribe_pending()
        self._discovery = self.create_timer(c.discovery_period_s, self._subscribe_pending)
        self._thread = threading.Thread(target=self._write_loop, name='bag_writer', daemon=True)
        self._thread.start()
        if c.duration_s > 0:
            self._end_timer = self.create_timer(c.duration_s, self._finish_by_duration)
        self._monitor = NodeMonitor(self, self._report, status_line=self._status_line)
        self.get_logger().info(f'recording {len(c.topics)} topics into {self.path} '
                               f'({c.storage})')

    # subscriptions

    def _subscribe_pending(self) -> None:
        """Subscribe to every wanted topic whose type is known (table or graph) by now.

        A pattern (`cameras/*/image/compressed`) stays pending: it subscribes to each matching
        topic the graph shows, so a cell with other camera names records its cameras.
        """
        graph = dict(self.get_topic_names_and_types())
        still = []
        for wanted in self._pending:
            if '*' in wanted:
                still.append(wanted)
                names = [t for t in graph if t not in self._subs and topics.matches(t, wanted)]
            else:
                names = [self.resolve_topic_name(wanted)]
            for name in names:
                known = topics.find(name)
                if known is not None:
                    msgtype, kind = known.msgtype, known.qos
                elif graph.get(name):
                    msgtype, kind = graph[name][0], 'other'
                else:
                    still.append(wanted)
                    continue
                if name not in self._subs:
                    self._subscribe(name, msgtype, kind)
        self._pending = still

    def _subscribe(self, topic: str, msgtype: str, kind: str) -> None:
        c = self._config
        publishers = self.get_publishers_info_by_topic(topic)
        best_effort = kind == 'sensor' or any(
            p.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT for p in publishers)
        durability = (DurabilityPolicy.TRANSIENT_LOCAL if publishers and all(
            p.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for p in publishers)
            else DurabilityPolicy.VOLATILE)
        profile = QoSProfile(
            reliability=ReliabilityPolicy.BEST_EFFORT if best_effort
            else ReliabilityPolicy.RELIABLE,
            history=HistoryPolicy.KEEP_LAST,
            depth=c.best_effort_depth if best_effort else c.reliable_depth,
            durability=durability)
        self._types[topic] = msgtype
        self._subs[topic] = self.create_subscription(
            message_class(msgtype), topic, functools.partial(self._enqueue, topic),
            profile, raw=True)

    def _add_to_bag(self, topic: str) -> None:
        """Declare a topic to the writer with the profiles of the publishers known now.

        Fixed for the whole bag: each file's channel and metadata.yaml must list the same
        profiles (readers match them).
        """
        self._in_bag.add(topic)
        try:
            publishers = self.get_publishers_info_by_topic(topic)
        except RCLError:    # shutting down (the context is gone): close the bag all the same
            publishers = []
        offered = offered_profiles(publishers, topic)
        self._writer_call(functools.partial(self._writer.add_topic, topic, self._types[topic],
                                            offered))

    def _writer_call(self, fn) -> None:
        # add_topic runs on the writer thread's BagWriter; the queue keeps the order
        self._queue.put(fn)

    # hot path: runs in the executor, only enqueues

    def _enqueue(self, topic: str, data: bytes, info: dict) -> None:
        # the time DDS received it (rosbag2's log time); not the callback time, which bunches
        # up the messages queued while the executor was busy
        received = info.get('received_timestamp') if not self._sim_time else None
        stamp_ns = max(received or self.get_clock().now().nanoseconds,
                       self._last_log_ns.get(topic, 0))     # a repaired sample keeps its place
        self._last_log_ns[topic] = stamp_ns
        self.received[topic] += 1
        if topic not in self._in_bag:         # once per topic: its first message is here
            self._add_to_bag(topic)
        if not self._accepting:
            self._drops.count(self._state)
            return
        with self._lock:
            if self._queued_bytes + len(data) > self._max_bytes:
                self._drops.count('queue_full')
                return
            self._queued_bytes += len(data)
        self._queue.put((topic, stamp_ns, data))

    # writer thread

    def _write_loop(self) -> None:
        c = self._config
        next_disk_check = 0.0
        while True:
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                item = None
            if item is _STOP:
                break
            if callable(item):
                if self._state == 'recording':
                    item()
                continue
            now = time.monotonic()
            if item is not None:
                topic, stamp_ns, data = item
                with self._lock:
                    self._queued_bytes -= len(data)
                if self._state != 'recording':
                    self._drops.count(self._state)
                    continue
                try:
                    self._writer.write(topic, stamp_ns, data)
                    self._rate.tick(now)
                except OSError as exc:       # disk full, I/O error: keep what is on disk
                    self._fail('write_error', f'write failed: {exc}')
                    continue
            elif self._state == 'recording':
                self._writer.maybe_flush()
            if c.min_free_disk_mb > 0 and now >= next_disk_check and self._state == 'recording':
                next_disk_check = now + 1.0
                free_mb = shutil.disk_usage(self.path).free / 2**20
                if free_mb < c.min_free_disk_mb:
                    self._fail('disk_low', f'free disk {free_mb:.0f} MB < '
                                           f'{c.min_free_disk_mb:.0f} MB')
        self._close_writer()

    def _fail(self, state: str, reason: str) -> None:
        self._state = state
        self._accepting = False
        self._drops.count(state)
        self.get_logger().error(f'{reason}; closing the bag, later messages are dropped')
        self._close_writer()

    def _close_writer(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        try:
            self._writer.close()
        except OSError as exc:
            self.get_logger().error(f'closing the last split failed ({exc}); the completed '
                                    f'splits are readable, run bag_recorder --recover')

    def _finish_by_duration(self) -> None:
        self.get_logger().info(f'duration {self._config.duration_s} s reached')
        self._end_timer.cancel()
        self.finished = True               # main's loop ends and closes the bag

    # shutdown

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop recording, write everything queued and close the bag."""
        self._accepting = False
        for topic in self._subs:
            if topic not in self._in_bag:     # listed, with no messages, as rosbag2 does
                self._add_to_bag(topic)
        for sub in self._subs.values():
            self.destroy_subscription(sub)
        self._subs = {}
        self._queue.put(_STOP)
        self._thread.join(timeout_s)

    def destroy_node(self) -> None:
        self.stop()
        super().destroy_node()

    @property
    def written(self) -> dict[str, int]:
        return dict(self._writer.counts)

    @property
    def drops(self) -> dict[str, int]:
        return self._drops.as_dict()

    # monitoring

    def _report(self) -> tuple[HealthReport, NodeStatsData]:
        now = time.monotonic()
        report = HealthReport(values={
            'bag': str(self.path), 'received': sum(self.received.values()),
            'written': sum(self._writer.counts.values()),
            'written_mb': self._writer.bytes_written / 2**20,
            'queued_mb': self._queued_bytes / 2**20,
            'topics': len(self._subs), 'waiting_for_topics': len(self._pending),
            **{f'drops.{k}': v for k, v in self._drops.as_dict().items()}})
        if self._state != 'recording':
            report.escalate('ERROR', f'not recording: {self._state}')
        elif self._drops.total():
            report.escalate('WARN', f'{self._drops.total()} messages dropped')
        if self._pending:
            report.escalate('WARN', f'no publisher yet for {", ".join(self._pending)}')
        stats = NodeStatsData(stamp_s=time.time(), node='bag_recorder',
                              rate_hz=self._rate.rate_hz(now),
                              published=sum(self._writer.counts.values()),
                              dropped=self._drops.total())
        return report, stats

    def _status_line(self) -> str:
        return (f'bag {self.path.name}: {sum(self._writer.counts.values())} messages, '
                f'{self._writer.bytes_written / 2**20:.1f} MB, '
                f'{self._rate.rate_hz(time.monotonic()):.0f} msg/s, '
                f'dropped {self._drops.as_dict() or 0}')


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog='bag_recorder', description='Record the cell topics into a rosbag2 bag. ROS '
        'parameters (BagRecorderConfig) follow --ros-args; the flags below are shortcuts.')
    parser.add_argument('-o', '--output-dir', help='folder the bag folder is created in')
    parser.add_argument('-n', '--bag-name', help='bag folder name')
    parser.add_argument('-s', '--storage', choices=['mcap', 'sqlite3'])
    parser.add_argument('-d', '--duration', type=float, help='stop after this many seconds')
    parser.add_argument('-t', '--topics', nargs='+', help='topics to record')
    parser.add_argument('--recover', metavar='BAG',
                        help='salvage the unfinished split of a killed recording and exit')
    return parser.parse_known_args(argv)


def main(args=None) -> int:
    argv, ros_args = split_ros_args(list(sys.argv[1:] if args is None else args))
    opts, rest = _parse(argv)
    if opts.recover:
        n = bag.recover_bag(opts.recover)
        print(f'recovered {n} messages; {opts.recover} now holds '
              f'{bag.bag_info(opts.recover).message_count} messages')
        return 0
    ros_args = with_parameters(ros_args, {
        'output_dir': opts.output_dir, 'bag_name': opts.bag_name, 'storage': opts.storage,
        'duration_s': opts.duration, 'topics': opts.topics})
    # SIGINT/SIGTERM only set a flag (not rclpy's handlers): the loop ends, and closing the
    # bag runs to its end whatever signals follow, so the bag is always readable.
    rclpy.init(args=['bag_recorder', *rest, *ros_args],
               signal_handler_options=SignalHandlerOptions.NO)
    stop = StopRequest()
    stop.install()
    node = None
    try:
        try:
            node = BagRecorderNode()
        except (ConfigError, bag.BagError) as exc:
            rclpy.logging.get_logger('bag_recorder').fatal(f'cannot record: {exc}')
            return 2
        # light callbacks only: one thread keeps the per-message overhead lowest
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.requested and not node.finished and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except ExternalShutdownException:
        pass
    finally:                               # the flag stays: no signal cuts the close short
        if node is not None:
            node.destroy_node()
            node.get_logger().info(f'closed {node.path}: {sum(node.written.values())} '
                                   f'messages written, dropped {node.drops or 0}')
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
