"""closed_loop: run the policy in closed loop on the simulated cell for N episodes and score it.

    closed_loop --episodes 20                              # the learned policy, async, blend
    closed_loop --policy reference --episodes 20           # the scripted demonstrator (ceiling)
    closed_loop --compare --episodes 10                    # merges x VLM delay x sync/async
    closed_loop --backend ros --episodes 5                 # the real nodes on sim_cell
    closed_loop --backend ros --policy openpi --episodes 5  # the demonstrator over openpi

Backends:
- sim (default): the whole policy in-process on simulated time (core/sim/loop.py, run by
  core/orchestration/builders.py's SimEvaluator): rendered views -> the VLM -> the expert
  runner -> the chunk executor (the params file's, joint limits included) -> the sim cell,
  with the VLM and expert latencies modelled (--vlm-latency, --vlm-delay, --mode sync|async).
  Deterministic.
- ros: sim_cell, the bridges, vlm_node, action_expert (or reference_policy) and chunk_executor
  (armed) as processes from the launch table on free loopback ports, for real timing; the
  outcomes come from sim_cell's episode stream (core/orchestration/cell_run.py). `--policy
  openpi|gr00t`: the demonstrator served over that protocol (serve_policy) drives the cell
  through policy_client (ros backend only; with `--merge prefix` gr00t gets the prefix).

Per configuration: success rate, time to insert, peak and mean contact force, RMS jerk and the
velocity jump at chunk boundaries, starvation, refused ticks and gate interventions by cause,
chunk delay and feature age. Output in -o: closed_loop.json, closed_loop.md (the table) and
closed_loop.png (success rate, jerk and boundary jumps per configuration).
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
from pathlib import Path
import sys
import time

from vla_insertion.core import artifacts
from vla_insertion.core.config import ConfigError, EXECUTOR_MERGES, ExpertConfig, VlmConfig
from vla_insertion.core.orchestration.builders import (
    executor_settings, SIM_EXECUTOR, SimConfiguration, SimEvaluator)
from vla_insertion.core.params import load_config
from vla_insertion.core.sim.loop import EpisodeMetrics, PipelineTiming

log = logging.getLogger('closed_loop')
COLUMNS = ('config', 'episodes', 'success_rate', 'time_to_insert_s_mean', 'peak_force_n_max',
           'mean_force_n_mean', 'jerk_rms_mean', 'velocity_jump_p50_mean', 'velocity_jump_max',
           'starved', 'feature_age_s_mean', 'chunk_delay_s_mean')


def run_ros(args: argparse.Namespace, vlm_cfg: VlmConfig, expert_cfg: ExpertConfig,
            merge: str, mode: str, delay_s: float) -> dict:
    """Run the episodes of one configuration with the real nodes on sim_cell."""
    from vla_insertion.core.orchestration.cell_run import run_closed_loop
    from vla_insertion.ros.executor_operator import ExecutorOperator
    with ExecutorOperator() as operator:   # clears a latched fault before each episode
        return run_closed_loop(
            Path(args.output) / f'ros_{merge}_{mode}_{delay_s:g}', episodes=args.episodes,
            params_file=args.params_file, vlm_model=vlm_cfg.model,
            checkpoint=expert_cfg.checkpoint, merge=merge, mode=mode,
            vlm_delay_s=delay_s, policy=args.policy, seed=args.seed, operator=operator)


def progress(metrics: EpisodeMetrics) -> None:
    r = metrics.record
    log.info(f'  episode {r.index}: {r.reason} in {r.duration_s:.1f} s, peak '
             f'{r.peak_force_n:.1f} N, {metrics.chunks} chunks')


def markdown(results: dict[str, dict]) -> str:
    def fmt(value) -> str:
        if value is None:
            return '-'
        return f'{value:.3g}' if isinstance(value, float) else str(value)
    lines = ['| ' + ' | '.join(COLUMNS) + ' | outcomes | gate |',
             '|' + '---|' * (len(COLUMNS) + 2)]
    for name, r in results.items():
        gate = ', '.join(f'{k}={v}' for k, v in sorted(r.get('gate', {}).items())) or '-'
        outcomes = ', '.join(f'{k}={v}' for k, v in sorted(r.get('outcomes', {}).items()))
        lines.append('| ' + ' | '.join(fmt(name if c == 'config' else r.get(c))
                                       for c in COLUMNS) + f' | {outcomes} | {gate} |')
    return '\n'.join(lines) + '\n'


def plot(path: Path, results: dict[str, dict]) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    names = list(results)
    fig, axes = plt.subplots(1, 3, figsize=(4 + 1.2 * len(names), 3.8))
    for ax, key, label in zip(axes, ('success_rate', 'jerk_rms_mean', 'velocity_jump_p50_mean'),
                              ('success rate', 'RMS jerk [rad/s^3]',
                               'velocity jump at boundaries p50 [rad/s]')):
        ax.bar(range(len(names)), [results[n].get(key) or 0.0 for n in names])
        ax.set_xticks(range(len(names)), names, rotation=60, ha='right', fontsize=7)
        ax.set_title(label, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='closed_loop', description=__doc__.split('\n\n')[0])
    parser.add_argument('--backend', choices=('sim', 'ros'), default='sim')
    parser.add_argument('--policy', choices=('expert', 'reference', 'openpi', 'gr00t'),
                        default='expert', help='the learned policy (VLM + expert), the scripted '
                        'demonstrator, or the demonstrator served over openpi or gr00t to '
                        'policy_client (--backend ros)')
    parser.add_argument('--episodes', type=int, default=20)
    parser.add_argument('--seed', type=int, default=1000,
                        help='seed of the hole positions (training demonstrations use 0..)')
    parser.add_argument('--first-episode', type=int, default=0)
    parser.add_argument('--merge', choices=EXECUTOR_MERGES, default=None,
                        help='executor merge strategy (default: from the params file)')
    parser.add_argument('--mode', choices=('async', 'sync'), default='async')
    parser.add_argument('--vlm-delay', type=float, default=0.0,
                        help='artificial VLM delay [s] (the 0.8 s experiment)')
    parser.add_argument('--vlm-latency', type=float, default=0.38,
                        help='sim backend: modelled VLM latency [s] (RTX 4090 figure)')
    parser.add_argument('--compare', action='store_true',
                        help='every merge x VLM delay (0, 0.8 s) x sync/async')
    parser.add_argument('--params-file', default='config/vla_insertion.yaml')
    parser.add_argument('--vlm-model', help='VLM (default: from the params file, else '
                        f'{artifacts.TINY_VLM})')
    parser.add_argument('--checkpoint', help='expert checkpoint (default: from the params file)')
    parser.add_argument('--workers', type=int, default=1,
                        help='sim backend: processes sharing the episodes (the same episodes '
                        'as one process runs)')
    parser.add_argument('-o', '--output', default='artifacts/closed_loop')
    args = parser.parse_args(argv)
    if args.policy in ('openpi', 'gr00t') and args.backend != 'ros':
        parser.error(f'--policy {args.policy} runs the real nodes: add --backend ros')
    if args.workers < 1:
        parser.error('--workers must be >= 1')
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    try:
        vlm_cfg = load_config(VlmConfig, 'vlm_node', args.params_file,
                              defaults={'model': str(artifacts.TINY_VLM)},
                              overrides={'model': args.vlm_model})
        expert_cfg = load_config(ExpertConfig, 'action_expert', args.params_file,
                                 overrides={'checkpoint': args.checkpoint})
        # the cell's executor, its joint limits included, armed as in every offline run
        executor = executor_settings(args.params_file, overrides=SIM_EXECUTOR)
    except (ConfigError, OSError) as exc:
        print(f'closed_loop: {exc}', file=sys.stderr)
        return 2
    if args.compare:
        grid = list(itertools.product(EXECUTOR_MERGES, (0.0, 0.8), ('async', 'sync')))
    else:
        grid = [(args.merge or executor.config.merge, args.vlm_delay, args.mode)]
    # the learned policy's configs; none: the scripted reference drives
    policy = {'vlm': vlm_cfg, 'expert': expert_cfg} if args.policy == 'expert' else {}
    evaluator = SimEvaluator()             # one VLM for every configuration
    results = {}
    for merge, delay, mode in grid:
        name = f'{args.policy} {merge} {mode} delay {delay:g}s'
        log.info(f'{name}: {args.episodes} episodes ({args.backend})')
        t0 = time.perf_counter()
        try:
            if args.backend == 'sim':
                timing = PipelineTiming(mode=mode, rate_hz=expert_cfg.rate_hz,
                                        vlm_latency_s=args.vlm_latency, vlm_delay_s=delay)
                results[name] = evaluator.run(SimConfiguration(
                    executor.with_config(merge=merge), timing, **policy, seed=args.seed,
                    first_episode=args.first_episode, noise_seed=args.seed), args.episodes,
                    on_episode=progress, workers=args.workers)
            else:
                results[name] = run_ros(args, vlm_cfg, expert_cfg, merge, mode, delay)
        except (ConfigError, OSError, RuntimeError, ValueError) as exc:   # CellRunError too
            print(f'closed_loop: {name}: {exc}', file=sys.stderr)
            return 2
        results[name]['wall_s'] = time.perf_counter() - t0
        log.info(f'{name}: {results[name]["successes"]}/{results[name]["episodes"]} succeeded')
    (out / 'closed_loop.json').write_text(json.dumps(
        {'backend': args.backend, 'policy': args.policy, 'seed': args.seed,
         'params_file': args.params_file, 'checkpoint': expert_cfg.checkpoint,
         'vlm': vlm_cfg.model, 'results': results}, indent=2, default=float))
    table = markdown(results)
    (out / 'closed_loop.md').write_text(table)
    plot(out / 'closed_loop.png', results)
    print(table)
    print(f'wrote {out}/closed_loop.json, closed_loop.md and closed_loop.png')
    return 0


if __name__ == '__main__':
    sys.exit(main())
