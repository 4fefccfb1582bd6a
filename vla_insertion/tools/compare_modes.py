"""compare_modes: synchronous vs threaded vs ROS dual-node inference on the same bag.

    compare_modes BAG -o artifacts/compare --vlm-delay 0.8

The experiment of the seeds (sync / threading / server-client for ACT with a 0.8 s artificial
delay), for this pipeline. Each mode replays the bag's inputs in real time (wall clock):

- sync: one loop; at each step the VLM runs on the newest views (blocking), then the expert;
  the next step starts at the next 10 Hz tick after that. A slow VLM blocks the loop, so fewer
  chunks are produced and the robot runs out of actions (stale ticks).
- threaded: one process; the VLM runs back to back in a background thread, the expert runs at
  10 Hz on the newest features with fresh robot and sensor inputs.
- ros: the real vlm_node and action_expert processes fed by bag_player (restamped), chunks read
  back from vla/action_chunk (see `evaluate --mode timing-faithful`).

A chunk applies from the moment it is available (its computation finished or it was received),
on the recorded clock; errors are measured against the recorded joint trajectory.

Output in -o: comparison.json (every metric per mode), comparison.md (the table),
comparison_joints.png (executed action per joint over time, per mode), comparison_errors.png
(MAE/RMSE per joint per mode), horizon.png and latency.png.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
import json
import logging
from pathlib import Path
import sys
import threading
import time

import numpy as np

from vla_insertion.core import bag
from vla_insertion.core.data import MODE_SYNC
from vla_insertion.core.interfaces import ExpertObservation
from vla_insertion.tools import evaluate as ev

log = logging.getLogger('compare_modes')
MODES = ('sync', 'threaded', 'ros')


class BagClock:
    """Recorded time advancing with the wall clock from `start_s` [s]."""

    def __init__(self, start_s: float) -> None:
        self.start_s = start_s
        self._wall0 = time.perf_counter()

    def now(self) -> float:
        return self.start_s + (time.perf_counter() - self._wall0)

    def sleep_until(self, t_s: float, stop: threading.Event | None = None) -> None:
        delay = t_s - self.now()
        if delay > 0:
            (stop or threading.Event()).wait(delay)


def run_sync(rec: ev.Recording, vlm, expert, views, rate_hz: float = 10.0) -> ev.RunResult:
    """Block on the VLM and the expert at every step, in one loop."""
    inputs = ev.Inputs(rec, views)
    period = 1.0 / rate_hz
    vlm.reset()
    expert.reset()
    clock = BagClock(inputs.first_complete_s())
    chunks, latency, seq = [], [], 0
    wall0 = time.perf_counter()
    while (t_obs := clock.now()) <= rec.end_s:
        features = vlm.infer(inputs.vlm(t_obs, seq))
        chunk = expert.infer(ExpertObservation(features, inputs.window(t_obs),
                                               inputs.robot(t_obs), t_obs))
        t_avail = clock.now()
        chunks.append(replace(chunk, stamp_s=t_avail, sequence=seq, reuse_index=1,
                              feature_age_s=t_avail - features.stamp_s, mode=MODE_SYNC))
        latency.append((t_avail - t_obs) * 1e3)
        seq += 1
        clock.sleep_until(t_obs + period * np.ceil((t_avail - t_obs) / period + 1e-9))
    return ev.RunResult('sync', chunks, latency, time.perf_counter() - wall0, seq)


def run_threaded(rec: ev.Recording, vlm, expert, views, rate_hz: float = 10.0
                 ) -> ev.RunResult:
    """Run the VLM in a background thread and the expert at `rate_hz` on the newest features."""
    inputs = ev.Inputs(rec, views)
    period = 1.0 / rate_hz
    vlm.reset()
    expert.reset()
    clock = BagClock(inputs.first_complete_s())
    latest = {'features': None}
    have_features = threading.Event()
    stop = threading.Event()
    errors: list[BaseException] = []
    updates = [0]

    def vl_loop() -> None:
        try:
            while not stop.is_set():
                t = clock.now()
                latest['features'] = vlm.infer(inputs.vlm(min(t, rec.end_s), updates[0]))
                updates[0] += 1
                have_features.set()
        except BaseException as exc:  # reported by the main loop
            errors.append(exc)
            have_features.set()

    worker = threading.Thread(target=vl_loop, name='vlm', daemon=True)
    worker.start()
    chunks, latency = [], []
    reuse: dict[int, int] = {}
    wall0 = time.perf_counter()
    try:
        have_features.wait(120.0)
        tick = clock.now()
        while tick <= rec.end_s and not errors:
            clock.sleep_until(tick)
            t_obs = clock.now()
            features = latest['features']
            chunk = expert.infer(ExpertObservation(features, inputs.window(t_obs),
                                                   inputs.robot(t_obs), t_obs))
            t_avail = clock.now()
            reuse[features.sequence] = reuse.get(features.sequence, 0) + 1
            chunks.append(replace(chunk, stamp_s=t_avail, sequence=len(chunks),
                                  reuse_index=reuse[features.sequence]))
            latency.append((t_avail - t_obs) * 1e3)
            tick += period
            if clock.now() > tick:                 # overran: skip the missed ticks
                tick += period * np.floor((clock.now() - tick) / period + 1)
    finally:
        stop.set()
        worker.join(30.0)
    if errors:
        raise errors[0]
    return ev.RunResult('threaded', chunks, latency, time.perf_counter() - wall0, updates[0])


def summary_rows(results: dict[str, dict]) -> list[dict]:
    rows = []
    for mode, r in results.items():
        rows.append({
            'mode': mode,
            'chunks': r['chunks'],
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
    parser.add_argument('--vlm-params', help='ROS params YAML whose vlm_node entry configures '
                        'the VLM; also given to the ROS nodes')
    parser.add_argument('--vlm-model', help=f'VLM folder or hub id (default {ev.DEFAULT_VLM})')
    parser.add_argument('--checkpoint', default=ev.DEFAULT_CHECKPOINT, help='expert checkpoint')
    parser.add_argument('--rate-hz', type=float, default=10.0, help='action rate')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    try:
        rec = ev.load_recording(args.bag)
        cfg = ev.vlm_config(args.vlm_params, args.vlm_model)
        runs: dict[str, ev.RunResult] = {}
        if {'sync', 'threaded'} & set(args.modes):
            vlm, expert = ev.load_models(cfg, args.checkpoint, args.vlm_delay, args.seed)
            for mode, runner in (('sync', run_sync), ('threaded', run_threaded)):
                if mode in args.modes:
                    log.info(f'{mode}: replaying {rec.end_s - rec.start_s:.1f} s in real time')
                    runs[mode] = runner(rec, vlm, expert, cfg.view_names, args.rate_hz)
        if 'ros' in args.modes:
            log.info('ros: vlm_node + action_expert fed by bag_player')
            runs['ros'] = ev.run_ros_nodes(rec, cfg, args.checkpoint, args.vlm_params,
                                           args.vlm_delay, log_dir=out)
            runs['ros'].label = 'ros'
    except (bag.BagError, OSError, ValueError, RuntimeError) as exc:
        print(f'compare_modes: {exc}', file=sys.stderr)
        return 2
    results = {mode: ev.score(rec, r, args.rate_hz) for mode, r in runs.items()}
    for r in results.values():
        r['run']['vlm_delay_s'] = args.vlm_delay
    series = {mode: r.series() for mode, r in runs.items()}
    rows = summary_rows(results)
    (out / 'comparison.json').write_text(json.dumps(
        {'bag': str(rec.path), 'vlm_delay_s': args.vlm_delay, 'table': rows,
         'modes': results}, indent=2, default=float))
    table = markdown(rows, results)
    (out / 'comparison.md').write_text(table)
    ev.plot_joints(out / 'comparison_joints.png', rec.trajectory, series)
    ev.plot_error_bars(out / 'comparison_errors.png', results)
    ev.plot_horizon(out / 'horizon.png', results)
    ev.plot_latency(out / 'latency.png', series)
    print(table)
    print(f'wrote {out}/comparison.json, comparison.md and plots')
    return 0


if __name__ == '__main__':
    sys.exit(main())
