"""QoS profiles and endpoints on the topic table's topics (core/topics.py)."""
from __future__ import annotations

import importlib

from rclpy.lifecycle import LifecycleNode
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from vla_insertion.core.topics import QOS, Topic


def qos_profile(kind: str) -> QoSProfile:
    """Build the rclpy profile of a QoS kind of the topic table (core/topics.py QOS)."""
    spec = QOS[kind]
    return QoSProfile(
        reliability=ReliabilityPolicy.RELIABLE if spec.reliable else ReliabilityPolicy.BEST_EFFORT,
        history=HistoryPolicy.KEEP_LAST, depth=spec.depth,
        durability=(DurabilityPolicy.TRANSIENT_LOCAL if spec.transient_local
                    else DurabilityPolicy.VOLATILE))


# The profiles by name, for code that has no Topic at hand (the reasons are in core/topics.py).
SENSOR_QOS = qos_profile('sensor')
WINDOW_QOS = qos_profile('window')
ROBOT_QOS = qos_profile('robot')
STATE_QOS = qos_profile('state')
LATEST_QOS = qos_profile('latest')
STATIC_QOS = qos_profile('static')
DIAGNOSTICS_QOS = qos_profile('diagnostics')


def message_class(msgtype: str):
    """Return the generated class of 'pkg/msg/Type'."""
    package, _, name = msgtype.split('/')
    return getattr(importlib.import_module(f'{package}.msg'), name)


def publisher(node: Node, msg_type, topic: Topic, name: str | None = None, **kwargs):
    """Create a publisher on a table topic with the table's QoS (`name` for camera views)."""
    return node.create_publisher(msg_type, name or topic.name, qos_profile(topic.qos), **kwargs)


def lifecycle_publisher(node: LifecycleNode, msg_type, topic: Topic, name: str | None = None,
                        **kwargs):
    """Create a publisher that publishes only while its managed node is active."""
    return node.create_lifecycle_publisher(msg_type, name or topic.name, qos_profile(topic.qos),
                                           **kwargs)


def subscription(node: Node, msg_type, topic: Topic, callback, name: str | None = None,
                 **kwargs):
    """Create a subscription on a table topic with the table's QoS."""
    return node.create_subscription(msg_type, name or topic.name, callback,
                                    qos_profile(topic.qos), **kwargs)
