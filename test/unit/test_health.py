"""Rates, latency summaries, drop counters and health levels with known answers."""
import math
import threading

import pytest

from vla_insertion.core.health import DropCounter, HealthReport, LatencyStats, RateMeter


def test_rate_meter_counts_events_in_its_window():
    meter = RateMeter(window_s=1.0)
    for k in range(21):          # 10 Hz for 2 s
        meter.tick(k * 0.1)
    assert meter.count == 21
    assert meter.rate_hz(2.0) == pytest.approx(10.0)   # the last second only
    assert meter.rate_hz(10.0) == 0.0                  # everything aged out


def test_latency_summary():
    stats = LatencyStats(maxlen=100)
    assert stats.summary()['n'] == 0 and math.isnan(stats.summary()['mean'])
    for v in range(1, 101):      # 1..100 ms
        stats.add(v)
    s = stats.summary()
    assert (s['n'], s['mean'], s['max']) == (100, 50.5, 100.0)
    assert s['p50'] == pytest.approx(50.5) and s['p99'] == pytest.approx(99.01)
    stats.add(1000.0)            # the oldest value falls out of the window
    assert stats.summary()['n'] == 100 and stats.summary()['max'] == 1000.0


def test_drop_counter_is_thread_safe():
    drops = DropCounter()

    def count():
        for _ in range(1000):
            drops.count('truncated')
    threads = [threading.Thread(target=count) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    drops.count('oversized', 3)
    assert drops.as_dict() == {'truncated': 4000, 'oversized': 3}
    assert drops.total() == 4003


def test_drop_counter_reports_its_causes_from_the_start():
    drops = DropCounter(('late', 'future_stamp'))
    assert drops.as_dict() == {'late': 0, 'future_stamp': 0} and drops.total() == 0
    drops.count('late')
    drops.count('socket_error')          # a cause not named up front is still counted
    assert drops.as_dict() == {'late': 1, 'future_stamp': 0, 'socket_error': 1}


def test_health_report_keeps_the_worst_level_and_every_reason():
    report = HealthReport()
    report.escalate('WARN', 'slow')
    report.escalate('ERROR', 'no input')
    report.escalate('WARN', 'late')
    assert report.level == 'ERROR'
    assert report.message == 'slow; no input; late'
