"""The orchestrator's own rules, without a cell: scoring, arming, resets, a program that exits.

CellRun's episodes come from a stand-in listener and its operator is a stand-in that records
its calls; the program that exits is a two-line shell script (core/orchestration/cell_run.py).
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from vla_insertion.core.orchestration import cell_run
from vla_insertion.core.orchestration.cell_run import CellRun, CellRunError
from vla_insertion.core.orchestration.launch_table import (
    dds_environment, launch_arguments, NodeSpec)

ROOT = Path(__file__).resolve().parents[3]


class FakeOperator:
    def __init__(self, arms: bool = True) -> None:
        self.calls: list[str] = []
        self._arms = arms

    def enable(self, on: bool = True) -> tuple[bool, str]:
        self.calls.append('enable')
        return (True, 'armed') if self._arms else (False, 'no robot state received yet')

    def reset_fault(self) -> tuple[bool, str]:
        self.calls.append('reset_fault')
        return True, 'fault force_limit cleared'


class FakeEpisodes:
    """What CellRun reads of an EpisodeListener: the newest report and the end reports."""

    def __init__(self) -> None:
        self.latest = None
        self.ends: list[dict] = []

    def outcomes(self) -> list[dict]:
        return list(self.ends)


@pytest.fixture
def bin_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(cell_run, 'installed_paths',
                        lambda: (tmp_path, ROOT / 'config' / 'vla_insertion.yaml'))
    return tmp_path


def _run(tmp_path: Path, **options) -> tuple[CellRun, FakeEpisodes]:
    run = CellRun(tmp_path / 'run', nodes=(), **options)     # no program of the table
    episodes = FakeEpisodes()
    run.episodes = episodes
    return run, episodes


def _report(episode: int) -> dict:
    return {'episode': episode, 'success': True, 'reason': 'success'}


def test_arming_scores_from_the_next_episode_and_resets_faults_from_then_on(bin_dir):
    operator, scored = FakeOperator(), []
    run, episodes = _run(bin_dir, operator=operator, on_scored=scored.append)
    run._episode_started({'episode': 0})
    assert operator.calls == []                    # disarmed: nothing to reset
    episodes.latest = SimpleNamespace(episode=0)   # the arm is taken during episode 0
    assert run.arm() and run.first_scored == 1 and operator.calls == ['enable']
    run._episode_ended(_report(0))                 # it started before the policy drove
    run._episode_started({'episode': 1})
    run._episode_ended(_report(1))
    assert operator.calls == ['enable', 'reset_fault', 'enable']   # every stop disarms
    assert [e['episode'] for e in scored] == [1]
    episodes.ends = [_report(0), _report(1)]
    assert [e['episode'] for e in run.scored()] == [1]


def test_a_refused_arming_scores_nothing(bin_dir):
    operator = FakeOperator(arms=False)
    run, _episodes = _run(bin_dir, operator=operator)
    assert not run.arm()
    assert run.first_scored is None and not run.armed
    run._episode_started({'episode': 2})
    assert operator.calls == ['enable']


def test_armed_at_start_resets_and_rearms_at_every_episode_start(bin_dir):
    operator = FakeOperator()
    run, _episodes = _run(bin_dir, operator=operator, armed_at_start=True)
    run._episode_started({'episode': 0})
    assert operator.calls == ['reset_fault', 'enable']


def test_launch_arguments_and_node_parameters_reach_the_commands(bin_dir):
    run = CellRun(bin_dir / 'run', arguments={'reference': 'true', 'checkpoint': 'ckpt'},
                  nodes=('reference_policy', 'chunk_executor', 'bag_recorder'),
                  node_params={'reference_policy': {'rate_hz': 5.0}},
                  recorder_topics=('/diagnostics',), armed_at_start=True)
    commands = dict(run._commands)
    assert list(commands) == ['reference_policy', 'chunk_executor', 'bag_recorder']
    assert 'rate_hz:=5.0' in commands['reference_policy']
    assert 'start_armed:=true' in commands['chunk_executor']
    assert f'output_dir:={bin_dir / "run"}' in commands['bag_recorder']
    assert run.bag_path == bin_dir / 'run' / 'bag' and run.arguments['record'] == 'true'
    with pytest.raises(KeyError):
        launch_arguments(no_such_argument='1')


@pytest.mark.slow
def test_a_program_that_exits_ends_the_wait_and_everything_stops(bin_dir):
    script = bin_dir / 'quitter'
    script.write_text('#!/bin/sh\nexit 3\n')
    script.chmod(0o755)
    with CellRun(bin_dir / 'run', nodes=()) as run:
        run.start(NodeSpec('quitter', 'quitter', 'SimCellConfig', ros_node=False))
        with pytest.raises(CellRunError, match=r'quitter \(exit 3, log .*quitter.log\)'):
            run.wait_for(lambda: False, 60.0)
    assert run.stop_report.exit_codes == {'quitter': 3} and run.stop_report.clean


def test_a_signal_ends_the_waits_and_reaches_the_tool_after_the_stop(bin_dir):
    """A run without a `stop` of its own holds SIGINT and SIGTERM while it runs.

    Its wait ends with CellRunError, everything stops, and only then does the tool's handler
    see the signal.
    """
    import os
    import signal

    from vla_insertion.core.orchestration.processes import StopRequest
    tool = StopRequest()
    previous = tool.install()
    try:
        with pytest.raises(CellRunError, match='interrupted'):
            with CellRun(bin_dir / 'run', nodes=()) as run:
                os.kill(os.getpid(), signal.SIGTERM)
                assert run.interrupted and not tool.requested      # held while it runs
                run.wait_for(lambda: False, 60.0)
        assert run.stop_report is not None and tool.signals == {signal.SIGTERM: True}
    finally:
        StopRequest.restore(previous)


def test_the_tools_own_stop_request_ends_the_waits(bin_dir):
    from vla_insertion.core.orchestration.processes import StopRequest
    stop = StopRequest()
    run, _episodes = _run(bin_dir, operator=FakeOperator(), stop=stop)
    assert run.wait_for(lambda: True, 1.0)
    stop.requested = True
    with pytest.raises(CellRunError, match='interrupted'):
        run.wait_for(lambda: False, 60.0)
    with pytest.raises(CellRunError, match='interrupted'):
        run.arm()                       # the operator's call runs in a thread; the wait ends


def test_one_host_of_two_runs_its_role_under_the_prefix_with_the_dds_profile(bin_dir):
    prefix = ('nsenter', '--target=1', '--net', '--')
    gpu = CellRun(bin_dir / 'gpu', arguments={'role': 'gpu_host', 'sim': 'true',
                                              'dds_profile': 'two_hosts'},
                  prefix=prefix, env={'PATH': '/bin'})
    assert [name for name, _ in gpu._commands] == ['camera_bridge', 'vlm_node']
    assert all(tuple(cmd[:len(prefix)]) == prefix for _, cmd in gpu._commands)
    assert gpu.sim is None                       # sim_cell runs on the robot host
    assert gpu._group._env == {'PATH': '/bin', **dds_environment(
        gpu.arguments, ROOT / 'config')}                      # the profile's variable
    assert str(ROOT / 'config' / 'fastdds_two_hosts.xml') in gpu._group._env.values()
    robot = CellRun(bin_dir / 'robot', arguments={'role': 'robot_host', 'sim': 'true'},
                    prefix=prefix, env={})
    assert [name for name, _ in robot._commands] == [
        'sim_cell', 'robot_bridge', 'sensor_bridge', 'action_expert', 'chunk_executor']
    assert robot.sim is not None and robot._group._env == {}      # no dds_profile: as given
    with pytest.raises(CellRunError, match='does not watch the arm'):
        robot.wait_ready(timeout_s=0.1)          # its listeners would not reach sim_cell
    with pytest.raises(ValueError, match='role must be one of'):
        CellRun(bin_dir / 'x', arguments={'role': 'gpu'})


@pytest.mark.slow
def test_a_prefixed_run_starts_no_listener_and_prefixes_extra_programs(bin_dir):
    script = bin_dir / 'quitter'
    script.write_text('#!/bin/sh\nexit 3\n')
    script.chmod(0o755)
    with CellRun(bin_dir / 'run', arguments={'sim': 'true'}, nodes=(),
                 prefix=('env', 'VLA_PREFIXED=1')) as run:
        assert run.episodes is None and run.sim is not None
        process = run.start(NodeSpec('quitter', 'quitter', 'SimCellConfig', ros_node=False))
        assert process.cmd[:2] == ['env', 'VLA_PREFIXED=1']
        with pytest.raises(CellRunError, match='quitter'):
            run.wait_for(lambda: False, 60.0)


def test_the_sims_operator_says_a_repeated_refusal_once(bin_dir, monkeypatch, caplog):
    """The re-arming thread tries every REARM_PERIOD_S; a latched fault refuses each time."""
    answers = iter([(False, 'fault force_limit latched: reset it first')] * 3
                   + [(True, 'armed'), (True, 'already armed'), (True, 'armed')])

    class Operator(FakeOperator):
        def enable(self, on: bool = True) -> tuple[bool, str]:
            try:
                return next(answers)
            except StopIteration:
                run._rearm_stop.set()
                return True, 'already armed'

    run, _episodes = _run(bin_dir, operator=Operator(), armed_at_start=True)
    monkeypatch.setattr(cell_run, 'REARM_PERIOD_S', 0.0)
    with caplog.at_level('INFO', logger=cell_run.log.name):
        run._keep_armed()
    said = [r.getMessage() for r in caplog.records if 're-arming' in r.getMessage()]
    assert said == ['re-arming after a stop: fault force_limit latched: reset it first',
                    're-arming after a stop: armed', 're-arming after a stop: armed']
