"""The clock model: calibration, tracking, stalls, bad times and clock steps, with known answers.

A link is simulated by sender times `t + offset` received at `t + delay`, with exponential
delays; the clock must map each message back to ~`t` (its true time on the local clock).
"""
import math

import numpy as np
import pytest

from vla_insertion.core.bridge.clock import (
    ClockOffsetEstimator, FUTURE_STAMP, PAST_STAMP, SenderClock)


def _feed(est, offset_s, n, rng, t0=1000.0, period=0.01, delay_scale=0.002):
    """Send n messages through a link with exponential delays; return the last local time."""
    t = t0
    for _ in range(n):
        t += period
        delay = 0.0002 + rng.exponential(delay_scale)
        est.update(sender_s=t + offset_s, local_s=t + delay)
    return t


# --- the offset estimator ------------------------------------------------------------------

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


def test_tracks_slow_drift():
    rng = np.random.default_rng(2)
    est = ClockOffsetEstimator(calibration_batches=50)
    t = 0.0
    for i in range(6000):                     # 60 s at 100 Hz, sender clock 100 ppm fast
        t += 0.01
        est.update(sender_s=t * (1 + 1e-4) + 0.5, local_s=t + 0.0002 + rng.exponential(0.001))
    true_offset = t * 1e-4 + 0.5
    assert est.report().offset_s == pytest.approx(true_offset, abs=1.5e-3)


def test_rebase_starts_a_new_calibration_from_the_given_values():
    est = ClockOffsetEstimator(calibration_batches=5)
    _feed(est, 0.0, 10, np.random.default_rng(3))
    assert est.calibrated
    assert est.rebase([4.998, 4.999, 4.997]) == 4.999      # the least delayed
    assert not est.calibrated and est.offset_s == 4.999
    est.update(1005.0, 1000.0005)
    est.update(1005.01, 1000.0105)
    assert est.calibrated and est.offset_s == pytest.approx(4.9995)


def test_least_delayed_is_the_largest_value_in_the_window():
    est = ClockOffsetEstimator(calibration_batches=5, track_window=20, step_threshold_s=1e9)
    values = np.random.default_rng(4).normal(0.0, 0.01, 500)
    for i, d in enumerate(values):
        est.update(sender_s=100.0 + d, local_s=100.0)
        assert est.least_delayed() == pytest.approx(values[max(0, i - 19):i + 1].max())


@pytest.mark.parametrize('kwargs', [{'calibration_batches': 0}, {'quantile': 1.5},
                                    {'gain': 0.0}])
def test_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        ClockOffsetEstimator(**kwargs)


# --- the sender clock ----------------------------------------------------------------------

class Link:
    """A sender at 100 Hz whose clock is `offset_s` ahead of ours, over a jittery link."""

    def __init__(self, clock, offset_s=0.3, seed=0, period_s=0.01):
        self.clock = clock
        self.offset_s = offset_s
        self.rng = np.random.default_rng(seed)
        self.period_s = period_s
        self.t = 1000.0                       # true time of the next message
        self.local_step_s = 0.0               # our clock minus the true time [s]
        self.log = []                         # (true time on our clock, receive time, Mapping)

    def send(self, n=1, sender_error_s=0.0, delay_s=None):
        """Send n messages; the sender stamps them `sender_error_s` off its own clock."""
        out = []
        for _ in range(n):
            self.t += self.period_s
            delay = 0.0003 + self.rng.exponential(0.001) if delay_s is None else delay_s
            local = self.t + self.local_step_s
            mapping = self.clock.stamp(self.t + self.offset_s + sender_error_s, local + delay)
            self.log.append((local, local + delay, mapping))
            out.append(mapping)
        return out

    def published(self):
        return [(t, r, m.stamp_s) for t, r, m in self.log if not m.cause]


def _calibrated_link(**kwargs):
    link = Link(SenderClock(calibration_batches=50), **kwargs)
    link.send(100)
    return link


def _check_stamps(link, max_error_s=0.005):
    """Check published stamps (never after receipt, never back); return their errors [s]."""
    published = link.published()
    stamps = np.array([s for _, _, s in published])
    assert (np.diff(stamps) >= 0).all(), 'stamps went back'
    assert all(s <= r for _, r, s in published), 'a stamp after its receive time'
    errors = np.array([s - t for t, _, s in published])
    return errors


def test_stamps_follow_the_true_time():
    link = _calibrated_link()
    link.send(500)
    errors = _check_stamps(link)[100:]
    assert np.abs(errors).max() < 0.003          # within the delay jitter of the true time
    assert link.clock.report().calibrated and link.clock.steps == 0


@pytest.mark.parametrize('error_s', [0.06, 0.37, 0.99])
def test_one_future_dated_message_is_dropped_and_costs_nothing_else(error_s):
    """The sender rounded one time up by under 1 s: only that message is dropped."""
    link = _calibrated_link()
    offset = link.clock.offset_s
    [bad] = link.send(sender_error_s=error_s)
    assert bad.cause == FUTURE_STAMP and math.isnan(bad.stamp_s)
    after = link.send(200)
    assert all(not m.cause for m in after), 'a good message after the bad one was dropped'
    assert link.clock.offset_s == pytest.approx(offset, abs=1e-3)
    assert link.clock.steps == 0
    errors = _check_stamps(link)
    assert np.abs(errors[-200:]).max() < 0.003


