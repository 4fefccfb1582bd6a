"""Clock offset estimation: calibration, tracking, robustness to stalls, clock steps."""
import math

import numpy as np
import pytest

from vla_insertion.core.clock import ClockOffsetEstimator, MonotonicStamp


def _feed(est, offset_s, n, rng, t0=1000.0, period=0.01, delay_scale=0.002):
    """Send n messages through a link with exponential delays; return the last local time."""
    t = t0
    for _ in range(n):
        t += period
        delay = 0.0002 + rng.exponential(delay_scale)
        est.update(sender_s=t + offset_s, local_s=t + delay)
    return t


def test_calibrates_after_n_messages_to_the_min_delay_offset():
    rng = np.random.default_rng(0)
    est = ClockOffsetEstimator(calibration_batches=50)
    _feed(est, 12.3e-3, 49, rng)
    assert not est.report().calibrated
    _feed(est, 12.3e-3, 1, rng, t0=2000.0)
    report = est.report()
    assert report.calibrated and report.samples == 50
    # true offset minus a small delay: within 2 ms below, never above the truth
    assert 12.3e-3 - 2e-3 < report.offset_s < 12.3e-3


def test_provisional_offset_before_calibration_is_usable():
    est = ClockOffsetEstimator(calibration_batches=50)
    assert math.isnan(est.report().offset_s)
    offset = est.update(sender_s=105.0, local_s=100.001)
    assert offset == pytest.approx(4.999)
    assert est.to_local(106.0, 101.0005) == pytest.approx(101.0005)   # less delay: adopted


def test_one_long_stall_does_not_move_the_estimate():
    rng = np.random.default_rng(1)
    est = ClockOffsetEstimator(calibration_batches=20)
    t = _feed(est, -3.0, 100, rng)
    before = est.report().offset_s
    est.update(sender_s=t + 0.01 - 3.0, local_s=t + 0.01 + 2.0)        # delayed by 2 s
    assert est.report().offset_s == pytest.approx(before, abs=1e-9)
    assert est.report().recalibrations == 0


def test_tracks_slow_drift():
    rng = np.random.default_rng(2)
    est = ClockOffsetEstimator(calibration_batches=50)
    t = 0.0
    for i in range(6000):                     # 60 s at 100 Hz, sender clock 100 ppm fast
        t += 0.01
        est.update(sender_s=t * (1 + 1e-4) + 0.5, local_s=t + 0.0002 + rng.exponential(0.001))
    true_offset = t * 1e-4 + 0.5
    assert est.report().offset_s == pytest.approx(true_offset, abs=1.5e-3)


def test_clock_step_recalibrates():
    rng = np.random.default_rng(3)
    est = ClockOffsetEstimator(calibration_batches=20, step_threshold_s=0.5, step_count=10)
    t = _feed(est, 0.0, 100, rng)
    _feed(est, 5.0, 100, rng, t0=t)
    report = est.report()
    assert report.recalibrations == 1 and report.calibrated
    assert report.offset_s == pytest.approx(5.0, abs=3e-3)


@pytest.mark.parametrize('kwargs', [{'calibration_batches': 0}, {'quantile': 1.5},
                                    {'gain': 0.0}])
def test_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        ClockOffsetEstimator(**kwargs)


def test_monotonic_stamp_never_goes_back():
    stamp = MonotonicStamp()
    assert [stamp(t) for t in (1.0, 2.0, 1.5, 3.0)] == [1.0, 2.0, 2.0, 3.0]
    assert stamp.clamped == 1
