"""core/orchestration/builders.py: one executor and one policy from the params file, everywhere.

The params file's joint limits reach the executor that records demonstrations and the one the
sim evaluates with; an added VLM delay widens the expert's feature-age limit, and the sim
evaluator builds the VLM once for all its configurations.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vla_insertion.core.bag.recording import load_recording
from vla_insertion.core.config import ConfigError, ExpertConfig, VlmConfig
from vla_insertion.core.orchestration.builders import (
    build_runner, executor_settings, SIM_EXECUTOR, SimConfiguration, SimEvaluator,
    staleness_limits, widened_feature_age_s)
from vla_insertion.core.sim.loop import PipelineTiming
from vla_insertion.tools import record_demonstrations

TIGHT_VELOCITY = 0.2        # [rad/s]; the demonstrator moves its joints at up to ~0.8 rad/s
VIEWS = ('zed_1', 'oak')


def tight_params(folder: Path) -> Path:
    """Write a cell whose arm joints move at TIGHT_VELOCITY at most; one small view."""
    path = folder / 'tight.yaml'
    path.write_text(
        '/**/vlm_node:\n  ros__parameters:\n    view_names: [zed_1]\n'
        '    image_width: 64\n    image_height: 36\n'
        '/**/chunk_executor:\n  ros__parameters:\n    merge: latest\n    joint_limits:\n'
        + ''.join(f'      joint_{i}: {{max_velocity: {TIGHT_VELOCITY}}}\n'
                  for i in range(1, 7)))
    return path


def test_executor_settings_are_the_node_section_with_its_joint_limits(tmp_path):
    settings = executor_settings(tight_params(tmp_path), overrides=SIM_EXECUTOR)
    assert settings.config.merge == 'latest' and settings.config.start_armed
    assert np.array_equal(settings.limits.array('max_velocity')[:6], [TIGHT_VELOCITY] * 6)
    assert settings.limits.array('max_velocity')[6] == 2.0          # the gripper's default
    assert settings.build().config == settings.config
    assert settings.with_config(merge='blend').config.merge == 'blend'
    with pytest.raises(ConfigError, match='merge'):
        settings.with_config(merge='average')
    # no params file: the defaults
    defaults = executor_settings(None)
    assert defaults.config.merge == 'blend'
    assert defaults.limits.array('max_velocity')[0] == 1.0


def test_a_joint_the_executor_does_not_command_is_refused_by_name(tmp_path):
    path = tmp_path / 'bad.yaml'
    path.write_text('/**/chunk_executor:\n  ros__parameters:\n'
                    '    joint_limits.joint_9.max_velocity: 0.5\n')
    with pytest.raises(ConfigError, match='joint_9'):
        executor_settings(path)


@pytest.mark.slow
def test_the_params_files_joint_limits_reach_the_demonstrations(tmp_path):
    """record_demonstrations --backend sim moves the arm within the cell's tighter limits."""
    out = tmp_path / 'demos'
    assert record_demonstrations.main([
        '--backend', 'sim', '--episodes', '1', '--seed', '3', '--camera-fps', '1',
        '--noise-rad', '0', '--keep-failures', '--params-file', str(tight_params(tmp_path)),
        '-o', str(out)]) == 0
    [entry] = json.loads((out / 'episodes.json').read_text())['episodes']
    trajectory = load_recording(out / entry['bag'], views=()).trajectory
    speed = np.abs(np.diff(trajectory.positions[:, :6], axis=0)
                   / np.diff(trajectory.times_s)[:, None]).max()
    # at the limit, never over it (with the default limits it reaches ~0.5 rad/s and more)
    assert 0.9 * TIGHT_VELOCITY <= speed <= 1.05 * TIGHT_VELOCITY, speed


@pytest.mark.slow
def test_the_sim_evaluator_runs_the_given_executor(tmp_path):
    """Slower joints: the same episode of the demonstrator takes longer to insert."""
    evaluator, armed = SimEvaluator(), SIM_EXECUTOR
    runs = {name: evaluator.run(SimConfiguration(settings, PipelineTiming(), seed=3), 1)
            for name, settings in (
                ('default', executor_settings(None, overrides=armed)),
                ('tight', executor_settings(tight_params(tmp_path), overrides=armed)))}
    assert runs['default']['successes'] == runs['tight']['successes'] == 1
    assert runs['tight']['time_to_insert_s_mean'] > runs['default']['time_to_insert_s_mean'] \
        + 0.5, runs


