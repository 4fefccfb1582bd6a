"""Sessions, sequences and clocks of a stream (StreamTracker), on record fixtures.

Messages are (key, session, sequence, sender time, receive time) records, as a bridge would pass
them after decoding; the expected outcome of each is known.
"""
import math

import pytest

from vla_insertion.core.bridge.clock import FUTURE_STAMP, PAST_STAMP
from vla_insertion.core.bridge.stream import (
    Drop, LATE, MAX_SEQUENCE_JUMP, STALE_SESSION, StreamTracker)

VIEWS = ('zed_1', 'zed_2', 'oak')


def outcome(tracker, key, session, sequence, sender_s, local_s, count=1):
    """Return the admission, or the Drop cause as a string."""
    try:
        return tracker.admit(key, session, sequence, sender_s, local_s, count)
    except Drop as drop:
        return drop.cause


class Sender:
    """One sender instance: a session, per-key sequences and a clock `offset_s` off ours."""

    def __init__(self, tracker, session, offset_s=0.0, keys=('',), period_s=0.01):
        self.tracker, self.session, self.offset_s = tracker, session, offset_s
        self.keys, self.period_s = keys, period_s
        self.sequence = dict.fromkeys(keys, 0)

    def send(self, t, key=None, error_s=0.0, sequence=None):
        """Send the next message of `key` captured at true time t, received 1 ms later."""
        key = self.keys[0] if key is None else key
        seq = self.sequence[key] if sequence is None else sequence
        self.sequence[key] = seq + 1
        return outcome(self.tracker, key, self.session, seq, t + self.offset_s + error_s,
                       t + 0.001)

    def run(self, t0, n, **kwargs):
        """Send n rounds (one message per key) from true time t0; return the outcomes."""
        return [self.send(t0 + i * self.period_s, key, **kwargs)
                for i in range(n) for key in self.keys]


def causes(results):
    return [r if isinstance(r, str) else r.drop for r in results]


# --- sequences ---------------------------------------------------------------------------

def test_gaps_late_and_repeats_by_sequence_not_by_time():
    tracker = StreamTracker(calibration_batches=5)
    robot = Sender(tracker, session=7)
    robot.run(100.0, 10)
    gap = robot.send(100.1, sequence=15)                 # 10..14 never arrived
    assert gap.gap == 5 and not gap.contiguous and tracker.gaps[''] == 5
    assert robot.send(100.11, sequence=12) == LATE       # a reordered straggler
    assert robot.send(100.12, sequence=15) == LATE       # a repeat
    same_time = robot.send(100.1, sequence=16)           # newer, same sender time: published
    assert not same_time.drop and same_time.contiguous
    assert tracker.late[''] == 2


def test_a_batch_skips_only_its_leading_samples_already_taken():
    tracker = StreamTracker(calibration_batches=5)
    assert tracker.admit('', 1, 0, 10.0, 10.001, count=10).late == 0
    overlap = tracker.admit('', 1, 5, 10.02, 10.021, count=10)     # 5..9 taken already
    assert overlap.late == 5 and overlap.gap == 0 and overlap.contiguous
    assert outcome(tracker, '', 1, 3, 10.03, 10.031, count=10) == LATE   # 3..12: all taken
    assert tracker.late[''] == 15


def test_sequence_wraps_without_a_gap():
    tracker = StreamTracker(calibration_batches=5)
    start = (1 << 32) - 3
    tracker.admit('', 1, start, 1.0, 1.001)
    for i in range(1, 6):
        admitted = tracker.admit('', 1, (start + i) & 0xFFFFFFFF, 1.0 + i / 100, 1.001 + i / 100)
        assert admitted.contiguous
    assert tracker.gaps[''] == 0 and tracker.restarts == 0


