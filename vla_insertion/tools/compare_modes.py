"""compare_modes: synchronous vs threaded vs ROS dual-node inference on the same bag.

    compare_modes BAG -o artifacts/compare --vlm-delay 0.8

The experiment of the seeds (sync / threading / server-client for ACT with a 0.8 s artificial
delay), for this pipeline. Each mode replays the bag's inputs in real time:

- sync: one loop; at each step the VLM runs on the newest views (blocking), then the expert;
  the next step starts at the next 10 Hz tick after that (core.evaluation.run_sync).
- threaded: one process; the VLM runs back to back in a background thread, the expert ticks at
  10 Hz on the newest features (core.evaluation.run_threaded).
- ros: the real vlm_node and action_expert processes fed by bag_player (core.replay).

Every mode ticks the same ExpertRunner, so the staleness rules refuse the same ticks. The
artificial delay stands in for a heavier VLM whose features are that much older at use; the
expert's `max_feature_age_s` moves with it in every mode, as it would be configured for such a
model. A chunk applies from the moment it is available, on the recorded clock; errors are
measured against the recorded joint trajectory.

Output in -o: comparison.json (every metric per mode), comparison.md (the table),
comparison_joints.png, comparison_errors.png, horizon.png and latency.png.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
import sys

import numpy as np

from vla_insertion.core import artifacts, bag

from vla_insertion.core.bag.recording import load_recording
from vla_insertion.core.config import ConfigError, ExpertConfig, VlmConfig
from vla_insertion.core.evaluation import plots
from vla_insertion.core.evaluation.open_loop import run_sync, run_threaded, score
from vla_insertion.core.orchestration.builders import build_policy, widened_feature_age_s
from vla_insertion.core.orchestration.replay import ReplayError, run_nodes_on_bag
from vla_insertion.core.params import load_config

log = logging.getLogger('compare_modes')
MODES = ('sync', 'threaded', 'ros')


def summary_rows(results: dict[str, dict]) -> list[dict]:
    rows = []
    for mode, r in results.items():
        rows.append({
            'mode': mode,
            'chunks': r['chunks'],
            'refused': sum((r['run'].get('refused') or {}).values()),
            'rate_hz': r['action_rate']['rate_hz'],
            'vl_updates': r['run']['vl_updates'],
            'exec_mae_deg': r['executed']['mae_deg'],
            'exec_rmse_deg': r['executed']['rmse_deg'],
            'stale_frac': r['executed']['stale_fraction'],
            'all_mae_deg': r['all_steps']['mae_deg'],
            'lat_p50_ms': r['latency_ms']['p50'],
            'lat_p99_ms': r['latency_ms']['p99'],
            'feat_age_s': r['features']['age_s']['mean'],
            'jump_mean_deg': (np.degrees(r['discontinuity']['mean_rad'])
                              if r['discontinuity']['mean_rad'] is not None else None),
        })
    return rows


def markdown(rows: list[dict], results: dict[str, dict]) -> str:
    def fmt(v):
        if v is None:
            return '-'
        return f'{v:.3f}' if isinstance(v, float) else str(v)
    keys = list(rows[0])
    lines = ['| ' + ' | '.join(keys) + ' |', '|' + '---|' * len(keys)]
    lines += ['| ' + ' | '.join(fmt(r[k]) for k in keys) + ' |' for r in rows]
    joints = list(next(iter(results.values()))['executed']['per_joint'])
    lines += ['', 'Executed-action MAE / RMSE per joint [deg]:', '',
              '| mode | ' + ' | '.join(joints) + ' |', '|' + '---|' * (len(joints) + 1)]
    for mode, r in results.items():
        cells = [f'{fmt(r["executed"]["per_joint"][j]["mae_deg"])} / '
                 f'{fmt(r["executed"]["per_joint"][j]["rmse_deg"])}' for j in joints]
        lines.append(f'| {mode} | ' + ' | '.join(cells) + ' |')
    notes = [f'- {mode}: {n}' for mode, r in results.items() for n in r['run']['notes']]
    if notes:
        lines += ['', 'Notes:', *notes]
    return '\n'.join(lines) + '\n'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='compare_modes', description=__doc__.split('\n\n')[0])
    parser.add_argument('bag', help='bag folder with cameras, robot and sensor topics')
    parser.add_argument('-o', '--output', default='artifacts/compare', help='output folder')
    parser.add_argument('--modes', nargs='+', choices=MODES, default=list(MODES))
    parser.add_argument('--vlm-delay', type=float, default=0.0,
                        help='artificial VLM delay [s] standing in for a heavier model')
    parser.add_argument('--params-file', '--vlm-params', dest='params_file',
                        help='ROS params YAML whose vlm_node and action_expert sections '
                        'configure the models; also given to the ROS nodes')
    parser.add_argument('--vlm-model', help='VLM folder or hub id (default: the params '
                        f'file, else {artifacts.TINY_VLM})')
    parser.add_argument('--checkpoint', help='expert checkpoint folder (default: the params '
                        f'file, else {artifacts.UNTRAINED_CHECKPOINT})')
    parser.add_argument('--rate-hz', type=float, default=10.0, help='action rate')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    try:
        vlm_cfg = load_config(VlmConfig, 'vlm_node', args.params_file,
                              defaults={'model': str(artifacts.TINY_VLM)}, overrides={
                                  'model': args.vlm_model, 'artificial_delay_s': args.vlm_delay})
        expert_cfg = load_config(ExpertConfig, 'action_expert', args.params_file,
                                 overrides={'checkpoint': args.checkpoint})
        # the heavier VLM's features are that much older: the limit moves with the delay
        max_age = widened_feature_age_s(expert_cfg, args.vlm_delay)
        rec = load_recording(args.bag, views=vlm_cfg.view_names)
        runs = {}
        if {'sync', 'threaded'} & set(args.modes):
            policy = build_policy(vlm_cfg, expert_cfg, args.vlm_delay, seed=args.seed)
            for mode, run in (('sync', run_sync), ('threaded', run_threaded)):
                if mode in args.modes:
                    log.info(f'{mode}: replaying {rec.end_s - rec.start_s:.1f} s in real time')
                    runs[mode] = run(rec, policy.vlm, policy.runner, vlm_cfg.view_names,
                                     args.rate_hz)
        if 'ros' in args.modes:
            log.info('ros: vlm_node + action_expert fed by bag_player')
            runs['ros'] = run_nodes_on_bag(
                args.bag, out / 'ros', vlm_model=vlm_cfg.model,
                checkpoint=expert_cfg.checkpoint,
                params_file=args.params_file, vlm_delay_s=args.vlm_delay,
                max_feature_age_s=max_age)
            runs['ros'].label = 'ros'
        results = {mode: score(rec, r, args.rate_hz) for mode, r in runs.items()}
    except (bag.BagError, ConfigError, OSError, ReplayError, ValueError) as exc:
        print(f'compare_modes: {exc}', file=sys.stderr)
        return 2
    for r in results.values():
        r['run']['vlm_delay_s'] = args.vlm_delay
        r['run']['max_feature_age_s'] = max_age
    series = {mode: r.series() for mode, r in runs.items()}
    rows = summary_rows(results)
    (out / 'comparison.json').write_text(json.dumps(
        {'bag': str(rec.path), 'vlm_delay_s': args.vlm_delay, 'table': rows,
         'modes': results}, indent=2, default=float))
    text = markdown(rows, results)
    (out / 'comparison.md').write_text(text)
    plots.plot_joints(out / 'comparison_joints.png', rec.trajectory, series)
    plots.plot_error_bars(out / 'comparison_errors.png', results)
    plots.plot_horizon(out / 'horizon.png', results)
    plots.plot_latency(out / 'latency.png', series)
    print(text)
    print(f'wrote {out}/comparison.json, comparison.md and plots')
    return 0


if __name__ == '__main__':
    sys.exit(main())
