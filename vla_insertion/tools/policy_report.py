"""policy_report: how good trained experts are, in one table (docs/evaluation.md).

    policy_report --cache artifacts/cache/demos_sim \
        --checkpoint untrained=artifacts/checkpoints/untrained-expert \
        --checkpoint no_age_aug=artifacts/checkpoints/no_aug \
        --checkpoint age_aug=artifacts/checkpoints/aug --episodes 20 -o artifacts/report

For every checkpoint:
1. open-loop MAE / RMSE per joint [deg] on its training episodes and on held-out ones (the
   checkpoint's validation bags), with the cached features as they would arrive live;
2. the held-out loss against feature age (how fast the expert degrades with stale features);
3. closed-loop success on held-out seeds (`--seed`, never used for demonstrations) through the
   params file's executor, async and sync, with a VLM delay of 0 and 0.8 s (core/sim/loop.py,
   run by core/orchestration/builders.py's SimEvaluator, as closed_loop runs it), each with
   the policy's sensor window as recorded and zeroed (`--sensor`: the ablation says what the
   sensor is worth, in success points; the executor's force monitor feels the real one);
and the scripted reference as the ceiling. Output in -o: report.json, report.md and
report_age.png / report_success.png.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
import sys
import time

import numpy as np

from vla_insertion.core import artifacts
from vla_insertion.core.config import ConfigError, ExpertConfig, VlmConfig
from vla_insertion.core.orchestration.builders import (
    build_runner, executor_settings, SIM_EXECUTOR, SimConfiguration, SimEvaluator,
    staleness_limits)
from vla_insertion.core.params import load_config
from vla_insertion.core.sim.loop import PipelineTiming
from vla_insertion.core.train.feature_cache import FeatureCache

log = logging.getLogger('policy_report')
ZEROED = ', sensor zeroed'       # a configuration name's suffix: the ablation
AGE_EDGES_S = np.array([0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.6])


def checkpoint_bags(path: Path) -> tuple[list[str], list[str]]:
    """Return the (training, validation) bags a checkpoint was trained on (its config extra).

    `extra.bags` lists the bag folders, `extra.train_episodes` / `val_episodes` the episodes
    as `<bag name>#<segment>`; an untrained checkpoint has none.
    """
    extra = json.loads((path / 'config.json').read_text()).get('extra', {})
    by_name = {Path(b).name: b for b in extra.get('bags', [])}

    def bags(episodes) -> list[str]:
        names = dict.fromkeys(e.split('#')[0] for e in episodes)
        return [by_name[n] for n in names if n in by_name]
    return bags(extra.get('train_episodes', [])), bags(extra.get('val_episodes', []))


def open_loop(expert: ExpertConfig, bags: list[str], cache: FeatureCache, latency_s: float,
              count: int) -> dict | None:
    """Return the mean per-joint errors of `expert` on the first `count` bags, open loop."""
    from vla_insertion.core.bag.recording import load_recording
    from vla_insertion.core.evaluation.policy_report import joint_errors, open_loop_cached
    if not bags:
        return None
    runner = build_runner(expert)
    scores = [open_loop_cached(load_recording(b, views=()), cache.bag(b), runner, latency_s)
              for b in bags[:count]]
    return joint_errors(scores)


def age_losses(expert: ExpertConfig, val_bags: list[str], cache: str) -> list[dict] | None:
    """Return the held-out loss of `expert`'s checkpoint by feature age (AGE_EDGES_S bins)."""
    from vla_insertion.core.evaluation.policy_report import loss_by_age
    from vla_insertion.core.expert.checkpoint import load_checkpoint
    from vla_insertion.core.train.fit import FitConfig, prepare_data
    if not val_bags:
        return None
    # every candidate up to the last bin's age, however old the expert's limit lets it use
    limits = dataclasses.replace(staleness_limits(expert),
                                 max_feature_age_s=float(AGE_EDGES_S[-1]))
    loaded = load_checkpoint(expert.checkpoint)
    # the targets it was trained on (train_expert --targets; checkpoints before: measured)
    targets = loaded.meta.extra.get('targets', 'measured')
    data = prepare_data(FitConfig(bags=tuple(val_bags), cache=cache, val_fraction=0.0,
                                  targets=targets), None, limits, say=lambda text: None)
    return loss_by_age(loaded.model, data.train, AGE_EDGES_S)


