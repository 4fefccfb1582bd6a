"""Feature statistics as LeRobotDataset stores them (core/export/stats.py)."""
from __future__ import annotations

import numpy as np
import pytest

from vla_insertion.core.export.stats import ImageHistogram, QUANTILES, to_json, vector_stats


def test_vector_stats_per_dimension_with_quantiles():
    values = np.random.default_rng(0).normal(size=(500, 3)).astype(np.float32)
    stats = vector_stats(values)
    np.testing.assert_allclose(stats['mean'], values.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats['std'], values.std(axis=0), rtol=1e-5)
    np.testing.assert_array_equal(stats['min'], values.min(axis=0))
    np.testing.assert_array_equal(stats['max'], values.max(axis=0))
    assert stats['count'].tolist() == [500]
    assert set(QUANTILES) <= set(stats)
    np.testing.assert_allclose(stats['q50'], np.median(values, axis=0), rtol=1e-5)
    assert np.all(stats['q01'] < stats['q10']) and np.all(stats['q90'] < stats['q99'])
    # a scalar column keeps one value per statistic, as LeRobot's shape (1,)
    scalar = vector_stats(np.arange(10, dtype=np.int64))
    assert scalar['min'].tolist() == [0.0] and scalar['max'].tolist() == [9.0]
    assert scalar['q50'].shape == (1,)


def test_image_stats_per_channel_in_unit_range():
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (6, 8, 3), dtype=np.uint8) for _ in range(4)]
    for f in frames:                          # a channel with a known minimum
        f[..., 2] = np.maximum(f[..., 2], 7)
    frames[1][0, 0, 2] = 3
    histogram = ImageHistogram()
    for f in frames:
        histogram.add(f)
    stats = histogram.stats()
    pixels = np.stack(frames).reshape(-1, 3) / 255.0
    assert all(v.shape == (3, 1, 1) for k, v in stats.items() if k != 'count')
    np.testing.assert_allclose(stats['mean'].ravel(), pixels.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats['std'].ravel(), pixels.std(axis=0), rtol=1e-9)
    np.testing.assert_array_equal(stats['min'].ravel(), pixels.min(axis=0))
    np.testing.assert_array_equal(stats['max'].ravel(), pixels.max(axis=0))
    assert stats['min'][2, 0, 0] == pytest.approx(3 / 255)
    # quantiles: the smallest value whose cumulative share reaches q
    for key, q in QUANTILES.items():
        expected = np.quantile(pixels, q, axis=0, method='inverted_cdf')
        np.testing.assert_allclose(stats[key].ravel(), expected, rtol=1e-12)
    assert stats['count'].tolist() == [4]
    # merged histograms are the histogram of every frame
    a, b = ImageHistogram(), ImageHistogram()
    a.add(frames[0])
    for f in frames[1:]:
        b.add(f)
    a.merge(b)
    np.testing.assert_array_equal(a.counts, histogram.counts)
    assert a.frames == 4


def test_to_json_gives_nested_lists():
    out = to_json({'x': {'mean': np.zeros((3, 1, 1)), 'count': np.array([2])}})
    assert out == {'x': {'mean': [[[0.0]], [[0.0]], [[0.0]]], 'count': [2]}}
