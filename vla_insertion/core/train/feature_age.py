"""How old the VL features are when the expert acts on them, and how training reproduces it.

Live, the expert acts at tick t on the newest features it holds; they were computed from views
captured at `stamp_s`, so their age is t - stamp_s: the VLM's latency plus however long the
features have been reused since (the expert reports it per chunk as `feature_age_s`). Trained on
features of age 0, the expert would learn a world that it never sees at run time.

An `AgeModel` states the distribution of that age:

    uniform:LOW:WIDTH    shifted uniform, LOW + U(0, WIDTH) [s]: a VLM of latency LOW run back
                         to back with period WIDTH (the default, `DEFAULT_AGE_SPEC`)
    json:FILE            {"kind": "uniform", "low_s": .., "width_s": ..} or
                         {"kind": "empirical", "samples_s": [...]} or
                         {"kind": "histogram", "edges_s": [...], "counts": [...]}
    bag:FOLDER           the `feature_age_s` of every vla/action_chunk recorded in a live run
    newest               no model: the newest features whose VLM run started at or before t
                         (the VLM as if it took no time; the behaviour before ages were drawn)

Pairing (`pair_weights`): a training sample at tick t may use any cached VLM update whose stamp
lies at most `max_feature_age_s` before t. Each candidate k of age a_k gets the weight
density(a_k) x cell_k, cell_k being the width of the age interval it stands for (half the gap
to each neighbour), and one candidate is drawn in proportion. On updates spaced evenly by P
with tick phases spread over P, the drawn ages follow a shifted uniform of width P exactly and
any smooth density to within the Riemann error of a P-wide grid; drawn ages never leave the
model's support unless no candidate lies in it (then the nearest is taken and counted).
"""
from __future__ import annotations

from dataclasses import dataclass
import json
import math
from pathlib import Path

import numpy as np

from vla_insertion.core.config import ConfigError

# The VLM on the reference GPU: 381 ms per inference of five 640x360 views, run back to back
# (~2.6 Hz, docs/vlm.md). Features are then between one and two inference times old.
REFERENCE_VLM_LATENCY_S = 0.385
DEFAULT_AGE_SPEC = f'uniform:{REFERENCE_VLM_LATENCY_S}:{REFERENCE_VLM_LATENCY_S}'
HISTOGRAM_BIN_S = 0.02           # bin width of the density of empirical ages [s]


@dataclass(frozen=True)
class AgeModel:
    """A feature-age distribution as a piecewise-constant density on [0, max_age_s]."""

    kind: str                      # 'uniform', 'histogram' or 'newest'
    edges_s: np.ndarray            # (K + 1,) bin edges [s], ascending ('newest': empty)
    density: np.ndarray            # (K,) probability density per bin [1/s], integrates to 1
    source: str = ''               # where it came from, for logs and checkpoints

    @property
    def newest(self) -> bool:
        return self.kind == 'newest'

    def pdf(self, ages_s: np.ndarray) -> np.ndarray:
        """Return the density at each age [1/s] (0 outside the support)."""
        ages = np.asarray(ages_s, dtype=np.float64)
        i = np.searchsorted(self.edges_s, ages, side='right') - 1
        inside = (i >= 0) & (i < self.density.size) & (ages <= self.edges_s[-1])
        out = np.zeros(ages.shape)
        out[inside] = self.density[i[inside]]
        return out

    def cdf(self, ages_s: np.ndarray) -> np.ndarray:
        """Return P(age <= a) for each age."""
        mass = np.concatenate([[0.0], np.cumsum(self.density * np.diff(self.edges_s))])
        return np.interp(np.asarray(ages_s, dtype=np.float64), self.edges_s, mass)

    def quantile(self, q: np.ndarray) -> np.ndarray:
        """Return the ages [s] below which a fraction q of the mass lies."""
        widths = np.diff(self.edges_s)
        cum = np.concatenate([[0.0], np.cumsum(self.density * widths)])
        q = np.asarray(q, dtype=np.float64)
        j = np.clip(np.searchsorted(cum[1:], q, side='left'), 0, widths.size - 1)  # bin of q
        mass = cum[j + 1] - cum[j]
        within = np.where(mass > 0, (q - cum[j]) / np.where(mass > 0, mass, 1), 0.0)
        return self.edges_s[j] + np.clip(within, 0, 1) * widths[j]

    def support(self) -> tuple[float, float]:
        nonzero = np.flatnonzero(self.density > 0)
        return float(self.edges_s[nonzero[0]]), float(self.edges_s[nonzero[-1] + 1])

    def describe(self) -> str:
        if self.newest:
            return 'newest features (no age model)'
        lo, hi = self.support()
        q = self.quantile(np.array([0.1, 0.5, 0.9]))
        return (f'{self.kind} from {self.source}: support [{lo:.3f}, {hi:.3f}] s, quantiles '
                f'10/50/90 % {q[0]:.3f} / {q[1]:.3f} / {q[2]:.3f} s')


