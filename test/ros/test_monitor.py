"""The monitor reads drop counters and camera frame counts from /diagnostics values."""
from vla_insertion.ros import monitor


def test_monitor_reads_drop_and_frame_keys_from_diagnostics():
    values = {'drops.bad_magic': '3', 'skipped.stale_views': '2', 'drops.bogus': 'x',
              'frames.zed_1': '120', 'fps.zed_1': '30.0', 'received': '7'}
    assert monitor.drop_counts(values) == {'bad_magic': 3, 'skipped_stale_views': 2}
    assert monitor.frame_counts(values) == {'zed_1': 120}
