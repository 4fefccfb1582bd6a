"""Feature delivery across a link, on arrivals with known answers (core/evaluation/link.py)."""
import math

import pytest

from vla_insertion.core.evaluation.link import feature_delivery, link_budget_s, link_delays


def test_gaps_between_the_first_and_last_arrival_are_lost_and_late_ones_not_in_time():
    # sequences 10..19: 13 and 17 lost, 15 late, 12 arrived twice (its first arrival counts)
    arrivals = [(s, 0.02) for s in (10, 11, 12, 14, 16, 18, 19)] + [(15, 0.9), (12, 5.0)]
    out = feature_delivery(arrivals, max_age_s=0.5)
    assert (out['published'], out['delivered'], out['in_time']) == (10, 8, 7)
    assert out['delivered_fraction'] == pytest.approx(0.8)
    assert out['in_time_fraction'] == pytest.approx(0.7)
    assert out['age_s_max'] == pytest.approx(0.9) and out['age_s_p50'] == pytest.approx(0.02)


def test_the_senders_own_list_counts_losses_at_the_edges_and_ignores_other_sequences():
    out = feature_delivery([(3, 0.1), (4, 0.1), (99, 0.1)], max_age_s=1.0,
                           published=range(0, 6))
    assert (out['published'], out['delivered'], out['in_time']) == (6, 2, 2)
    assert out['in_time_fraction'] == pytest.approx(2 / 6)


def test_nothing_arrived():
    out = feature_delivery([], max_age_s=1.0)
    assert out['published'] == out['delivered'] == 0
    assert math.isnan(out['in_time_fraction']) and math.isnan(out['age_s_p99'])
    assert feature_delivery([], 1.0, published=[1, 2])['in_time_fraction'] == 0.0


def test_the_links_budget_is_what_the_vlm_leaves_of_the_experts_limit():
    assert link_budget_s(1.0) == pytest.approx(0.6)
    assert link_budget_s(1.0, vlm_age_s=0.25) == pytest.approx(0.75)


def test_link_delays_pair_the_two_ends_by_sequence():
    here = [(1, 10.0), (2, 10.4), (3, 10.8), (2, 11.0)]
    there = [(2, 10.45), (1, 10.02), (4, 12.0), (1, 13.0), (3, 11.1)]
    delays = link_delays(here, there)
    assert [s for s, _ in delays] == [2, 1, 3]
    assert [d for _, d in delays] == pytest.approx([0.05, 0.02, 0.3])
