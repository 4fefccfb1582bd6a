"""The demo: the whole pipeline inserting pegs on the simulated cell with a trained policy.

    make demo                      # 120 s of insertions, >= 10 episodes (first run: the
                                   # policy is built first, <= 5 min on a quiet 2-core machine)
    make demo DURATION=300
    python -m vla_insertion.tools.demo --policy untrained   # random expert, executor disarmed

Starts sim_cell and every node of the launch table as separate processes (the same commands
`ros2 launch vla_insertion vla_insertion.launch.py sim:=true execute:=true` runs, through
core/orchestration/cell_run.py), watches the topics from a small monitor node, prints a status
line every few seconds, stops everything with SIGINT after the given time (or at Ctrl-C or
SIGTERM) and prints a summary.

--policy trained (default): the action expert runs a policy trained on this machine
(core/orchestration/demo_policy.py: demonstrations, feature cache, stage-1 training, built on
the first run and reused after, ending with a closed-loop evaluation on 20 held-out holes),
and once the first chunk arrives the demo arms the chunk executor through its ~/enable
service, as an operator would, and at each episode start clears a latched fault and re-arms it
(every stop disarms); the summary gives the success rate of the episodes that started armed,
with their count, beside the build's held-out evaluation. The VLM is the tiny untrained one
(no real weights exist here): the executor arms on its features only because the demo, as the
sim, sets allow_untrained_vlm, and the log and the summary's `arming` line say so.
--policy untrained: the tiny untrained expert, the executor previewing disarmed (nothing moves
the arm); the demo asks it to arm, and it refuses: an untrained expert is never armed.

Exits non-zero if a program died, the shutdown needed force, or no action chunk was published.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
from pathlib import Path
import sys
import time

from vla_insertion.core import artifacts
from vla_insertion.core.config import ConfigError
from vla_insertion.core.distro import localhost_discovery
from vla_insertion.core.evaluation.run_summary import (
    format_summary, RunRecorder, status_line, summarize)
from vla_insertion.core.evaluation.summary import success_text
from vla_insertion.core.orchestration import demo_policy
from vla_insertion.core.orchestration.cell_run import CellRun, CellRunError
from vla_insertion.core.orchestration.launch_table import installed_paths
from vla_insertion.core.orchestration.processes import StopRequest
from vla_insertion.core.train.feature_age import REFERENCE_VLM_LATENCY_S

log = logging.getLogger('demo')
DEFAULT_OUT = Path('artifacts/demo')
DEFAULT_VLM = artifacts.TINY_VLM
DEFAULT_CHECKPOINT = artifacts.UNTRAINED_CHECKPOINT
DEMO_DOMAIN_ID = '77'  # away from the default 0, so a demo does not mix with another graph
DEFAULT_DURATION_S = 120.0   # >= 10 episodes of ~7-10 s (Makefile DURATION)


class _StatusLines:
    """Log the status line every `period_s`, on the demo's own schedule."""

    def __init__(self, recorder: RunRecorder, period_s: float, start_s: float) -> None:
        self._recorder, self._period, self._next = recorder, period_s, start_s + period_s

    def __call__(self) -> None:
        now = time.monotonic()
        if now >= self._next:
            log.info(status_line(self._recorder, self._period, now))
            self._next += self._period


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--duration', type=float, default=DEFAULT_DURATION_S,
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
    # Ctrl-C or SIGTERM from here on: end early, still stop all and print (a flag: a handler
    # that takes a lock can deadlock). The cell's waits end on it; after the cell, it is 130.
    stop = StopRequest()
    stop.install()
    logging.basicConfig(level=logging.INFO, format='[demo] %(message)s')
    os.environ.setdefault('ROS_DOMAIN_ID', DEMO_DOMAIN_ID)
    localhost_discovery(os.environ)
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
        return 130 if stop.requested else 1
    if stop.requested:                 # during the preparation: nothing was started
        return 130

    # The rclpy pieces of the tool: the operator who arms the executor (trained), the monitor.
    from vla_insertion.ros.executor_operator import ExecutorOperator
    from vla_insertion.ros.monitor import MonitorThread
    recorder = RunRecorder()
    operator = ExecutorOperator()
    try:
        cell = CellRun(
            args.out, params_file=params_file,
            arguments={'sim': 'true', 'execute': 'true',
                       'record': 'true' if args.record else 'false',
                       'vlm_model': str(args.vlm_model.resolve()),
                       'checkpoint': str(Path(checkpoint).resolve())},
            # The tiny VLM runs ~10 times a second here; the policy was trained on features as
            # old as the reference GPU's 2.6 Hz makes them (the age model), so it runs at that.
            node_params={'vlm_node': {'max_rate_hz': round(1.0 / REFERENCE_VLM_LATENCY_S, 3)}}
            if trained else None,
            operator=operator,
            on_scored=(lambda report: _scored(recorder, report)) if trained
            else recorder.add_episode, stop=stop)
    except (ConfigError, OSError) as exc:
        if operator is not None:
            operator.close()
        print(f'FAILED: {exc}')
        return 1
    log.info('ROS_DOMAIN_ID=%s, logs in %s', os.environ['ROS_DOMAIN_ID'], args.out / 'logs')
    monitor = None
    failure = 'setup failed'
    end_s = time.monotonic()
    try:
        with cell:
            if not trained:
                cell.start_scoring()   # nothing arms: every episode is the untrained preview's
            monitor = MonitorThread(recorder)
            try:
                failure = _watch(args, cell, recorder, trained)
            except CellRunError as exc:
                failure = 'interrupted' if stop.requested else str(exc)
            end_s = time.monotonic()
    finally:
        if monitor is not None:
            monitor.close()
        if operator is not None:
            operator.close()
    report = cell.stop_report
    measured_from = recorder.chunks[0].recv_s if recorder.chunks else time.monotonic()
    # the build's held-out evaluation (the demo's own trained policy only)
    held = demo_policy.held_out() if trained and args.checkpoint is None else None
    summary = summarize(recorder, since_s=measured_from, held_out=held)
    duration = max(0.0, end_s - measured_from)
    print('\n=== vla_insertion demo summary ===')
    print(f'  {"policy".ljust(18)}  {args.policy} ({checkpoint})')
    print(f'  {"arming".ljust(18)}  {cell.arming or "not asked"}')
    print(format_summary(summary, duration))
    if trained:
        rate = (f'{success_text(summary)} over {summary["episodes"]} live episode(s)'
                if summary['episodes'] else 'no episode decided while armed (try DURATION=300)')
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
    if stop.requested:
        return 130
    return 1 if failure or not report.clean or summary['actions'] == 0 else 0


