"""The sensor window: fill, contiguous runs, restarts, wrap-around.

The sequence rules that feed it (gaps, late samples) are tested in test_stream.py.
"""
import numpy as np
import pytest

from vla_insertion.core.bridge.sensor_window import SensorWindowBuffer

CHANNELS = ('fx', 'distance')


def samples(first, n=10):
    """Make samples whose first channel is their sequence number, so rows can be identified."""
    seq = np.arange(first, first + n)
    return np.stack([seq, -seq], axis=1).astype(np.float32)


def test_fills_with_nan_leading_rows_then_complete():
    w = SensorWindowBuffer(65, CHANNELS, 650.0)
    w.push(samples(0))
    win = w.window(stamp_s=1.0)
    assert win.samples.shape == (65, 2) and win.samples.dtype == np.float32
    assert win.valid_samples == 10 and not win.complete
    assert np.isnan(win.samples[:55]).all()
    np.testing.assert_array_equal(win.samples[55:, 0], np.arange(10))
    for k in range(1, 7):
        w.push(samples(10 * k))
    win = w.window(stamp_s=1.0)
    assert win.complete and win.valid_samples == 65
    np.testing.assert_array_equal(win.samples[:, 0], np.arange(5, 70))   # newest 65, in order
    assert win.sample_rate_hz == 650.0 and win.channel_names == CHANNELS
    assert w.accepted_samples == 70


def test_a_batch_that_does_not_continue_starts_a_new_run():
    w = SensorWindowBuffer(65, CHANNELS, 650.0)
    for k in range(7):
        w.push(samples(10 * k))
    w.push(samples(80), contiguous=False)           # after a gap or a restart
    win = w.window(stamp_s=1.0, gap_samples=10, late_samples=3)
    assert win.valid_samples == 10
    assert np.isnan(win.samples[:55]).all()         # no splicing across the gap
    np.testing.assert_array_equal(win.samples[55:, 0], np.arange(80, 90))
    assert (win.gap_samples, win.late_samples) == (10, 3)   # the stream's running counts


def test_wraps_around_the_ring():
    w = SensorWindowBuffer(65, CHANNELS, 650.0)
    for k in range(20):
        w.push(samples(7 * k, n=7))
    np.testing.assert_array_equal(w.window(stamp_s=0.0).samples[:, 0], np.arange(75, 140))


def test_batch_longer_than_the_window_keeps_the_newest():
    w = SensorWindowBuffer(8, CHANNELS, 650.0)
    w.push(samples(3, n=5))
    w.push(samples(8, n=20))
    np.testing.assert_array_equal(w.window(stamp_s=0.0).samples[:, 0], np.arange(20, 28))


def test_window_is_a_copy():
    w = SensorWindowBuffer(10, CHANNELS, 650.0)
    w.push(samples(0))
    win = w.window(stamp_s=0.0)
    w.push(samples(10))
    np.testing.assert_array_equal(win.samples[:, 0], np.arange(10))


@pytest.mark.parametrize('args', [(0, CHANNELS, 650.0), (65, (), 650.0), (65, CHANNELS, 0.0)])
def test_rejects_bad_settings(args):
    with pytest.raises(ValueError):
        SensorWindowBuffer(*args)


def test_rejects_channel_mismatch():
    with pytest.raises(ValueError):
        SensorWindowBuffer(65, ('a', 'b', 'c'), 650.0).push(samples(0))