def test_a_jump_beyond_the_limit_is_a_restart_not_loss():
    tracker = StreamTracker(calibration_batches=5)
    tracker.admit('', 1, 0, 1.0, 1.001)
    jumped = tracker.admit('', 1, 1 + MAX_SEQUENCE_JUMP + 1, 1.01, 1.011)
    assert jumped.restarted and jumped.gap == 0 and tracker.gaps[''] == 0
    assert tracker.restarts == 1
    back = tracker.admit('', 1, 0, 1.02, 1.021)                    # reset to 0: also a restart
    assert back.restarted and tracker.restarts == 2


def test_the_first_sequence_of_a_session_counts_what_was_missed():
    """Sequences start at 0: a SUB that joined late saw sequence 100 first (100 lost)."""
    tracker = StreamTracker(calibration_batches=5)
    first = tracker.admit('', 1, 100, 1.0, 1.001)
    assert first.gap == 100 and tracker.gaps[''] == 100
    restarted = tracker.admit('', 2, 10, 2.0, 2.001)    # a PUB restart: 10 lost meanwhile
    assert restarted.gap == 10 and tracker.gaps[''] == 110 and tracker.restarts == 1
    joined = tracker.admit('', 3, 10 ** 6, 3.0, 3.001)  # a long-running sender: not loss
    assert joined.gap == 0 and tracker.gaps[''] == 110
    assert any('joined a running sender' in text for _, text in joined.events)


# --- sessions ----------------------------------------------------------------------------

def test_a_restart_starts_from_fresh_state_and_stragglers_are_stale():
    tracker = StreamTracker(VIEWS, calibration_batches=5)
    old = Sender(tracker, session=1, offset_s=100.0, keys=VIEWS, period_s=0.1)
    old.run(0.0, 20)
    # the new sender's clock is 50 s off the old one's, and its sequences start at 0
    new = Sender(tracker, session=2, offset_s=150.0, keys=VIEWS, period_s=0.1)
    first = new.send(2.05, 'zed_1')
    assert not first.drop and first.restarted and tracker.restarts == 1
    assert first.stamp_s == pytest.approx(2.051)        # right at once: no old offset applies
    assert any('new session' in text for _, text in first.events)
    # the old sender's last frames, captured before, delivered after the new one's first
    assert old.send(2.0, 'zed_1') == STALE_SESSION
    assert not old.send(2.0, 'zed_2').drop      # zed_2 still follows the old session: legit
    results = new.run(2.1, 20)
    assert causes(results) == [''] * 60
    assert old.send(2.0, 'zed_2') == STALE_SESSION
    assert tracker.session_switches == 0


def test_a_second_live_sender_with_its_own_session_is_served_not_blocked():
    """A second camera sender ~1123 s off pushes frames for 5 s; then only the first sends."""
    tracker = StreamTracker(VIEWS, calibration_batches=10)
    good = Sender(tracker, session=1, offset_s=0.25, keys=VIEWS, period_s=0.1)
    skewed = Sender(tracker, session=2, offset_s=1123.4, keys=VIEWS, period_s=0.1)
    stamps = {v: [] for v in VIEWS}
    t = 0.0
    for i in range(100):                       # 10 s at 10 fps, the skewed one from 3 to 8 s
        t = i * 0.1
        for sender in (good, skewed) if 30 <= i < 80 else (good,):
            for view in VIEWS:
                result = sender.send(t + (0.03 if sender is skewed else 0.0), view)
                assert not isinstance(result, str) and not result.drop, result
                stamps[view].append((t + (0.03 if sender is skewed else 0.0), result.stamp_s))
    for view in VIEWS:
        # every stamp is its frame's true time, whichever sender sent it
        for true_s, stamp_s in stamps[view]:
            assert true_s - 0.002 < stamp_s <= true_s + 0.001
    assert tracker.restarts == 1 and tracker.session_switches > 0
    # after the skewed sender stopped, every frame of the good one is published
    assert causes(good.run(t + 0.1, 10)) == [''] * 30