def _histogram(edges: np.ndarray, counts: np.ndarray, max_age_s: float, kind: str,
               source: str) -> AgeModel:
    edges = np.asarray(edges, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    if edges.ndim != 1 or edges.size != counts.size + 1 or counts.size == 0 or \
            not np.all(np.diff(edges) > 0) or not np.all(np.isfinite(edges)) or \
            not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ConfigError(f'feature ages {source}: need ascending finite edges and one '
                          f'non-negative count per bin, got {edges.size} edges, {counts.size} '
                          'counts')
    # truncate to [0, max_age_s]: the node refuses older features, none is younger than 0
    lo, hi = np.clip(edges[:-1], 0.0, max_age_s), np.clip(edges[1:], 0.0, max_age_s)
    kept = counts * np.where(edges[1:] > edges[:-1], (hi - lo) / (edges[1:] - edges[:-1]), 0)
    grid = np.unique(np.concatenate([[0.0], lo, hi, [max_age_s]]))
    mass = np.zeros(grid.size - 1)
    for a, b, m in zip(lo, hi, kept):
        if b > a and m > 0:
            inside = (grid[:-1] >= a) & (grid[1:] <= b)
            mass[inside] += m * np.diff(grid)[inside] / (b - a)
    if not mass.sum() > 0:
        raise ConfigError(f'feature ages {source}: no probability mass in [0, max_feature_age_s '
                          f'= {max_age_s}] s')
    density = mass / mass.sum() / np.diff(grid)
    return AgeModel(kind, grid, density, source)


def uniform_ages(low_s: float, width_s: float, max_age_s: float, source: str = '') -> AgeModel:
    """Return LOW + U(0, WIDTH), truncated to [0, max_age_s]."""
    if not (math.isfinite(low_s) and math.isfinite(width_s) and low_s >= 0 and width_s > 0):
        raise ConfigError(f'uniform feature ages need low_s >= 0 and width_s > 0, got '
                          f'{low_s}, {width_s}')
    return _histogram(np.array([low_s, low_s + width_s]), np.array([1.0]), max_age_s, 'uniform',
                      source or f'uniform:{low_s}:{width_s}')


def empirical_ages(samples_s, max_age_s: float, source: str,
                   bin_s: float = HISTOGRAM_BIN_S) -> AgeModel:
    """Return the histogram density of measured ages (bins of `bin_s`)."""
    samples = np.asarray(samples_s, dtype=np.float64)
    samples = samples[np.isfinite(samples)]
    if samples.size < 10:
        raise ConfigError(f'feature ages {source}: need at least 10 finite samples, got '
                          f'{samples.size}')
    lo = math.floor(samples.min() / bin_s) * bin_s
    edges = lo + bin_s * np.arange(int(math.ceil((samples.max() - lo) / bin_s)) + 2)
    counts, _ = np.histogram(samples, edges)
    return _histogram(edges, counts, max_age_s, 'histogram', source)


def ages_from_bag(path: str | Path) -> np.ndarray:
    """Return the `feature_age_s` of every action chunk recorded in a bag [s]."""
    from vla_insertion.core.bag.recording import load_recording
    rec = load_recording(path, views=())
    ages = np.array([c.feature_age_s for c in rec.chunks], dtype=np.float64)
    if ages.size == 0:
        raise ConfigError(f'{path}: no vla/action_chunk messages to take feature ages from')
    return ages


def load_age_model(spec: str, max_age_s: float) -> AgeModel:
    """Parse a `--feature-age` spec (see the module docstring)."""
    kind, _, rest = spec.partition(':')
    try:
        if kind == 'newest' and not rest:
            return AgeModel('newest', np.zeros(0), np.zeros(0), 'newest')
        if kind == 'uniform':
            low, width = (float(v) for v in rest.split(':'))
            return uniform_ages(low, width, max_age_s, spec)
        if kind == 'bag':
            return empirical_ages(ages_from_bag(rest), max_age_s, spec)
        if kind == 'json':
            doc = json.loads(Path(rest).read_text(encoding='utf-8'))
            what = doc.get('kind')
            if what == 'uniform':
                return uniform_ages(float(doc['low_s']), float(doc['width_s']), max_age_s, spec)
            if what == 'empirical':
                return empirical_ages(doc['samples_s'], max_age_s, spec)
            if what == 'histogram':
                return _histogram(np.asarray(doc['edges_s']), np.asarray(doc['counts']),
                                  max_age_s, 'histogram', spec)
            raise ConfigError(f'{rest}: "kind" must be uniform, empirical or histogram, got '
                              f'{what!r}')
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f'feature ages {spec!r}: {type(exc).__name__}: {exc}') from None
    raise ConfigError(f'feature ages must be newest, uniform:LOW:WIDTH, json:FILE or bag:FOLDER, '
                      f'got {spec!r}')


def pair_weights(model: AgeModel, ages_s: np.ndarray, run_ok: np.ndarray
                 ) -> tuple[np.ndarray, bool]:
    """Return the draw probabilities of one sample's candidate updates, and whether it fell back.

    `ages_s` (m,) ascending: t - stamp of each candidate; `run_ok` (m,): the update's VLM run
    started at or before t ('newest' picks the youngest of those). Fallback: no candidate in the
    model's support, so the one nearest to it is taken.
    """
    m = ages_s.size
    if model.newest:
        weights = np.zeros(m)
        weights[np.flatnonzero(run_ok)[0]] = 1.0
        return weights, False
    if m == 1:
        cells = np.ones(1)
    else:
        gaps = np.diff(ages_s)                                   # (m - 1,)
        cells = 0.5 * (np.concatenate([[gaps[0]], gaps]) + np.concatenate([gaps, [gaps[-1]]]))
    weights = model.pdf(ages_s) * cells
    if weights.sum() > 0:
        return weights / weights.sum(), False
    lo, hi = model.support()
    distance = np.maximum(lo - ages_s, 0) + np.maximum(ages_s - hi, 0)
    weights = np.zeros(m)
    weights[int(np.argmin(distance))] = 1.0
    return weights, True
