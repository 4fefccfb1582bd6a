"""Feature delivery across a link: what arrived of vla/features, how late and how old.

Listeners on both hosts (tools/link_probe.py) note each feature set's sequence, arrival time
and age (arrival minus the header stamp). What the link adds to a set is its arrival on the
robot host less its arrival on the sending host (`link_delays`); the numbers here say how many
of those published arrived at all, how many in time (the link added at most what the expert's
`max_feature_age_s` leaves after the VLM's own latency: `link_budget_s`), and the delays or
ages. ROS-free, shared by the two-host test and benchmark.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

# How old the 3B VLM's features already are when published, on the reference GPU (docs/vlm.md:
# 381 ms of inference, feature age 400 ms at 2.6 Hz) [s]. What is left of the expert's
# max_feature_age_s is the link's budget: a set that takes longer to cross arrives stale.
VLM_3B_AGE_S = 0.4


def link_budget_s(max_feature_age_s: float, vlm_age_s: float = VLM_3B_AGE_S) -> float:
    """Return the most the link may add to a feature set's age for it to arrive in time [s]."""
    return max_feature_age_s - vlm_age_s


def link_delays(here: Iterable[tuple[int, float]], there: Iterable[tuple[int, float]]
                ) -> list[tuple[int, float]]:
    """Return (sequence, delay_s) of the sets that arrived at both ends: there less here.

    here, there: (sequence, arrival time [s]) on the sending host and across the link; a
    repeated sequence counts at its first arrival.
    """
    first: dict[int, float] = {}
    for sequence, t_s in here:
        first.setdefault(int(sequence), float(t_s))
    seen: set[int] = set()
    out = []
    for sequence, t_s in there:
        if int(sequence) in first and int(sequence) not in seen:
            seen.add(int(sequence))
            out.append((int(sequence), float(t_s) - first[int(sequence)]))
    return out


def feature_delivery(arrivals: Iterable[tuple[int, float]], max_age_s: float,
                     published: Iterable[int] | None = None) -> dict:
    """Return delivery and ages of a window of published feature sets.

    arrivals: (sequence, age_s) of each feature set that arrived; a repeated sequence counts
        once, at its first arrival.
    max_age_s: the oldest a feature set may be and still count as in time [s].
    published: the sequences published in the window, when the sender says (the synthetic
        sender); arrivals of others are left out. Otherwise every sequence from the first to
        the last that arrived (a set lost at either end of the window is not seen).

    Keys: published, delivered, in_time, delivered_fraction, in_time_fraction (of published;
    NaN when none), age_s_p50, age_s_p99, age_s_max (of those delivered; NaN when none).
    """
    first: dict[int, float] = {}
    for sequence, age_s in arrivals:
        first.setdefault(int(sequence), float(age_s))
    if published is not None:
        expected = {int(s) for s in published}
        first = {s: age for s, age in first.items() if s in expected}
        count = len(expected)
    else:
        count = max(first) - min(first) + 1 if first else 0
    ages = np.array(list(first.values()), dtype=float)
    in_time = int((ages <= max_age_s).sum())

    def fraction(n: int) -> float:
        return n / count if count else float('nan')

    def percentile(q: float) -> float:
        return float(np.percentile(ages, q)) if ages.size else float('nan')

    return {'published': count, 'delivered': len(first), 'in_time': in_time,
            'delivered_fraction': fraction(len(first)), 'in_time_fraction': fraction(in_time),
            'age_s_p50': percentile(50), 'age_s_p99': percentile(99),
            'age_s_max': float(ages.max()) if ages.size else float('nan')}