def test_a_slightly_early_time_is_held_not_dropped():
    link = _calibrated_link()
    link.send()
    [held] = link.send(sender_error_s=-0.03)     # 30 ms back: within the tolerance
    assert not held.cause
    assert held.stamp_s == link.log[-2][2].stamp_s     # held at the previous stamp
    assert link.clock.held == 1
    assert all(not m.cause for m in link.send(50))


@pytest.mark.parametrize('step_s,cause', [(5.0, FUTURE_STAMP), (-5.0, PAST_STAMP),
                                          (0.2, FUTURE_STAMP), (-0.2, PAST_STAMP)])
def test_a_clock_step_costs_two_messages_and_rebases(step_s, cause):
    """The sender's clock is set by step_s: 2 messages dropped, the 3rd re-bases the clock."""
    link = _calibrated_link()
    link.offset_s += step_s
    first = link.send(3)
    assert [m.cause for m in first] == [cause, cause, '']
    assert first[2].step_s == pytest.approx(step_s, abs=0.005)
    assert link.clock.steps == 1
    after = link.send(300)
    assert all(not m.cause for m in after)
    errors = _check_stamps(link)
    assert np.abs(errors[-300:]).max() < 0.005, 'stamps after the step are not the true time'
    assert link.clock.report().calibrated


def test_a_local_clock_step_forward_rebases_after_a_second():
    """Our clock jumps 5 s ahead: every message looks 5 s delayed, consistently."""
    link = _calibrated_link()
    link.local_step_s = 5.0
    lagging = link.send(110)
    assert all(not m.cause for m in lagging)          # published, some with stamps 5 s old
    assert link.clock.steps == 1
    assert lagging[0].stamp_s == pytest.approx(link.log[-110][0] - 5.0, abs=0.003)
    link.send(100)
    errors = _check_stamps(link)
    assert np.abs(errors[-100:]).max() < 0.005


def test_a_slowly_draining_backlog_is_not_a_step():
    """The receiver fell 2 s behind and catches up at 1.25 x the send rate."""
    link = _calibrated_link()
    arrival = link.t + 2.0
    for _ in range(1000):
        link.t += link.period_s
        arrival = max(arrival + link.period_s / 1.25, link.t + 0.0003)
        link.log.append((link.t, arrival, link.clock.stamp(link.t + link.offset_s, arrival)))
    assert link.clock.steps == 0
    assert all(not m.cause for _, _, m in link.log)
    # the backlog's last 0.5 s enters the offset's window: stamps run a little fresh meanwhile
    assert np.abs(_check_stamps(link)).max() < 0.1


def test_a_link_that_delivers_in_bursts_drops_nothing():
    """Messages flushed once a second arrive 0 to 1 s late, and none is future-dated.

    The freshest tenth are up to 0.1 s less delayed than the offset's quantile says, but not
    ahead of the least delayed recent message.
    """
    link = _calibrated_link()
    for _ in range(20):
        flush = link.t + 1.0
        for _ in range(100):
            link.t += link.period_s
            link.log.append((link.t, flush, link.clock.stamp(link.t + link.offset_s, flush)))
    assert all(not m.cause for _, _, m in link.log) and link.clock.steps == 0
    _check_stamps(link)


def test_a_burst_after_a_stall_is_published_with_its_old_stamps_and_no_step():
    """The receiver stalled 2 s: 200 messages arrive at once, each correctly stamped old."""
    link = _calibrated_link()
    burst_end = link.t + 200 * link.period_s
    for _ in range(200):
        link.t += link.period_s
        mapping = link.clock.stamp(link.t + link.offset_s, burst_end)
        link.log.append((link.t, burst_end, mapping))
    link.send(100)
    assert link.clock.steps == 0
    assert all(not m.cause for _, _, m in link.log)
    errors = _check_stamps(link)
    assert np.abs(errors).max() < 0.003


def test_a_future_time_while_calibrating_is_absorbed_or_dropped_never_published_ahead():
    clock = SenderClock(calibration_batches=50)
    link = Link(clock)
    link.send(5)
    link.send(sender_error_s=1123.0)               # a second sender's time, 1123 s off
    link.send(100)
    assert clock.steps == 0 and clock.report().calibrated
    causes = [m.cause for _, _, m in link.log]
    assert causes.count(FUTURE_STAMP) == 1 and causes[5] == FUTURE_STAMP
    _check_stamps(link)


def test_stamps_of_an_uncalibrated_clock_never_run_ahead_of_the_receive_time():
    clock = SenderClock(calibration_batches=1000)
    link = Link(clock)
    link.send(300)
    errors = _check_stamps(link)
    assert errors.min() > -0.01                    # provisional: the least delay seen so far


@pytest.mark.parametrize('kwargs', [{'tolerance_s': 0.0}, {'step_messages': 0},
                                    {'tolerance_s': 1.0, 'step_threshold_s': 0.5}])
def test_sender_clock_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        SenderClock(**kwargs)
