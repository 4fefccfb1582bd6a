"""link_probe on loopback DDS: what `send` publishes, `listen` prints, one JSON line a message.

Both as programs (the installed launchers), on this module's domain; a chunk and a
diagnostics status published here reach the listener's lines too. Small features: the link's
own figures come from benchmarks/bench_two_hosts.py.
"""
import json
import subprocess

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
import numpy as np
import pytest
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from support import wait_for

from vla_insertion import conversions as conv
from vla_insertion.core.data import ActionChunkData
from vla_insertion.core.orchestration.launch_table import installed_paths
from vla_insertion.msg import ActionChunk
from vla_insertion.ros.qos import DIAGNOSTICS_QOS, STATE_QOS
from vla_insertion.tools.link_probe import feature_qos

pytestmark = pytest.mark.slow


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith('{')]


def test_send_and_listen(ros_env, rclpy_context):
    probe = installed_paths()[0] / 'link_probe'
    listener = subprocess.Popen([str(probe), 'listen', '--duration', '60'], env=ros_env,
                                stdout=subprocess.PIPE, text=True)
    node = Node('link_probe_test', context=rclpy_context)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    try:
        chunks = node.create_publisher(ActionChunk, 'vla/action_chunk', STATE_QOS)
        diagnostics = node.create_publisher(DiagnosticArray, '/diagnostics', DIAGNOSTICS_QOS)
        assert wait_for(lambda: chunks.get_subscription_count() > 0
                        and diagnostics.get_subscription_count() > 0, 30.0)
        chunks.publish(conv.action_chunk_to_msg(ActionChunkData(
            stamp_s=12.5, actions=np.zeros((8, 7), np.float32), dt_s=0.1, sequence=4)))
        diagnostics.publish(DiagnosticArray(status=[DiagnosticStatus(
            name='action_expert', values=[KeyValue(key='drops.features_too_old', value='3')])]))
        sender = subprocess.run([str(probe), 'send', '--duration', '4', '--tokens', '4',
                                 '--dim', '1000', '--rate-hz', '5'], env=ros_env,
                                capture_output=True, text=True, timeout=120)
        assert sender.returncode == 0, sender.stderr
        sent = _lines(sender.stdout)
        published = sent[-1]['published']
        assert published >= 5 and [r['sequence'] for r in sent[:-1]] == list(range(published))
    finally:
        listener.terminate()                 # SIGTERM: the probe ends its spin and exits 0
        out = listener.communicate(timeout=30)[0]
        executor.shutdown()
        node.destroy_node()
    assert listener.returncode == 0
    lines = _lines(out)
    features = [r for r in lines if r['topic'] == 'vla/features']
    assert features and all(r['bytes'] == 4 * 4 * 1000 for r in features)
    assert {r['sequence'] for r in features} <= set(range(published))
    assert all(0.0 <= r['age_s'] < 30.0 for r in features)      # stamped when sent
    assert [r['sequence'] for r in lines if r['topic'] == 'vla/action_chunk'] == [4]
    diag = [r for r in lines if r['topic'] == '/diagnostics']
    assert diag[0]['node'] == 'action_expert'
    assert diag[0]['values'] == {'drops.features_too_old': '3'}


def test_feature_qos_is_the_tables_unless_replaced():
    table = feature_qos('table', 0)
    assert table.depth == 1 and table.reliability.name == 'RELIABLE'
    other = feature_qos('best_effort', 3)
    assert other.depth == 3 and other.reliability.name == 'BEST_EFFORT'