def _scored(recorder: RunRecorder, report: dict) -> None:
    """Keep a scored episode's end report for the summary, and say how it ended."""
    recorder.add_episode(report)
    log.info('episode %d: %s%s', report['episode'], report['reason'],
             f' in {report["time_to_insert_s"]:.1f} s' if report['success'] else '')


def _watch(args, cell: CellRun, recorder: RunRecorder, trained: bool) -> str:
    """Wait for the first chunk, arm, then measure for the duration; return a failure or ''.

    Raises CellRunError when a program exits or a signal asks to stop.
    """
    start = time.monotonic()
    status = _StatusLines(recorder, args.status_period, start)
    if not cell.wait_for(lambda: recorder.chunks, args.startup_timeout, poll=status):
        return f'no action chunk within {args.startup_timeout:.0f} s'
    first_chunk_s = recorder.chunks[0].recv_s
    log.info('first action chunk after %.1f s; measuring for %.0f s',
             first_chunk_s - start, args.duration)
    # Untrained: ask too, to show the rule: the executor never arms an untrained expert.
    armed = cell.arm()
    if trained and not armed:
        return 'the chunk executor refused to arm'
    if not trained and armed:
        return 'the chunk executor ARMED an untrained expert'
    left_s = first_chunk_s + args.duration - time.monotonic()
    cell.wait_for(lambda: False, max(0.0, left_s), poll=status)
    return ''


def _json_default(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


def main(argv=None) -> int:
    return run(argv)


if __name__ == '__main__':
    sys.exit(main())
