"""Feature-age models and the pairing of ticks with VL updates: drawn ages follow the model.

The pairing is exercised through the real PairedDataset over synthetic VL updates (evenly spaced,
as the emulated VLM makes them, or jittered) and 10 Hz ticks; many seeded draws are compared with
the stated distribution by the Kolmogorov-Smirnov statistic and quantiles. Update periods are
not multiples of the tick period, so the ticks' phases spread over the update grid (with a
period of 0.2 s every age would be one of two values).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from vla_insertion.core import bag
from vla_insertion.core.config import ConfigError
from vla_insertion.core.train.dataset import FeatureBank, PairedDataset
from vla_insertion.core.train.feature_age import (
    DEFAULT_AGE_SPEC, empirical_ages, load_age_model, pair_weights, uniform_ages)
from vla_insertion.core.train.feature_cache import CachedBag, VlUpdate
from vla_insertion.core.train.split import Episode

MAX_AGE = 1.0


def paired(period_s: float, model, duration_s: float = 60.0, jitter_s: float = 0.0,
           seed: int = 0) -> PairedDataset:
    """Return samples: updates every `period_s` (+ jitter), 10 Hz ticks from 1.2 s on."""
    rng = np.random.default_rng(seed)
    stamps = np.arange(0.0, duration_s, period_s)
    stamps = np.sort(stamps + rng.uniform(0, jitter_s, stamps.size))
    updates = [VlUpdate(s + 0.01, s, (s,)) for s in stamps]   # run 10 ms after the capture
    cached = CachedBag('bag', updates, np.zeros((len(updates), 1, 1), np.float16))
    ticks = np.arange(1.2, duration_s, 0.1)
    n = ticks.size
    part = {'tick_s': list(ticks), 'windows': list(np.zeros((n, 2, 1), np.float32)),
            'states': list(np.zeros((n, 1), np.float32)),
            'actions': list(np.zeros((n, 1, 1), np.float32))}
    return PairedDataset(FeatureBank([cached]), [part], [0], [Episode('bag')], model, MAX_AGE)


def draw_ages(data: PairedDataset, draws: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(data), draws)
    rows, ages = data.pair(index, rng.random(draws))
    stamps = data.bank.bags[0].stamps_s
    np.testing.assert_allclose(ages, data.tick_s[index] - stamps[rows], atol=1e-12)
    return ages


def ks_statistic(samples: np.ndarray, cdf) -> float:
    x = np.sort(samples)
    f = cdf(x)
    n = x.size
    return float(max(np.max(np.arange(1, n + 1) / n - f), np.max(f - np.arange(n) / n)))


def test_uniform_model_pdf_cdf_quantiles():
    model = load_age_model(DEFAULT_AGE_SPEC, MAX_AGE)
    np.testing.assert_allclose(model.pdf(np.array([0.2, 0.5, 0.8])), [0, 1 / 0.385, 0])
    np.testing.assert_allclose(model.cdf(np.array([0.385, 0.5775, 0.77, 0.9])), [0, 0.5, 1, 1])
    np.testing.assert_allclose(model.quantile(np.array([0.1, 0.5, 0.9])),
                               0.385 + 0.385 * np.array([0.1, 0.5, 0.9]))
    # truncated at max_feature_age_s and renormalised
    model = uniform_ages(0.8, 0.4, MAX_AGE)
    assert model.support() == (0.8, 1.0)
    assert model.cdf(np.array([0.9]))[0] == pytest.approx(0.5)


@pytest.mark.parametrize('period_s', [0.385, 0.413])
def test_drawn_ages_follow_a_shifted_uniform(period_s):
    model = uniform_ages(0.3, period_s, MAX_AGE)      # a VLM of latency 0.3 s, period P
    data = paired(period_s, model)
    ages = draw_ages(data, 40_000)
    assert ks_statistic(ages, model.cdf) < 0.02
    np.testing.assert_allclose(np.quantile(ages, [0.1, 0.5, 0.9]),
                               model.quantile(np.array([0.1, 0.5, 0.9])), atol=0.02)
    assert ages.min() >= 0.3 - 1e-9 and ages.max() <= 0.3 + period_s + 1e-9  # the support
    assert data.fallbacks == 0


def test_drawn_ages_follow_a_measured_histogram_on_irregular_updates():
    rng = np.random.default_rng(3)
    measured = np.concatenate([rng.normal(0.35, 0.04, 3000), rng.normal(0.6, 0.06, 2000)])
    model = empirical_ages(measured, MAX_AGE, 'test')
    data = paired(0.07, model, jitter_s=0.03)         # a VLM update every ~70 ms, jittered
    ages = draw_ages(data, 40_000, seed=1)
    assert ks_statistic(ages, model.cdf) < 0.03
    np.testing.assert_allclose(np.quantile(ages, [0.1, 0.5, 0.9]),
                               np.quantile(measured, [0.1, 0.5, 0.9]), atol=0.03)


def test_a_wrong_model_is_detected():
    """The KS check can fail: ages drawn for one model do not pass as another's."""
    data = paired(0.2, uniform_ages(0.3, 0.2, MAX_AGE))
    ages = draw_ages(data, 20_000)
    assert ks_statistic(ages, uniform_ages(0.4, 0.2, MAX_AGE).cdf) > 0.3