@pytest.mark.slow
def test_episodes_split_over_workers_are_the_episodes_of_one_process():
    """Each episode seeds its own sensor noise: a run split by episode ranges is the same run."""
    config = SimConfiguration(executor_settings(None, overrides=SIM_EXECUTOR),
                              PipelineTiming(), seed=4, first_episode=2, noise_seed=9)
    one = SimEvaluator().episodes(config, 3)
    split = SimEvaluator().episodes(config, 3, workers=2)
    assert [m.record.index for m in split] == [2, 3, 4]
    for a, b in zip(split, one):      # equal but for float rounding of the absolute times
        assert (a.record.reason, a.record.hole_top_m, a.chunks) == \
            (b.record.reason, b.record.hole_top_m, b.chunks)
        assert (a.record.duration_s, a.record.peak_force_n, a.record.mean_force_n,
                a.record.max_depth_m) == pytest.approx(
            (b.record.duration_s, b.record.peak_force_n, b.record.mean_force_n,
             b.record.max_depth_m), rel=1e-9)


def test_an_added_vlm_delay_widens_only_the_feature_age_limit():
    expert = ExpertConfig(max_feature_age_s=1.0, max_sensor_age_s=0.3)
    limits = staleness_limits(expert, 0.8)
    assert limits.max_feature_age_s == pytest.approx(1.8)
    assert widened_feature_age_s(expert, 0.8) == pytest.approx(1.8)
    assert limits.max_sensor_age_s == 0.3 and limits.max_robot_age_s == expert.max_robot_age_s
    assert staleness_limits(expert).max_feature_age_s == 1.0


def test_a_configuration_is_the_learned_policy_or_the_reference():
    with pytest.raises(ConfigError, match='neither'):
        SimConfiguration(executor_settings(None), PipelineTiming(), vlm=VlmConfig())


@pytest.fixture(scope='module')
def learned(tiny_vlm_dir, tmp_path_factory):
    from vla_insertion.core.expert.presets import make_untrained_checkpoint
    from vla_insertion.core.vlm import feature_contract_for
    vlm = VlmConfig(model=str(tiny_vlm_dir), view_names=VIEWS, image_width=112,
                    image_height=56, torch_threads=1, warmup_runs=0)
    folder = tmp_path_factory.mktemp('builders')
    checkpoints = [str(make_untrained_checkpoint(folder / name, feature_contract_for(vlm),
                                                 preset='small')) for name in ('a', 'b')]
    return vlm, checkpoints


def test_the_runner_of_a_checkpoint_gets_the_widened_limit(learned):
    _, (checkpoint, _) = learned
    runner = build_runner(ExpertConfig(checkpoint=checkpoint, max_feature_age_s=0.5), 0.8)
    assert runner.limits.max_feature_age_s == pytest.approx(1.3)


def test_the_evaluator_builds_one_vlm_and_widens_the_limit_by_the_timings_delay(learned):
    vlm, (first, second) = learned
    evaluator = SimEvaluator()
    loops = [evaluator.loop(SimConfiguration(
        executor_settings(None, overrides=SIM_EXECUTOR),
        PipelineTiming(vlm_delay_s=delay), vlm=vlm, expert=ExpertConfig(checkpoint=checkpoint)))
        for checkpoint, delay in ((first, 0.0), (second, 0.8))]
    assert loops[1].vlm is loops[0].vlm                   # built once, both checkpoints
    assert loops[0].runner is not loops[1].runner
    assert [loop.runner.limits.max_feature_age_s for loop in loops] == pytest.approx([1.0, 1.8])


def test_the_sensor_ablation_zeroes_only_the_policys_window(learned):
    """policy_report's ablation: the expert ticks on zeros, the executor's gate on the sensor."""
    vlm, (checkpoint, _) = learned
    windows = []
    for sensor in ('recorded', 'zeroed'):
        loop = SimEvaluator().loop(SimConfiguration(
            executor_settings(None, overrides=SIM_EXECUTOR), PipelineTiming(),
            vlm=vlm, expert=ExpertConfig(checkpoint=checkpoint), sensor_input=sensor))
        loop.advance_to(0.5)
        windows.append(loop.inputs.held('window').samples)
        # the sensor itself (what the executor and a labeller read): the laser sees the block
        assert loop.window(0.5).samples[:, 6].min() > 0.01
    assert np.abs(windows[0][:, 6]).min() > 0.01 and not windows[1].any()
    with pytest.raises(ConfigError, match='sensor_input'):
        SimConfiguration(executor_settings(None), PipelineTiming(), sensor_input='half')
