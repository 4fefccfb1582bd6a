"""The demo: the whole pipeline inserting pegs on the simulated cell with a trained policy.

    make demo                      # 30 s of insertions (first run: ~10 min to train the policy)
    make demo DURATION=60
    python -m vla_insertion.tools.demo --policy untrained   # random expert, executor disarmed

Starts sim_cell and every node of the launch table as separate processes (the same commands
`ros2 launch vla_insertion vla_insertion.launch.py sim:=true execute:=true` runs), watches the
topics from a small monitor node, prints a status line every few seconds, stops everything with
SIGINT after the given time and prints a summary.

--policy trained (default): the action expert runs a policy trained on this machine
(core/orchestration/demo_policy.py: demonstrations, feature cache, stage-1 training, built on the
first run
and reused after), and once the first chunk arrives the demo arms the chunk executor through
its ~/enable service, as an operator would, and clears a latched fault at each episode start;
the summary gives the success rate of the episodes that started armed. --policy untrained: the
tiny untrained expert, the executor previewing disarmed (nothing moves the arm).

Exits non-zero if a program died, the shutdown needed force, or no action chunk was published.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
from pathlib import Path
import signal
import sys
import threading
import time

from vla_insertion.core import artifacts

from vla_insertion.core.config import SimCellConfig
from vla_insertion.core.evaluation.run_summary import (
    format_summary, RunRecorder, status_line, summarize)
from vla_insertion.core.orchestration import demo_policy
from vla_insertion.core.orchestration.episode_listener import EpisodeListener
from vla_insertion.core.orchestration.launch_table import (
    command_for, enabled_nodes, installed_paths, LAUNCH_ARGUMENTS)
from vla_insertion.core.orchestration.processes import ProcessGroup
from vla_insertion.core.params import load_config
from vla_insertion.core.train.feature_age import REFERENCE_VLM_LATENCY_S

log = logging.getLogger('demo')
ROOT = Path.cwd()
DEFAULT_OUT = Path('artifacts/demo')
DEFAULT_VLM = artifacts.TINY_VLM
DEFAULT_CHECKPOINT = artifacts.UNTRAINED_CHECKPOINT
DEMO_DOMAIN_ID = '77'  # away from the default 0, so a demo does not mix with another graph


class _Monitor:
    """A node that listens to the pipeline's outputs and fills a RunRecorder."""

    def __init__(self, recorder: RunRecorder) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        from vla_insertion.ros.monitor import MonitorNode
        self._rclpy = rclpy
        rclpy.init()
        self.node = MonitorNode(recorder)
        self._executor = SingleThreadedExecutor()
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self._executor.spin()
        except Exception:  # noqa: B902 - the executor stops when the context shuts down
            pass

    def close(self) -> None:
        self._executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self._rclpy.try_shutdown()
        self._thread.join(timeout=2.0)


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--duration', type=float, default=30.0,
                        help='seconds to measure once the first action chunk arrived')
    parser.add_argument('--startup-timeout', type=float, default=180.0,
                        help='seconds to wait for the first action chunk')
    parser.add_argument('--status-period', type=float, default=5.0,
                        help='seconds between status lines')
    parser.add_argument('--out', type=Path, default=DEFAULT_OUT,
                        help='folder for logs/ and summary.json')
    parser.add_argument('--policy', choices=('trained', 'untrained'), default='trained',
                        help='trained: built on the first run, the executor armed; untrained: '
                        'the random expert, the executor disarmed')
    parser.add_argument('--vlm-model', type=Path, default=DEFAULT_VLM)
    parser.add_argument('--checkpoint', type=Path, default=None,
                        help='expert checkpoint (default: the demo policy of --policy)')
    parser.add_argument('--params-file', type=Path, default=None,
                        help='ROS params file (default: the installed vla_insertion.yaml)')
    parser.add_argument('--record', action='store_true', help='also record a bag')
    return parser.parse_args(argv)


