"""What a trained expert is worth, measured three ways.

Open loop on train and held-out episodes, the loss against feature age, and closed-loop success
on held-out seeds:

- `open_loop_cached`: the expert on a recorded episode, tick by tick, with the cached VL features
  it would hold live (the newest update whose features had arrived, `latency_s` after its
  capture stamp), the recorded window and robot state; scored against what the robot did.
- `loss_by_age`: the training loss on held-out samples paired with every candidate feature set,
  binned by the features' age: how fast the expert degrades when the VLM falls behind.
- closed loop: core/orchestration/builders.py's SimEvaluator (the VLM, the runner, the
  params file's executor, the sim cell in core/sim/loop.py).
ROS-free; `tools/policy_report.py` runs them and writes the table.
"""
from __future__ import annotations

import numpy as np
import torch

from vla_insertion.core.bag.recording import RecordedInputs, Recording, tick_times
from vla_insertion.core.evaluation.open_loop import RunResult, score
from vla_insertion.core.expert.runner import ExpertRunner


def open_loop_cached(rec: Recording, cached, runner: ExpertRunner, latency_s: float,
                     rate_hz: float = 10.0) -> dict:
    """Tick the runner over a recording with the cached features; return core.metrics scores.

    `cached` is a feature_cache.CachedBag of this recording; features become usable
    `latency_s` after the capture stamp of their views (the VLM's inference).
    """
    from vla_insertion.core.data import VLFeatureData
    inputs = RecordedInputs(rec)
    stamps = cached.stamps_s
    ticks = tick_times(inputs, rate_hz)
    runner.reset()
    chunks = []
    for t in ticks:
        i = int(np.searchsorted(stamps + latency_s, t + 1e-9, side='right')) - 1
        features = None if i < 0 else VLFeatureData(
            stamp_s=float(stamps[i]), features=np.asarray(cached.features[i], np.float32),
            sequence=i, contract_hash=runner.contract_digest, model_id='cache')
        result = runner.tick(features, inputs.window(t), inputs.robot(t), float(t),
                             capture_robot=inputs.capture(features))
        if result.published:
            chunks.append(result.chunk)                     # stamped with the tick t
    run = RunResult('open-loop', chunks, [0.0] * len(chunks), ticks=len(ticks),
                    refused=runner.stats.refused.as_dict())
    return score(rec, run, rate_hz)


def joint_errors(results: list[dict]) -> dict:
    """Mean per-joint executed MAE / RMSE [deg] over several open-loop scores."""
    if not results:
        return {}
    joints = list(results[0]['executed']['per_joint'])
    out = {}
    for j in joints:
        mae = [r['executed']['per_joint'][j]['mae_deg'] for r in results]
        rmse = [r['executed']['per_joint'][j]['rmse_deg'] for r in results]
        out[j] = {'mae_deg': float(np.nanmean(np.asarray(mae, dtype=float))),
                  'rmse_deg': float(np.nanmean(np.asarray(rmse, dtype=float)))}
    out['mean'] = {k: float(np.mean([v[k] for v in out.values()]))
                   for k in ('mae_deg', 'rmse_deg')}
    return out


@torch.no_grad()
def loss_by_age(model, dataset, edges_s: np.ndarray, max_pairs: int = 20000,
                seed: int = 0) -> list[dict]:
    """Return the normalised loss of `model` by feature age, and its excess over fresh features.

    Every held-out sample is paired with each VLM update it could have used (the dataset's
    candidates, any age up to max_feature_age_s, youngest first); samples are drawn
    deterministically until max_pairs pairs. `loss` is the mean over the pairs in an age bin.
    It mixes what a bin holds: only ticks late in an episode have old candidates, and those
    ticks (holding, inserted) are easy. `excess` is what staleness costs: each pair's loss minus
    the same sample's loss with its youngest candidate, averaged in the bin. The regression
    head's loss is deterministic; a flow head's is evaluated with seeded noise.
    """
    model.eval()
    counts = np.diff(dataset.cand_start)
    order = np.random.default_rng(seed).permutation(len(dataset))
    fits = int(np.searchsorted(np.cumsum(counts[order]), max_pairs, side='right'))
    chosen = np.sort(order[:max(1, fits)])
    owner = np.repeat(chosen, counts[chosen])
    rows = np.concatenate([dataset.cand_rows[dataset.cand_start[i]:dataset.cand_start[i + 1]]
                           for i in chosen])
    ages = np.concatenate([dataset.cand_ages[dataset.cand_start[i]:dataset.cand_start[i + 1]]
                           for i in chosen])
    losses = np.empty(rows.size)
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, rows.size, 256):
        sl = slice(start, start + 256)
        index = torch.from_numpy(owner[sl])
        windows, states, actions = dataset.inputs(index)
        features = dataset.features_of(rows[sl])
        captures = dataset.captures_of(index, rows[sl])
        for k in range(index.numel()):        # per pair: the loss of one sample
            losses[start + k] = float(model.loss(features[k:k + 1], windows[k:k + 1],
                                                 states[k:k + 1], actions[k:k + 1],
                                                 generator=generator,
                                                 capture=captures[k:k + 1]))
    first = np.r_[0, np.cumsum(counts[chosen])[:-1]]       # each sample's youngest pair
    excess = losses - np.repeat(losses[first], counts[chosen])
    out = []
    for lo, hi in zip(edges_s[:-1], edges_s[1:]):
        mask = (ages >= lo) & (ages < hi)
        out.append({'age_lo_s': float(lo), 'age_hi_s': float(hi), 'pairs': int(mask.sum()),
                    'loss': float(losses[mask].mean()) if mask.any() else None,
                    'excess': float(excess[mask].mean()) if mask.any() else None})
    return out
