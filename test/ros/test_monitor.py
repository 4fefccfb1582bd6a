"""The monitor fills its recorder from /diagnostics, over DDS, by the keys core/health.py reads.

A node publishes one DiagnosticArray as the camera bridge, the VLM, the chunk executor and the
action expert would; the monitor's recorder gets the drop counters, frame counts, the
executor's state and the expert's `untrained` flag (bounded wait, no sleep).
"""
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from vla_insertion.core.evaluation.run_summary import summarize
from vla_insertion.ros.monitor import MonitorNode
from vla_insertion.ros.qos import DIAGNOSTICS_QOS


def _status(name: str, **values: str) -> DiagnosticStatus:
    return DiagnosticStatus(name=name, values=[KeyValue(key=k.replace('__', '.'), value=v)
                                               for k, v in values.items()])


def test_monitor_reads_drops_frames_executor_and_expert_from_diagnostics(
        rclpy_context, spin_until):
    monitor = MonitorNode(context=rclpy_context)
    sender = Node('diagnostics_sender', context=rclpy_context)
    pub = sender.create_publisher(DiagnosticArray, '/diagnostics', DIAGNOSTICS_QOS)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(monitor)
    executor.add_node(sender)
    msg = DiagnosticArray(status=[
        _status('camera_bridge', drops__bad_magic='3', frames__zed_1='120', fps__zed_1='30.0'),
        _status('vlm_node', skipped__stale_views='2', drops__bogus='x'),
        _status('chunk_executor', steps='40', commands_sent='35', armed='True',
                state='tracking', gate__velocity_limit='4'),
        _status('action_expert', untrained='False', drops__no_features='0')])
    rec = monitor.recorder
    try:
        assert spin_until(executor, lambda: pub.get_subscription_count() > 0, 10.0)

        def arrived() -> bool:
            pub.publish(msg)       # until discovery completed and one message got through
            return rec.expert_untrained is not None
        assert spin_until(executor, arrived, 10.0)
        s = summarize(rec)
        assert s['drops'] == {'camera_bridge.bad_magic': 3, 'vlm_node.skipped_stale_views': 2}
        assert s['frames_per_view'] == {'zed_1': 120}
        assert s['executor']['commands'] == 40 and s['executor']['gate'] == {'velocity_limit': 4}
        assert rec.expert_untrained is False
    finally:
        executor.shutdown()
        monitor.destroy_node()
        sender.destroy_node()