def test_newest_takes_the_youngest_update_already_running():
    model = load_age_model('newest', MAX_AGE)
    data = paired(0.385, model)
    # the youngest update whose run (10 ms after its capture) started by the tick, whatever
    # the uniform
    stamps = data.bank.bags[0].stamps_s
    rows, ages = data.pair(np.arange(len(data)), np.full(len(data), 0.99))
    expected = [t - stamps[stamps + 0.01 <= t + 1e-9][-1] for t in data.tick_s]
    np.testing.assert_allclose(ages, expected)


def test_no_update_in_the_support_takes_the_nearest_and_counts_it():
    weights, fell_back = pair_weights(uniform_ages(0.9, 0.05, MAX_AGE), np.array([0.1, 0.5]),
                                      np.array([True, True]))
    assert fell_back and list(weights) == [0.0, 1.0]


def test_specs_from_files_and_bags(tmp_path):
    spec = tmp_path / 'ages.json'
    spec.write_text(json.dumps({'kind': 'uniform', 'low_s': 0.2, 'width_s': 0.3}))
    assert load_age_model(f'json:{spec}', MAX_AGE).support() == pytest.approx((0.2, 0.5))
    spec.write_text(json.dumps({'kind': 'histogram', 'edges_s': [0.1, 0.2, 0.4],
                                'counts': [1, 3]}))
    model = load_age_model(f'json:{spec}', MAX_AGE)
    assert model.cdf(np.array([0.2]))[0] == pytest.approx(0.25)
    for bad in ('gaussian:1', 'uniform:0.3', f'json:{tmp_path / "missing.json"}',
                'uniform:2.0:0.5'):              # the last has no mass below max_feature_age_s
        with pytest.raises(ConfigError):
            load_age_model(bad, MAX_AGE)

    # a live run's chunks: their feature_age_s make the distribution
    ages = np.random.default_rng(0).uniform(0.4, 0.8, 200)
    path = tmp_path / 'live'
    with bag.BagWriter(path) as w:
        w.add_topic('/robot/joint_states', 'sensor_msgs/msg/JointState')
        w.add_topic('/vla/action_chunk', 'vla_insertion/msg/ActionChunk')
        for k in range(3):
            t = 10**9 * (k + 1)
            w.write_msg('/robot/joint_states', t, bag.make_message(
                'sensor_msgs/msg/JointState', header=bag.header(t),
                name=[f'joint_{j + 1}' for j in range(6)], position=np.zeros(6)))
        for k, age in enumerate(ages):
            t = 10**9 + k * 10**7
            w.write_msg('/vla/action_chunk', t, bag.make_message(
                'vla_insertion/msg/ActionChunk', header=bag.header(t), dt_s=0.1, horizon=1,
                action_dim=1, actions=np.zeros(1, np.float32), feature_age_s=float(age)))
    model = load_age_model(f'bag:{path}', MAX_AGE)
    assert ks_statistic(ages, model.cdf) < 0.05
    assert model.support()[0] >= 0.38 and model.support()[1] <= 0.82
