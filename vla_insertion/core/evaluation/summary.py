"""The one episode summary: success rate, outcomes, forces, smoothness and interventions.

Every program that scores episodes reports them in these keys: the in-process closed loop
(`summarize_episodes`, tools closed_loop and policy_report), the real nodes on sim_cell
(core/orchestration/cell_run.py: `summarize_outcomes` of sim_cell's end reports, with the
pipeline numbers from /diagnostics, core/health.py `pipeline_numbers`) and the demo's run
summary (core/evaluation/run_summary.py).

    episodes, successes, success_rate, outcomes (reason -> count), time_to_insert_s_mean,
    peak_force_n_mean, peak_force_n_max, mean_force_n_mean, per_episode

The demo's summary adds `held_out`: the closed-loop evaluation its policy's build ran on
held-out holes (`held_out_evaluation`), printed beside the live episodes (`success_text`).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:      # the demo's summary needs no simulator
    from vla_insertion.core.sim.loop import EpisodeMetrics


def _finite(values: Iterable) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _mean(values: Iterable) -> float | None:
    finite = _finite(values)
    return float(np.mean(finite)) if finite else None


def summarize_outcomes(reports: list[Mapping]) -> dict:
    """Summarise episode end reports (sim_cell's episode_v1 ends, EpisodeRecord.as_dict()).

    Each report has `success`, `reason`, `time_to_insert_s` (None without success),
    `peak_force_n` and `mean_force_n`. Means and maxima are None without a value.
    """
    rows = [dict(r) for r in reports]
    successes = [r for r in rows if r['success']]
    outcomes: dict[str, int] = {}
    for r in rows:
        reason = r.get('reason') or 'unjudged'
        outcomes[reason] = outcomes.get(reason, 0) + 1
    peaks = _finite(r.get('peak_force_n') for r in rows)
    return {'episodes': len(rows), 'successes': len(successes),
            'success_rate': len(successes) / len(rows) if rows else None,
            'outcomes': outcomes,
            'time_to_insert_s_mean': _mean(r.get('time_to_insert_s') for r in successes),
            'peak_force_n_mean': _mean(peaks), 'peak_force_n_max': max(peaks, default=None),
            'mean_force_n_mean': _mean(r.get('mean_force_n') for r in rows),
            'per_episode': rows}


def summarize_episodes(episodes: list[EpisodeMetrics]) -> dict:
    """Summarise the outcomes and the pipeline's smoothness, starvation and interventions.

    Per-episode numbers of the in-process loop (core/sim/loop.py), summed or averaged over the
    episodes; the same keys as core/health.py `pipeline_numbers` gives a run of the real nodes.
    """
    rows = [e.as_dict() for e in episodes]
    gate: dict[str, int] = {}
    refused: dict[str, int] = {}
    for r in rows:
        for k, v in r['gate'].items():
            gate[k] = gate.get(k, 0) + int(v)
        for k, v in r['refused'].items():
            refused[k] = refused.get(k, 0) + int(v)
    jumps = _finite(r['velocity_jump_max'] for r in rows)
    outcomes = summarize_outcomes(rows)
    per_episode = outcomes.pop('per_episode')
    return {**outcomes,
            'jerk_rms_mean': _mean(r['jerk_rms'] for r in rows),
            'velocity_jump_p50_mean': _mean(r['velocity_jump_p50'] for r in rows),
            'velocity_jump_max': max(jumps, default=None),
            'starved': sum(int(r['starved']) for r in rows),
            'feature_age_s_mean': _mean(r['feature_age_s_mean'] for r in rows),
            'chunk_delay_s_mean': _mean(r['chunk_delay_s_mean'] for r in rows),
            'refused': refused, 'gate': gate, 'per_episode': per_episode}


HELD_OUT_KEYS = ('episodes', 'successes', 'success_rate', 'outcomes', 'time_to_insert_s_mean')


def held_out_evaluation(summary: Mapping, *, seed: int, first_episode: int = 0,
                        where: str = 'in-process') -> dict:
    """Return the short form of a held-out evaluation for the demo's summary.

    `summary`: an episode summary of the held-out episodes (these keys); `seed` and
    `first_episode`: their holes; `where`: how they ran.
    """
    return {**{k: summary.get(k) for k in HELD_OUT_KEYS}, 'seed': seed,
            'first_episode': first_episode, 'where': where}


def success_text(summary: Mapping) -> str:
    """Return 'S/N = P%' of an episode summary, or 'no episode' without episodes."""
    if not summary.get('episodes'):
        return 'no episode'
    return f'{summary["successes"]}/{summary["episodes"]} = {summary["success_rate"]:.0%}'
