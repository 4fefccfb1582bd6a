"""Feature statistics as LeRobotDataset stores them, computed exactly over every frame.

Each numeric feature gets min, max, mean, std (population), count and the quantiles q01, q10,
q50, q90, q99, per dimension; a feature of shape (1,) keeps one value per statistic. Images get
them per channel, of pixel values scaled to [0, 1], with shape (3, 1, 1), from the 256-bin
histogram of every pixel of every frame (a quantile is the smallest value whose cumulative share
reaches it); their count is the number of frames. LeRobot samples frames and pools per-episode
quantiles; these are exact, so stats.json equals the statistics of the concatenated episodes.
"""
from __future__ import annotations

import numpy as np

QUANTILES = {'q01': 0.01, 'q10': 0.10, 'q50': 0.50, 'q90': 0.90, 'q99': 0.99}


def vector_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """Return the statistics of (n,) or (n, dim) values, per dimension."""
    v = np.asarray(values, dtype=np.float64)
    v = v.reshape(v.shape[0], -1)                               # (n, dim)
    stats = {'min': v.min(axis=0), 'max': v.max(axis=0), 'mean': v.mean(axis=0),
             'std': v.std(axis=0), 'count': np.array([v.shape[0]])}
    for key, q in QUANTILES.items():
        stats[key] = np.quantile(v, q, axis=0)
    return stats


class ImageHistogram:
    """Per-channel counts of the 256 values of uint8 RGB frames."""

    def __init__(self) -> None:
        self.counts = np.zeros((3, 256), dtype=np.int64)       # (channel, value)
        self.frames = 0

    def add(self, rgb: np.ndarray) -> None:
        """Count one (H, W, 3) uint8 frame."""
        shifted = rgb.reshape(-1, 3).astype(np.int32) + np.array([0, 256, 512], np.int32)
        self.counts += np.bincount(shifted.ravel(), minlength=768).reshape(3, 256)
        self.frames += 1

    def merge(self, other: ImageHistogram) -> None:
        self.counts += other.counts
        self.frames += other.frames

    def stats(self) -> dict[str, np.ndarray]:
        """Return the statistics per channel of values / 255, each shaped (3, 1, 1)."""
        levels = np.arange(256) / 255.0
        total = self.counts.sum(axis=1)                         # (3,)
        mean = self.counts @ levels / total
        std = np.sqrt(np.maximum(self.counts @ levels ** 2 / total - mean ** 2, 0.0))
        seen = self.counts > 0
        stats = {'min': levels[seen.argmax(axis=1)],
                 'max': levels[255 - seen[:, ::-1].argmax(axis=1)],
                 'mean': mean, 'std': std}
        share = np.cumsum(self.counts, axis=1) / total[:, None]
        for key, q in QUANTILES.items():
            stats[key] = levels[(share >= q - 1e-12).argmax(axis=1)]
        stats = {k: v.reshape(3, 1, 1) for k, v in stats.items()}
        stats['count'] = np.array([self.frames])
        return stats


def to_json(stats: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, list]]:
    """Return {feature: {statistic: nested lists}} for JSON or a parquet row."""
    return {key: {name: value.tolist() for name, value in feature.items()}
            for key, feature in stats.items()}
