"""The sensor window: fill, order, gaps, late and duplicate batches, restarts, wrap-around."""
import numpy as np
import pytest

from vla_insertion.core.sensor_window import SensorWindowBuffer
from vla_insertion.core.wire import SensorBatch

CHANNELS = ('fx', 'distance')


def batch(first, n=10, session=1):
    """Make a batch whose first channel is the sequence number, so rows can be identified."""
    seq = np.arange(first, first + n)
    samples = np.stack([seq % (1 << 32), -seq], axis=1).astype(np.float32)
    return SensorBatch(sequence=first % (1 << 32), times_s=1.0 + seq / 650.0, samples=samples,
                       session=session)


def test_fills_with_nan_leading_rows_then_complete():
    w = SensorWindowBuffer(65, CHANNELS, 650.0)
    w.push(batch(0))
    win = w.window(stamp_s=1.0)
    assert win.samples.shape == (65, 2) and win.samples.dtype == np.float32
    assert win.valid_samples == 10 and not win.complete
    assert np.isnan(win.samples[:55]).all()
    np.testing.assert_array_equal(win.samples[55:, 0], np.arange(10))
    for k in range(1, 7):
        w.push(batch(10 * k))
    win = w.window(stamp_s=1.0)
    assert win.complete and win.valid_samples == 65
    np.testing.assert_array_equal(win.samples[:, 0], np.arange(5, 70))   # newest 65, in order
    assert win.sample_rate_hz == 650.0 and win.channel_names == CHANNELS


def test_gap_is_counted_and_marks_the_window_incomplete():
    w = SensorWindowBuffer(65, CHANNELS, 650.0)
    for k in range(7):
        w.push(batch(10 * k))
    result = w.push(batch(80))                  # samples 70..79 never arrived
    assert result.gap == 10 and result.accepted == 10
    win = w.window(stamp_s=1.0)
    assert win.gap_samples == 10 and win.valid_samples == 10
    assert np.isnan(win.samples[:55]).all()     # no splicing across the gap
    np.testing.assert_array_equal(win.samples[55:, 0], np.arange(80, 90))


def test_late_and_duplicate_batches_are_dropped():
    w = SensorWindowBuffer(65, CHANNELS, 650.0)
    for k in range(8):
        w.push(batch(10 * k))
    before = w.window(stamp_s=1.0).samples.copy()
    result = w.push(batch(30))                  # a stale repeat
    assert (result.accepted, result.late, result.gap) == (0, 10, 0)
    np.testing.assert_array_equal(w.window(stamp_s=1.0).samples, before)
    result = w.push(batch(75))                  # overlaps the newest by 5
    assert (result.accepted, result.late) == (5, 5)
    win = w.window(stamp_s=1.0)
    np.testing.assert_array_equal(win.samples[:, 0], np.arange(20, 85))
    assert win.late_samples == 15 and win.gap_samples == 0


def test_new_session_restarts_the_window():
    w = SensorWindowBuffer(65, CHANNELS, 650.0)
    for k in range(7):
        w.push(batch(10 * k))
    result = w.push(batch(0, session=2))        # sender restarted: sequence from 0
    assert result.restarted and result.late == 0 and result.accepted == 10
    assert w.restarts == 1 and w.valid_samples == 10
    stale = w.push(batch(70, session=1))        # the old sender's last datagram, delayed
    assert stale.stale and stale.accepted == 0 and w.restarts == 1 and w.valid_samples == 10


def test_huge_sequence_jump_is_a_reset_not_loss():
    w = SensorWindowBuffer(65, CHANNELS, 650.0, max_jump_samples=1000)
    w.push(batch(0))
    result = w.push(batch(10 ** 6))
    assert result.restarted and result.gap == 0 and w.gap_samples == 0


def test_sequence_wraps_without_a_gap():
    w = SensorWindowBuffer(65, CHANNELS, 650.0)
    start = (1 << 32) - 35
    for k in range(7):
        result = w.push(batch(start + 10 * k))
        assert result.gap == 0 and result.late == 0
    assert w.valid_samples == 65


def test_batch_longer_than_the_window_keeps_the_newest():
    w = SensorWindowBuffer(8, CHANNELS, 650.0)
    w.push(batch(3, n=5))
    w.push(batch(8, n=20))
    np.testing.assert_array_equal(w.window(stamp_s=0.0).samples[:, 0], np.arange(20, 28))


def test_window_is_a_copy():
    w = SensorWindowBuffer(10, CHANNELS, 650.0)
    w.push(batch(0))
    win = w.window(stamp_s=0.0)
    w.push(batch(10))
    np.testing.assert_array_equal(win.samples[:, 0], np.arange(10))


@pytest.mark.parametrize('args', [(0, CHANNELS, 650.0), (65, (), 650.0), (65, CHANNELS, 0.0)])
def test_rejects_bad_settings(args):
    with pytest.raises(ValueError):
        SensorWindowBuffer(*args)


def test_rejects_channel_mismatch():
    with pytest.raises(ValueError):
        SensorWindowBuffer(65, ('a', 'b', 'c'), 650.0).push(batch(0))
