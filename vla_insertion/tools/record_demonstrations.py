"""record_demonstrations: episodes of the scripted demonstrator, recorded for training.

    record_demonstrations --episodes 20 --seed 0 -o artifacts/demos
    record_demonstrations --backend sim --episodes 200 -o artifacts/demos_sim

--backend ros (default) runs the simulated cell with the reference policy driving the arm
through the same command path as a learned policy (reference_policy -> chunk_executor ->
command_v1 -> sim_cell, every program from the launch table on free loopback ports), records
the documented topic set with the ordinary bag_recorder, and splits the recording into one
bag per episode (episode_0007, ...: the episode's start to its outcome, from sim_cell's
episode stream). Only successful episodes are kept unless --keep-failures. `episodes.json`
lists each bag with its seed, episode index, hole position and outcome: train_expert splits
train and validation by these bags.

--backend sim writes the same topics from the in-process closed loop
(core/train/demonstrations.py: the demonstrator through the real executor, the params file's
with its joint limits, on the sim cell), faster than real time, for the hundreds of episodes a
policy needs: episodes start from a randomised pose (--start-range-rad) and the demonstrator's
commands carry smooth noise it has to recover from (--noise-rad, DART), and a share of the
episodes descends on a hole believed off until the sensor feels the block (--misled-fraction),
so the recordings show corrections, searches and lifts and not only the nominal path;
--workers N records disjoint episode ranges in N processes.

--driver CHECKPOINT (with --backend sim) is DAgger: the learned policy of the checkpoint (with
the VLM of --vlm-model / the params file) drives, and the demonstrator labels what it sees at
every tick of it (core/train/demonstrations.py); failed episodes are kept. Train on these bags
together with the demonstrations.

On a real cell the same is done with teleoperation and `bag_recorder` (docs/training.md).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
import shutil
import sys

from vla_insertion.core import bag, topics
from vla_insertion.core.config import ConfigError
from vla_insertion.core.orchestration.cell_run import CellRun, CellRunError
from vla_insertion.core.sim.episode import EpisodeParams
from vla_insertion.ros.executor_operator import ExecutorOperator

log = logging.getLogger('record_demonstrations')


def record_in_process(args: argparse.Namespace, out: Path) -> int:
    from vla_insertion.core.config import ExpertConfig, VlmConfig
    from vla_insertion.core.orchestration.builders import executor_settings, SIM_EXECUTOR
    from vla_insertion.core.params import load_config
    from vla_insertion.core.train.demonstrations import (
        DemoStreams, LearnedDriver, record_parallel)
    driver = None
    try:
        vlm = load_config(VlmConfig, 'vlm_node', args.params_file,
                          overrides={'model': args.vlm_model})
        # the cell's executor, its joint limits included, armed: the demonstrator and a
        # DAgger driver move under the limits the policy is evaluated (closed_loop) and run with
        executor = executor_settings(args.params_file, overrides=SIM_EXECUTOR)
        if args.driver:
            if not Path(args.driver, 'config.json').is_file():
                raise ConfigError(f'--driver {args.driver}: not an expert checkpoint folder '
                                  '(no config.json)')
            driver = LearnedDriver(vlm, load_config(ExpertConfig, 'action_expert',
                                                    args.params_file,
                                                    overrides={'checkpoint': args.driver}))
    except (ConfigError, OSError) as exc:
        print(f'record_demonstrations: {exc}', file=sys.stderr)
        return 2
    streams = DemoStreams(vlm.view_names, width=vlm.image_width, height=vlm.image_height,
                          camera_fps=args.camera_fps)
    manifest = record_parallel(
        out, args.episodes, streams, workers=args.workers, first_episode=args.first_episode,
        log_prefix='[demos] ', seed=args.seed, keep_failures=args.keep_failures,
        start_range_rad=args.start_range_rad, noise_rad=args.noise_rad,
        descent_noise=args.descent_noise, misled_fraction=args.misled_fraction, driver=driver,
        executor=executor)
    (out / 'episodes.json').write_text(json.dumps(
        {'seed': args.seed, 'backend': 'sim', 'recorded': args.episodes, 'kept': len(manifest),
         'first_episode': args.first_episode, 'start_range_rad': args.start_range_rad,
         'noise_rad': args.noise_rad, 'descent_noise': args.descent_noise,
         'misled_fraction': args.misled_fraction, 'camera_fps': args.camera_fps,
         'driver': args.driver,
         'labels': 'demonstrator' if driver is None else 'demonstrator, learned policy driving',
         'episodes': manifest},
        indent=2))
    print(f'{len(manifest)} of {args.episodes} episodes kept in {out} (episodes.json)')
    return 0 if manifest else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='record_demonstrations',
                                     description=__doc__.split('\n\n')[0])
    parser.add_argument('--backend', choices=('ros', 'sim'), default='ros')
    parser.add_argument('--episodes', type=int, default=20, help='episodes to record')
    parser.add_argument('--seed', type=int, default=0, help='seed of the hole positions')
    parser.add_argument('--params-file', default='config/vla_insertion.yaml')
    parser.add_argument('--keep-failures', action='store_true',
                        help='also keep episodes the demonstrator failed')
    parser.add_argument('--keep-recording', action='store_true',
                        help='keep the whole recording beside the episode bags')
    parser.add_argument('-o', '--output', default='artifacts/demos')
    sim = parser.add_argument_group('--backend sim')
    sim.add_argument('--first-episode', type=int, default=0,
                     help='index of the first episode (another range, same seed: more holes)')
    sim.add_argument('--start-range-rad', type=float, default=0.15,
                     help='start joints = home + U(+- this) per joint [rad]')
    sim.add_argument('--noise-rad', type=float, default=0.03,
                     help="size of the smooth noise on the demonstrator's commands [rad]")
    sim.add_argument('--descent-noise', type=float, default=0.15,
                     help='the noise in the descent over the hole, as a fraction of --noise-rad '
                     '(fading out 4 mm over the block) [1]')
    sim.add_argument('--misled-fraction', type=float, default=0.0,
                     help='share of the episodes descending on a hole believed 1.2-3 mm off '
                     'until the sensor feels the block (then the demonstrator searches) [1]')
    sim.add_argument('--camera-fps', type=float, default=5.0,
                     help='frames per view per second (the VLM uses ~2.6 of them) [Hz]')
    sim.add_argument('--workers', type=int, default=1, help='processes recording in parallel')
    sim.add_argument('--driver', metavar='CHECKPOINT',
                     help='DAgger: this expert checkpoint drives, the demonstrator labels')
    sim.add_argument('--vlm-model', help="the driver's VLM folder or hub id (default: the "
                     'params file)')
    args = parser.parse_args(argv)
    if args.episodes < 1 or args.first_episode < 0 or args.workers < 1:
        parser.error('--episodes and --workers must be >= 1, --first-episode >= 0')
    if not (0.0 <= args.noise_rad <= 0.2 and 0.0 <= args.descent_noise <= 1.0
            and 0.0 <= args.misled_fraction <= 1.0 and args.camera_fps > 0.0):
        parser.error('--noise-rad must be in 0..0.2, --descent-noise and --misled-fraction in '
                     '0..1, --camera-fps > 0')
    try:                       # the cell's own check of the start range
        EpisodeParams(start_range_rad=args.start_range_rad)
    except ConfigError as exc:
        parser.error(f'--start-range-rad: {exc}')
    logging.basicConfig(level=logging.INFO, format='[demos] %(message)s')
    out = Path(args.output)
    if args.backend == 'sim':
        return record_in_process(args, out)
    if args.driver:
        parser.error('--driver needs --backend sim')
    work = out / 'recording'
    if work.exists():
        shutil.rmtree(work)
    try:
        # the operator clears a fault the last episode latched, at the next one's start
        with ExecutorOperator() as operator, CellRun.simulated(
                work, policy='reference', params_file=args.params_file, seed=args.seed,
                recorder_topics=topics.RECORDED, operator=operator,
                on_scored=lambda e: log.info(
                    f'episode {e["episode"]}: {e["reason"]} in {e["elapsed_s"]:.1f} s')) as run:
            if not run.wait_ready():
                raise CellRunError('the arm never moved: see the logs in ' f'{work / "logs"}')
            scored = run.wait_episodes(args.episodes)
    except (CellRunError, ConfigError, OSError) as exc:
        print(f'record_demonstrations: {exc}', file=sys.stderr)
        return 2
    kept = [e for e in scored if e['success'] or args.keep_failures]
    # the episode's start to its end on the sender (= local, loopback) clock, as log times
    ranges = [(f'episode_{e["episode"]:04d}', int((e['sender_time_s'] - e['elapsed_s']) * 1e9),
               int(e['sender_time_s'] * 1e9)) for e in kept]
    bags = bag.split_by_time(run.bag_path, ranges, out)
    manifest = [{'bag': p.name, 'seed': e['seed'], 'episode': e['episode'],
                 'hole_m': e['hole_m'], 'success': e['success'], 'reason': e['reason'],
                 'duration_s': e['elapsed_s'], 'messages': bag.bag_info(p).message_count}
                for p, e in zip(bags, kept)]
    (out / 'episodes.json').write_text(json.dumps(
        {'seed': args.seed, 'recorded': len(scored), 'kept': len(kept),
         'episodes': manifest}, indent=2))
    if not args.keep_recording:
        shutil.rmtree(run.bag_path, ignore_errors=True)
    print(f'{len(kept)} of {len(scored)} episodes kept in {out} (episodes.json)')
    return 0 if kept else 1


if __name__ == '__main__':
    sys.exit(main())
