"""The demo's trained policy: built once, reused, rebuilt when its recipe or contract changes.

A tiny recipe (2 episodes, a few steps, a DAgger round of 1 episode, 1 held-out episode) runs
the same programs the real one does (record_demonstrations, cache_features, train_expert,
dagger, or closed_loop without rounds) in a few minutes.
"""
from __future__ import annotations

from dataclasses import replace
import json
from pathlib import Path

import numpy as np
import pytest

from vla_insertion.core import artifacts

from vla_insertion.core.artifacts import ArtifactError
from vla_insertion.core.orchestration import demo_policy
from vla_insertion.core.orchestration.demo_policy import DemoRecipe, prepare_demo_policy

ROOT = Path(__file__).resolve().parents[2]
PARAMS = ROOT / 'config' / 'vla_insertion.yaml'
TINY = DemoRecipe(episodes=2, steps=4, batch_size=8, workers=1, threads=1, camera_fps=3.0,
                  dagger_episodes=1, dagger_steps=2, eval_episodes=1)


def test_built_once_reused_and_rebuilt_on_a_new_recipe(tiny_vlm_dir, tmp_path):
    digest = artifacts.demo_contract(tiny_vlm_dir, PARAMS).digest
    lines: list[str] = []
    steps = prepare_demo_policy(tiny_vlm_dir, PARAMS, digest, root=tmp_path, recipe=TINY,
                                echo=lines.append)
    assert steps == ['record_demonstrations', 'cache_features', 'train_expert', 'dagger']
    checkpoint = demo_policy.demo_policy_checkpoint(tmp_path)
    config = json.loads((checkpoint / 'config.json').read_text())
    assert config['contract_digest'] == digest
    # the DAgger round's expert: trained on the demonstrations and the driven episode
    assert len(config['extra']['bags']) == 3
    assert any('train_expert:' in line for line in lines)           # the children's output
    assert demo_policy.ready(tmp_path, TINY, digest)
    # the build's held-out evaluation, for the demo's summary; the build timed itself
    held = demo_policy.held_out(tmp_path)
    assert held['episodes'] == 1 and held['seed'] == 7 and 0.0 <= held['success_rate'] <= 1.0
    built = json.loads((tmp_path / 'recipe.json').read_text())
    assert built['build_s'] > 0 and set(built['steps_s']) == set(steps)
    assert any('ready after' in line and 'dagger' in line for line in lines)
    assert any('held-out holes (seed 7, in-process)' in line for line in lines)
    # reused: nothing runs
    assert prepare_demo_policy(tiny_vlm_dir, PARAMS, digest, root=tmp_path, recipe=TINY,
                               echo=lines.append) == []
    # another contract (another VLM or prompt): not ready
    assert not demo_policy.ready(tmp_path, TINY, 'another digest')
    # another recipe: built again from the demonstrations on; without DAgger rounds the
    # held-out evaluation is closed_loop's
    more = replace(TINY, steps=6, dagger_rounds=0)
    lines.clear()
    assert prepare_demo_policy(tiny_vlm_dir, PARAMS, digest, root=tmp_path, recipe=more,
                               echo=lines.append) == [
        'record_demonstrations', 'cache_features', 'train_expert', 'closed_loop']
    assert any('another recipe' in line for line in lines)
    assert not (tmp_path / 'dagger').exists() and demo_policy.held_out(tmp_path)['episodes'] == 1


def test_a_failed_step_is_named(tiny_vlm_dir, tmp_path):
    bad_params = tmp_path / 'bad.yaml'
    bad_params.write_text('vlm_node:\n  ros__parameters:\n    image_width: 1\n')
    with pytest.raises(ArtifactError, match='record_demonstrations failed'):
        prepare_demo_policy(tiny_vlm_dir, bad_params, 'x', root=tmp_path / 'p', recipe=TINY,
                            echo=lambda line: None)
    assert not demo_policy.ready(tmp_path / 'p', TINY, 'x')


def test_policy_report_on_the_tiny_build(tiny_vlm_dir, tmp_path):
    """The evaluation command on a tiny recorded set: the table's shape, finite numbers."""
    from vla_insertion.tools import policy_report
    digest = artifacts.demo_contract(tiny_vlm_dir, PARAMS).digest
    root = tmp_path / 'build'
    prepare_demo_policy(tiny_vlm_dir, PARAMS, digest, root=root, recipe=TINY,
                        echo=lambda line: None)
    out = tmp_path / 'report'
    assert policy_report.main([
        '--checkpoint', f'trained={demo_policy.demo_policy_checkpoint(root)}',
        '--cache', str(root / 'cache'), '--params-file', str(PARAMS),
        '--vlm-model', str(tiny_vlm_dir), '--episodes', '1', '--configs', 'async:0',
        '--open-loop-bags', '1', '-o', str(out)]) == 0
    report = json.loads((out / 'report.json').read_text())
    trained = report['checkpoints']['trained']
    for split in ('train', 'held_out'):          # 2 episodes: one on each side
        errors = trained['open_loop'][split]
        assert set(errors) == {f'joint_{i}' for i in range(1, 7)} | {'mean'}
        assert all(np.isfinite([e['mae_deg'], e['rmse_deg']]).all() for e in errors.values())
    bins = trained['loss_by_age']
    assert len(bins) == 7 and any(b['pairs'] for b in bins)
    assert all(np.isfinite([b['loss'], b['excess']]).all() for b in bins if b['pairs'])
    assert set(report['closed_loop']) == {'trained', 'reference'}
    for results in report['closed_loop'].values():     # the sensor as recorded, and zeroed
        assert set(results) == {'async 0s', 'async 0s, sensor zeroed'}
        for result in results.values():
            assert result['episodes'] == 1 and 0.0 <= result['success_rate'] <= 1.0
    assert report['closed_loop']['reference']['async 0s']['success_rate'] == 1.0
    text = (out / 'report.md').read_text()
    assert '| trained | held_out |' in text and '| trained excess |' in text
    assert 'What the sensor is worth' in text and '| trained | ' in text.split('worth')[1]
    assert (out / 'report_age.png').is_file() and (out / 'report_success.png').is_file()