def run(argv=None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='[demo] %(message)s')
    os.environ.setdefault('ROS_DOMAIN_ID', DEMO_DOMAIN_ID)
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    os.environ.setdefault('RCUTILS_LOGGING_BUFFERED_STREAM', '0')  # live node logs in logs/
    lib_dir, installed_params = installed_paths()
    params_file = args.params_file or installed_params
    trained = args.policy == 'trained'
    checkpoint = args.checkpoint or DEFAULT_CHECKPOINT
    try:
        artifacts.prepare_demo_models(args.vlm_model, DEFAULT_CHECKPOINT, params_file,
                                      bin_dir=lib_dir)
        if trained and args.checkpoint is None:
            checkpoint = demo_policy.demo_policy_checkpoint()
            demo_policy.prepare_demo_policy(
                args.vlm_model, params_file,
                artifacts.demo_contract(args.vlm_model, params_file).digest, bin_dir=lib_dir,
                echo=lambda line: print(line, flush=True))
    except artifacts.ArtifactError as exc:
        print(f'FAILED: {exc}')
        return 1

    launch_args = {a.name: a.default for a in LAUNCH_ARGUMENTS}
    launch_args.update(sim='true', params_file=str(params_file),
                       vlm_model=str(args.vlm_model.resolve()),
                       checkpoint=str(Path(checkpoint).resolve()),
                       execute='true', record='true' if args.record else 'false')
    specs = enabled_nodes(launch_args)

    recorder = RunRecorder()
    group = ProcessGroup(log_dir=args.out / 'logs', env=dict(os.environ))
    log.info('ROS_DOMAIN_ID=%s, logs in %s', os.environ['ROS_DOMAIN_ID'], args.out / 'logs')
    # Ctrl-C or SIGTERM end the run early but still stop every program and print the summary.
    interrupted = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: interrupted.set())
    monitor = episodes = operator = None
    failure = 'setup failed'
    end_s = time.monotonic()
    try:
        for spec in specs:
            # The tiny VLM runs ~10 times a second here; the policy was trained on features as
            # old as the reference GPU's 2.6 Hz makes them (the age model), so it runs at that.
            paced = {'max_rate_hz': round(1.0 / REFERENCE_VLM_LATENCY_S, 3)} \
                if trained and spec.name == 'vlm_node' else None
            group.start(spec.name, command_for(spec, lib_dir, params_file, launch_args, paced))
        operator = _Operator(recorder) if trained else None
        sim = load_config(SimCellConfig, 'sim_cell', params_file)
        episodes = EpisodeListener(
            sim.episode_bind, sim.episode_port,
            on_end=operator.episode_ended if operator else recorder.add_episode,
            on_start=operator.episode_started if operator else None)
        episodes.start()
        monitor = _Monitor(recorder)
        failure = _watch(args, group, recorder, interrupted, operator)
    finally:
        end_s = time.monotonic()
        log.info('stopping: SIGINT to every process')
        report = group.stop_all(grace_s=10.0)
        if monitor is not None:
            monitor.close()
        if episodes is not None:
            episodes.stop()
        if operator is not None:
            operator.close()
    measured_from = recorder.chunks[0].recv_s if recorder.chunks else time.monotonic()
    summary = summarize(recorder, since_s=measured_from)
    duration = max(0.0, end_s - measured_from)
    print('\n=== vla_insertion demo summary ===')
    print(f'  {"policy".ljust(18)}  {args.policy} ({checkpoint})')
    print(format_summary(summary, duration))
    if trained:
        ep = summary.get('episodes') or {}
        rate = (f'{ep["succeeded"]}/{ep["count"]} = {ep["succeeded"] / ep["count"]:.0%}'
                if ep.get('count') else 'no episode decided while armed (try DURATION=60)')
        print(f'  {"success rate".ljust(18)}  {rate}')
    print(f'  {"shutdown".ljust(18)}  '
          f'{"clean" if report.clean else f"forced: {report.forced}, orphans: {report.orphans}"}')
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / 'summary.json').write_text(json.dumps(
        {**summary, 'duration_s': duration, 'exit_codes': report.exit_codes,
         'forced': report.forced, 'orphans': report.orphans, 'failure': failure},
        indent=2, default=_json_default))
    if failure:
        print(f'\nFAILED: {failure}')
    if interrupted.is_set():
        return 130
    return 1 if failure or not report.clean or summary['actions'] == 0 else 0


class _Operator:
    """Arm the executor once chunks flow, clear latched faults, score the armed episodes."""

    def __init__(self, recorder: RunRecorder) -> None:
        from vla_insertion.ros.executor_operator import ExecutorOperator
        self._client = ExecutorOperator()
        self._recorder = recorder
        self.first_scored: int | None = None    # the first episode that starts armed
        self._current = -1

    def arm(self) -> bool:
        ok, message = self._client.enable(True)
        log.info('arming the chunk executor: %s', message or ('armed' if ok else 'refused'))
        if ok:
            self.first_scored = self._current + 1
        return ok

    def episode_started(self, report: dict) -> None:
        self._current = int(report['episode'])
        if self.first_scored is not None:
            _ok, message = self._client.reset_fault()
            if message != 'no fault latched':
                log.info('episode %d starts: reset_fault: %s', self._current, message)

    def episode_ended(self, report: dict) -> None:
        if self.first_scored is None or report['episode'] < self.first_scored:
            return                               # it started before the policy drove the arm
        self._recorder.add_episode(report)
        log.info('episode %d: %s%s', report['episode'], report['reason'],
                 f' in {report["time_to_insert_s"]:.1f} s' if report['success'] else '')

    def close(self) -> None:
        self._client.close()


def _watch(args, group: ProcessGroup, recorder: RunRecorder, interrupted: threading.Event,
           operator: _Operator | None) -> str:
    """Wait for the first chunk, then measure for the duration; return a failure or ''."""
    start = time.monotonic()
    first_chunk_s = None
    next_status = start + args.status_period
    while not interrupted.is_set():
        now = time.monotonic()
        died = group.exited()
        if died:
            names = ', '.join(f'{p.name} (exit {p.popen.returncode}, log {p.log_path})'
                              for p in died)
            return f'process exited early: {names}'
        if first_chunk_s is None and recorder.chunks:
            first_chunk_s = recorder.chunks[0].recv_s
            log.info('first action chunk after %.1f s; measuring for %.0f s',
                     first_chunk_s - start, args.duration)
            if operator is not None and not operator.arm():
                return 'the chunk executor refused to arm'
        if first_chunk_s is None and now - start > args.startup_timeout:
            return f'no action chunk within {args.startup_timeout:.0f} s'
        if first_chunk_s is not None and now - first_chunk_s >= args.duration:
            return ''
        if now >= next_status:
            log.info(status_line(recorder, args.status_period, now))
            next_status += args.status_period
        interrupted.wait(0.1)
    return 'interrupted'


def _json_default(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


def main(argv=None) -> int:
    return run(argv)


if __name__ == '__main__':
    sys.exit(main())