def markdown(report: dict) -> str:
    def fmt(v, digits=3):
        return '-' if v is None else (f'{v:.{digits}g}' if isinstance(v, float) else str(v))
    lines = ['Open loop, executed-action error per joint [deg], MAE / RMSE (cached features '
             f'arriving {report["vlm_latency_s"]} s after capture):', '']
    rows = [(name, split, r['open_loop'][split]) for name, r in report['checkpoints'].items()
            for split in ('train', 'held_out') if r['open_loop'].get(split)]
    if rows:
        joints = [j for j in rows[0][2] if j != 'mean']
        lines += ['| checkpoint | episodes | ' + ' | '.join(joints) + ' | mean |',
                  '|' + '---|' * (len(joints) + 3)]
        for name, split, errors in rows:
            cells = [f'{fmt(errors[j]["mae_deg"])} / {fmt(errors[j]["rmse_deg"])}'
                     for j in joints + ['mean']]
            lines.append(f'| {name} | {split} | ' + ' | '.join(cells) + ' |')
    lines += ['', 'Held-out loss (normalised MSE) against the age of the features [s]: the '
              'mean, and the excess over the same samples with their freshest features (what '
              'staleness costs; the mean alone mixes in which ticks have old features):', '']
    edges = [f'{lo:g}-{hi:g}' for lo, hi in zip(AGE_EDGES_S[:-1], AGE_EDGES_S[1:])]
    lines += ['| checkpoint | ' + ' | '.join(edges) + ' |', '|' + '---|' * (len(edges) + 1)]
    for name, r in report['checkpoints'].items():
        for key in ('loss', 'excess'):
            if r.get('loss_by_age'):
                lines.append(f'| {name} {key} | ' + ' | '.join(
                    fmt(b.get(key)) for b in r['loss_by_age']) + ' |')
    lines += ['', f'Closed loop on held-out seed {report["seed"]}, {report["episodes"]} '
              'episodes each, through the executor (success rate; mean time to insert [s]):',
              '']
    configs = list(next(iter(report['closed_loop'].values())))
    lines += ['| policy | ' + ' | '.join(configs) + ' |', '|' + '---|' * (len(configs) + 1)]
    for name, results in report['closed_loop'].items():
        lines.append(f'| {name} | ' + ' | '.join(
            f'{fmt(results[c]["success_rate"], 2)}; {fmt(results[c]["time_to_insert_s_mean"])}'
            for c in configs) + ' |')
    worth = sensor_worth(report)
    if worth:
        pairs = list(next(iter(worth.values())))
        lines += ['', 'What the sensor is worth: success with the window as recorded minus '
                  'with it zeroed [points of 100]:', '',
                  '| policy | ' + ' | '.join(pairs) + ' |', '|' + '---|' * (len(pairs) + 1)]
        lines += [f'| {name} | ' + ' | '.join(f'{row[c]:+.0f}' for c in pairs) + ' |'
                  for name, row in worth.items()]
    return '\n'.join(lines) + '\n'


def sensor_worth(report: dict) -> dict[str, dict[str, float]]:
    """Return per policy and configuration: success as recorded minus zeroed [points]."""
    out = {}
    for name, results in report['closed_loop'].items():
        row = {c: 100.0 * (results[c]['success_rate'] - results[c + ZEROED]['success_rate'])
               for c in results if not c.endswith(ZEROED) and c + ZEROED in results}
        if row:
            out[name] = row
    return out


def config_name(mode: str, delay_s: float, sensor: str) -> str:
    """Return a closed-loop column's name: 'async 0.8s' (the sensor as recorded) or + ZEROED."""
    return f'{mode} {delay_s:g}s' + (ZEROED if sensor == 'zeroed' else '')