@pytest.mark.parametrize('skewed_start,burst,cause', [(5000, 3, FUTURE_STAMP), (0, 1, LATE)])
def test_a_second_sender_with_the_same_session_is_dropped_frame_by_frame(skewed_start, burst,
                                                                         cause):
    """Same session id, clock 1123 s off, its own sequences (ahead of or behind the good one's).

    Its frames are refused one by one and move neither the sequence nor the clock, so every
    frame of the good sender is published.
    """
    tracker = StreamTracker(VIEWS, calibration_batches=10)
    good = Sender(tracker, session=1, keys=VIEWS, period_s=0.1)
    good.run(0.0, 20)
    skewed = Sender(tracker, session=1, offset_s=1123.0, keys=VIEWS)
    skewed.sequence = dict.fromkeys(VIEWS, skewed_start)
    good_results, skewed_results = [], []
    for i in range(50):
        t = 2.0 + i * 0.1
        good_results += [good.send(t, v) for v in VIEWS]
        # bursts of 3 frames per view agree on one offset, but are off the stream's sequence
        skewed_results += [skewed.send(t + 0.01 * k, v) for v in VIEWS for k in range(burst)]
    assert set(causes(skewed_results)) == {cause}
    assert set(causes(good_results)) == {''}
    assert tracker.clock_steps == 0 and sum(tracker.gaps.values()) == 0


def test_one_skewed_view_cannot_rebase_the_others():
    tracker = StreamTracker(VIEWS, calibration_batches=10)
    cams = Sender(tracker, session=1, keys=VIEWS, period_s=0.1)
    cams.run(0.0, 20)
    for i in range(10):
        t = 2.0 + i * 0.1
        assert not cams.send(t, 'zed_1').drop
        cams.send(t, 'oak', error_s=30.0)           # oak's clock stepped by 30 s
    assert tracker.clock_steps == 1                  # oak re-based, zed_1 untouched
    reports = tracker.clock_reports()
    assert reports['oak'].offset_s == pytest.approx(30.0, abs=0.01)
    assert reports['zed_1'].offset_s == pytest.approx(0.0, abs=0.01)


# --- clocks through the tracker: the faults of issue 14 ------------------------------------

@pytest.mark.parametrize('step_s,cause', [(5.0, FUTURE_STAMP), (-5.0, PAST_STAMP)])
def test_robot_clock_steps_cost_two_states_each(step_s, cause):
    tracker = StreamTracker(calibration_batches=50)
    robot = Sender(tracker, session=9, offset_s=0.7)
    robot.run(0.0, 200)
    robot.offset_s += step_s
    results = robot.run(2.0, 500)
    assert causes(results[:3]) == [cause, cause, '']
    assert causes(results[3:]) == [''] * 497
    assert tracker.clock_steps == 1 and tracker.late[''] == 0
    assert any('stepped by' in text for _, text in results[2].events)
    stamps = [r.stamp_s for r in results[2:]]
    assert all(b > a for a, b in zip(stamps, stamps[1:])), 'stamps froze or went back'
    assert stamps[-1] == pytest.approx(2.0 + 499 * 0.01, abs=0.002)


def test_a_future_dated_state_drops_only_itself():
    tracker = StreamTracker(calibration_batches=50)
    robot = Sender(tracker, session=9, offset_s=1700000000.0)
    robot.run(0.0, 200)
    t = 2.005
    rounded_up = math.ceil(t + robot.offset_s) - (t + robot.offset_s)    # 0.995 s
    assert 0 < rounded_up < 1
    assert causes([robot.send(t, error_s=rounded_up)]) == [FUTURE_STAMP]
    results = robot.run(t + 0.01, 200)
    assert causes(results) == [''] * 200 and tracker.late[''] == 0


def test_clock_summary_is_the_median_of_the_followed_clocks():
    tracker = StreamTracker(VIEWS, calibration_batches=3)
    assert math.isnan(tracker.clock_summary()[0]) and tracker.clock_summary()[1] is False
    cams = Sender(tracker, session=1, offset_s=1234.5, keys=VIEWS, period_s=0.1)
    cams.run(0.0, 5)
    offset_s, calibrated = tracker.clock_summary()
    assert offset_s == pytest.approx(1234.499, abs=1e-6) and calibrated
