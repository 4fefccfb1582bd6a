"""The one episode summary: success rate, outcomes, forces, smoothness and interventions."""
from __future__ import annotations

import numpy as np

from vla_insertion.core.sim.loop import EpisodeMetrics


def summarize_episodes(episodes: list[EpisodeMetrics]) -> dict:
    """Success rate, times, forces, smoothness, starvation, refusals and gate interventions."""
    rows = [e.as_dict() for e in episodes]
    n = len(rows)
    successes = [r for r in rows if r['success']]
    gate: dict[str, int] = {}
    refused: dict[str, int] = {}
    for r in rows:
        for k, v in r['gate'].items():
            gate[k] = gate.get(k, 0) + int(v)
        for k, v in r['refused'].items():
            refused[k] = refused.get(k, 0) + int(v)
    reasons: dict[str, int] = {}
    for r in rows:
        reasons[r['reason']] = reasons.get(r['reason'], 0) + 1

    def mean(key, subset=rows):
        values = [r[key] for r in subset if r[key] is not None and np.isfinite(r[key])]
        return float(np.mean(values)) if values else None

    return {'episodes': n, 'successes': len(successes),
            'success_rate': len(successes) / n if n else None, 'outcomes': reasons,
            'time_to_insert_s_mean': mean('time_to_insert_s', successes),
            'peak_force_n_mean': mean('peak_force_n'),
            'peak_force_n_max': max((r['peak_force_n'] for r in rows), default=None),
            'mean_force_n_mean': mean('mean_force_n'),
            'jerk_rms_mean': mean('jerk_rms'), 'velocity_jump_p50_mean': mean('velocity_jump_p50'),
            'velocity_jump_max': max((r['velocity_jump_max'] for r in rows
                                      if np.isfinite(r['velocity_jump_max'])), default=None),
            'starved': sum(int(r['starved']) for r in rows),
            'feature_age_s_mean': mean('feature_age_s_mean'),
            'chunk_delay_s_mean': mean('chunk_delay_s_mean'),
            'refused': refused, 'gate': gate, 'per_episode': rows}