def plots(out: Path, report: dict) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    mids = (AGE_EDGES_S[:-1] + AGE_EDGES_S[1:]) / 2
    for name, r in report['checkpoints'].items():
        if r.get('loss_by_age'):
            ax.plot(mids, [b['excess'] if b['excess'] is not None else np.nan
                           for b in r['loss_by_age']], 'o-', label=name)
    ax.set_xlabel('feature age [s]')
    ax.set_ylabel('held-out loss - loss with the freshest features')
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / 'report_age.png', dpi=90)
    plt.close(fig)
    names = list(report['closed_loop'])
    configs = list(next(iter(report['closed_loop'].values())))
    fig, ax = plt.subplots(figsize=(2 + 1.5 * len(configs), 3.5))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        ax.bar(np.arange(len(configs)) + i * width,
               [report['closed_loop'][name][c]['success_rate'] for c in configs], width,
               label=name)
    ax.set_xticks(np.arange(len(configs)) + width * (len(names) - 1) / 2, configs,
                  fontsize=8)
    ax.set_ylabel('success rate')
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / 'report_success.png', dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='policy_report', description=__doc__.split('\n\n')[0])
    parser.add_argument('--checkpoint', action='append', default=[], metavar='NAME=FOLDER',
                        help='a checkpoint to report on (repeat); its bags come from it')
    parser.add_argument('--cache', required=True, help='feature cache of the bags')
    parser.add_argument('--params-file', default='config/vla_insertion.yaml')
    parser.add_argument('--vlm-model', default=str(artifacts.TINY_VLM))
    parser.add_argument('--episodes', type=int, default=20, help='closed-loop episodes each')
    parser.add_argument('--seed', type=int, default=7, help='held-out seed of the holes')
    parser.add_argument('--open-loop-bags', type=int, default=10,
                        help='episodes per split scored open loop')
    parser.add_argument('--vlm-latency', type=float, default=0.385,
                        help='VLM latency [s], open and closed loop')
    parser.add_argument('--configs', nargs='+', default=['async:0', 'sync:0', 'async:0.8',
                                                         'sync:0.8'],
                        help='closed-loop MODE:DELAY pairs')
    parser.add_argument('--sensor', choices=('recorded', 'zeroed', 'both'), default='both',
                        help="the learned policy's sensor window in closed loop: as recorded, "
                        'zeroed (the ablation), or both')
    parser.add_argument('--workers', type=int, default=1,
                        help='processes sharing the closed-loop episodes')
    parser.add_argument('-o', '--output', default='artifacts/report')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    try:
        vlm_cfg = load_config(VlmConfig, 'vlm_node', args.params_file,
                              overrides={'model': args.vlm_model})
        expert_cfg = load_config(ExpertConfig, 'action_expert', args.params_file)
        # the cell's executor, its joint limits included, armed as in every offline run
        executor = executor_settings(args.params_file, overrides=SIM_EXECUTOR)
        cache = FeatureCache.load(args.cache)
        checkpoints = dict(c.split('=', 1) for c in args.checkpoint)
    except (ConfigError, OSError, ValueError) as exc:
        print(f'policy_report: {exc}', file=sys.stderr)
        return 2
    sensors = ('recorded', 'zeroed') if args.sensor == 'both' else (args.sensor,)
    configs = [(c.split(':')[0], float(c.split(':')[1]), sensor)
               for c in args.configs for sensor in sensors]
    report = {'seed': args.seed, 'episodes': args.episodes, 'vlm_latency_s': args.vlm_latency,
              'cache': str(args.cache), 'checkpoints': {}, 'closed_loop': {}}
    t0 = time.perf_counter()
    for name, folder in checkpoints.items():
        path = Path(folder)
        expert = dataclasses.replace(expert_cfg, checkpoint=str(path))
        train, val = checkpoint_bags(path)
        log.info(f'{name}: {len(train)} training and {len(val)} held-out episodes')
        report['checkpoints'][name] = {
            'folder': str(path), 'train_episodes': len(train), 'held_out_episodes': len(val),
            'open_loop': {split: open_loop(expert, bags, cache, args.vlm_latency,
                                           args.open_loop_bags)
                          for split, bags in (('train', train), ('held_out', val))},
            'loss_by_age': age_losses(expert, val, str(args.cache))}
    evaluator = SimEvaluator()             # one VLM for every checkpoint and configuration
    for name, folder in [*checkpoints.items(), ('reference', None)]:
        report['closed_loop'][name] = {}
        # the learned policy of the checkpoint; none: the scripted reference drives
        policy = {} if folder is None else {
            'vlm': vlm_cfg, 'expert': dataclasses.replace(expert_cfg, checkpoint=folder)}
        for mode, delay, sensor in configs:
            if folder is None and (mode, delay, sensor) != configs[0]:
                continue              # the demonstrator has no VLM: one configuration
            log.info(f'{name}: closed loop, {mode}, VLM delay {delay:g} s, sensor {sensor}')
            timing = PipelineTiming(mode=mode, vlm_latency_s=args.vlm_latency,
                                    vlm_delay_s=delay)
            result = evaluator.run(SimConfiguration(
                executor, timing, **policy, seed=args.seed, noise_seed=args.seed,
                **({} if folder is None else {'sensor_input': sensor})), args.episodes,
                workers=args.workers)
            result.pop('per_episode')
            report['closed_loop'][name][config_name(mode, delay, sensor)] = result
    reference = report['closed_loop']['reference']     # the same in every column
    for mode, delay, sensor in configs:
        reference.setdefault(config_name(mode, delay, sensor), next(iter(reference.values())))
    report['wall_s'] = time.perf_counter() - t0
    (out / 'report.json').write_text(json.dumps(report, indent=2, default=float))
    text = markdown(report)
    (out / 'report.md').write_text(text)
    plots(out, report)
    print(text)
    print(f'wrote {out}/report.json, report.md, report_age.png, report_success.png')
    return 0


if __name__ == '__main__':
    sys.exit(main())
