"""evaluate: score action chunks against the robot trajectory recorded in a bag.

    evaluate BAG --mode open-loop -o artifacts/eval/run1         # models on recorded inputs
    evaluate BAG --mode recorded -o artifacts/eval/live          # chunks recorded in a live run
    evaluate BAG --mode timing-faithful -o artifacts/eval/replay # replay through the real nodes

Modes:
- open-loop: deterministic (fixed seeds, no wall clock). At every tick of `--rate-hz` over the
  bag, the newest recorded frames go through the VLM (every `--vl-every` ticks, features
  reused in between) and the expert runner, which applies the staleness rules the robot
  applies (core/evaluation/open_loop.py); the chunk applies at the tick time.
- recorded: the vla/action_chunk messages already in the bag (e.g. recorded on a live cell).
- timing-faithful: bag_player replays the cameras, robot and sensor topics (restamped to the
  wall clock) into the real vlm_node and action_expert processes, started from the launch table
  (core/orchestration/replay.py); a chunk applies when it was received.

Output in the folder given with -o: metrics.json (core.metrics.evaluate: per-joint MAE/RMSE in
rad and deg, error by horizon step, executed-stream error, chunk-boundary jumps, action rate,
latency, feature age/reuse, refused ticks by reason) and PNG plots: joints.png, errors.png,
horizon.png, latency.png.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
import sys

from vla_insertion.core import artifacts, bag

from vla_insertion.core.bag.recording import load_recording
from vla_insertion.core.config import ConfigError, ExpertConfig, VlmConfig
from vla_insertion.core.evaluation import plots
from vla_insertion.core.evaluation.open_loop import recorded_chunks, run_open_loop, score
from vla_insertion.core.orchestration.builders import build_policy, widened_feature_age_s
from vla_insertion.core.orchestration.replay import ReplayError, run_nodes_on_bag
from vla_insertion.core.params import load_config

log = logging.getLogger('evaluate')
MODES = ('open-loop', 'recorded', 'timing-faithful')


def _num(value) -> float:
    return float('nan') if value is None else value


def table(results: dict[str, dict]) -> str:
    """Return one line per run: chunks, rate, executed and all-steps errors, latency, refusals."""
    lines = []
    for label, r in results.items():
        refused = r['run'].get('refused') or {}
        lines.append(
            f'{label}: {r["chunks"]} chunks at {_num(r["action_rate"]["rate_hz"]):.2f} Hz, '
            f'executed MAE {_num(r["executed"]["mae_deg"]):.3f} deg RMSE '
            f'{_num(r["executed"]["rmse_deg"]):.3f} deg, all-steps MAE '
            f'{_num(r["all_steps"]["mae_deg"]):.3f} deg, latency p50 '
            f'{_num(r["latency_ms"]["p50"]):.1f} ms'
            + (f', refused {refused}' if refused else ''))
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='evaluate', description=__doc__.split('\n\n')[0])
    parser.add_argument('bag', help='bag folder')
    parser.add_argument('--mode', choices=MODES, default='open-loop')
    parser.add_argument('-o', '--output', default=str(artifacts.EVALUATION),
                        help='output folder')
    parser.add_argument('--params-file', '--vlm-params', dest='params_file',
                        help='ROS params YAML: its vlm_node and action_expert sections configure '
                        'the models (views, image size, prompt, staleness limits); the nodes of '
                        'the timing-faithful mode get it too')
    parser.add_argument('--vlm-model', help='VLM folder or hub id (default: the params '
                        f'file, else {artifacts.TINY_VLM})')
    parser.add_argument('--checkpoint', help='expert checkpoint folder (default: the params '
                        f'file, else {artifacts.UNTRAINED_CHECKPOINT})')
    parser.add_argument('--vlm-delay', type=float, default=0.0,
                        help='artificial VLM delay [s] standing in for a heavier model (the '
                        "expert's max_feature_age_s moves with it)")
    parser.add_argument('--rate-hz', type=float, default=10.0, help='open-loop tick rate')
    parser.add_argument('--vl-every', type=int, default=1,
                        help='open-loop: run the VLM every N ticks, reuse features between')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--no-progress', action='store_true')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    out = Path(args.output)
    try:
        vlm_cfg = load_config(VlmConfig, 'vlm_node', args.params_file,
                              defaults={'model': str(artifacts.TINY_VLM)}, overrides={
                                  'model': args.vlm_model, 'artificial_delay_s': args.vlm_delay})
        expert_cfg = load_config(ExpertConfig, 'action_expert', args.params_file,
                                 overrides={'checkpoint': args.checkpoint})
        rec = load_recording(args.bag, views=vlm_cfg.view_names, progress=not args.no_progress)
        if args.mode == 'recorded':
            result = recorded_chunks(rec)
        elif args.mode == 'open-loop':
            # the VLM delayed by --vlm-delay, the expert's feature-age limit moved with it
            policy = build_policy(vlm_cfg, expert_cfg, args.vlm_delay, seed=args.seed)
            result = run_open_loop(rec, policy.vlm, policy.runner, vlm_cfg.view_names,
                                   args.rate_hz, args.vl_every, progress=not args.no_progress)
        else:
            # as in compare_modes: a heavier VLM's features are older, the limit moves with
            # them (no delay: the nodes keep the params file's limit)
            max_age = widened_feature_age_s(expert_cfg, args.vlm_delay) \
                if args.vlm_delay > 0 else None
            result = run_nodes_on_bag(args.bag, out, vlm_model=vlm_cfg.model,
                                      checkpoint=expert_cfg.checkpoint,
                                      params_file=args.params_file,
                                      vlm_delay_s=args.vlm_delay, max_feature_age_s=max_age)
        results = {result.label: score(rec, result, args.rate_hz)}
    except (bag.BagError, ConfigError, OSError, ReplayError, ValueError) as exc:
        print(f'evaluate: {exc}', file=sys.stderr)
        return 2
    plots.write_outputs(out, rec, results, {result.label: result.series()})
    print(table(results))
    print(f'wrote {out}/metrics.json and plots')
    return 0


if __name__ == '__main__':
    sys.exit(main())
