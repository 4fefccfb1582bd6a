"""DAgger as one call: the stopping rule, the rounds table, and two real rounds on a tiny budget.

Mirrors core/train/dagger.py and tools/dagger.py.
"""
from __future__ import annotations

import json
import math

import pytest

from vla_insertion.core.train.dagger import (
    best_round, DaggerConfig, markdown, run_dagger, stopping_reason)
from vla_insertion.tools import dagger as dagger_tool

VIEWS = ('zed_1', 'oak')


def rows(*rates):
    return [{'round': k, 'held_out_success': rate, 'held_out_episodes': 20,
             'checkpoint': f'c{k}'} for k, rate in enumerate(rates)]


def test_the_stopping_rule():
    config = DaggerConfig(out='x', rounds=4, patience=1, target=0.95)
    assert stopping_reason(rows(0.5), config) is None                  # only the start
    assert stopping_reason(rows(0.5, 0.7), config) is None             # better: go on
    assert 'did not improve on 0.70 in 1 round' in stopping_reason(rows(0.5, 0.7, 0.7), config)
    assert 'reached the target' in stopping_reason(rows(0.5, 0.95), config)
    assert 'budget of 4' in stopping_reason(rows(0.1, 0.2, 0.3, 0.4, 0.5), config)
    patient = DaggerConfig(out='x', rounds=9, patience=2)
    assert stopping_reason(rows(0.5, 0.4), patient) is None            # one worse round: wait
    assert 'in 2 round(s)' in stopping_reason(rows(0.5, 0.4, 0.5), patient)
    assert stopping_reason(rows(0.5, 0.4, 0.6), patient) is None
    # without a start evaluation the budget still ends it
    unrated = [{'round': 1, 'held_out_success': 0.3}]
    assert 'budget of 1' in stopping_reason(unrated, DaggerConfig(out='x', rounds=1))
    assert stopping_reason(unrated, DaggerConfig(out='x', rounds=2)) is None


def test_the_best_round_is_the_later_of_equals_and_the_table_names_every_round():
    assert best_round(rows(0.5, 0.8, 0.8, 0.6))['round'] == 2
    text = markdown(rows(0.5, 0.8))
    assert text.count('\n') == 4 and '| 1 |' in text and '0.80 (16/20)' in text


def test_config_is_validated():
    with pytest.raises(ValueError, match='rounds'):
        DaggerConfig(out='x', rounds=0)
    with pytest.raises(ValueError, match='target'):
        DaggerConfig(out='x', target=1.5)


def test_the_tool_refuses_a_start_that_is_no_trained_checkpoint(tmp_path, capsys):
    code = dagger_tool.main([str(tmp_path / 'bag'), '--checkpoint', str(tmp_path),
                             '--cache', str(tmp_path / 'cache'), '-o', str(tmp_path / 'out')])
    assert code == 2 and 'not a trained expert checkpoint' in capsys.readouterr().err


@pytest.mark.slow
def test_two_rounds_on_a_tiny_budget_and_the_stopping_rule_fires(tmp_path, tiny_vlm_dir):
    """A 4-step expert on 2 demonstrations does not insert; DAgger stops after 2 flat rounds."""
    from vla_insertion.core.config import ExpertConfig, VlmConfig
    from vla_insertion.core.expert.staleness import StalenessLimits
    from vla_insertion.core.orchestration.builders import (
        executor_settings, SIM_EXECUTOR)
    from vla_insertion.core.train.demonstrations import DemoStreams, record_episodes
    from vla_insertion.core.train.feature_cache import build_cache
    from vla_insertion.core.train.fit import fit, FitConfig
    from vla_insertion.core.train.trainer import TrainConfig
    vlm = VlmConfig(model=str(tiny_vlm_dir), view_names=VIEWS, image_width=112,
                    image_height=56, torch_threads=1, warmup_runs=0)
    streams = DemoStreams(VIEWS, width=112, height=56, camera_fps=3.0)
    manifest = record_episodes(tmp_path / 'demos', 2, streams, seed=3)
    bags = [str(tmp_path / 'demos' / e['bag']) for e in manifest]
    build_cache(bags, vlm, tmp_path / 'cache', 0.385)
    template = FitConfig(bags=tuple(bags), cache=str(tmp_path / 'cache'), preset='small',
                         targets='chunks', feature_age='newest',
                         train=TrainConfig(steps=4, batch_size=8, warmup_steps=0))
    start = fit(FitConfig(**{**template.__dict__, 'out': str(tmp_path / 'start')}),
                limits=StalenessLimits(), progress_bar=False, report=lambda line: None)
    lines: list[str] = []
    config = DaggerConfig(out=str(tmp_path / 'dagger'), rounds=5, episodes=1, eval_episodes=1,
                          patience=2, steps=3, workers=1, camera_fps=3.0)
    result = run_dagger(config, start.checkpoint, template, vlm=vlm,
                        expert=ExpertConfig(checkpoint=str(start.checkpoint)),
                        executor=executor_settings(None, overrides=SIM_EXECUTOR),
                        say=lines.append)
    assert [r['round'] for r in result.rows] == [0, 1, 2]
    assert 'did not improve' in result.stopped and 'in 2 round(s)' in result.stopped
    for row in result.rows[1:]:
        numbers = [row[k] for k in ('driven_success', 'held_out_success', 'val_loss',
                                    'record_s', 'cache_s', 'train_s', 'eval_s')]
        assert all(math.isfinite(v) for v in numbers), row
        assert row['driven'] == 1 and row['labels'] > 0 and row['samples'] > 0
        assert (tmp_path / 'dagger' / f'round_{row["round"]}' / 'checkpoint' /
                'config.json').is_file()
    # round 2 trained on the demonstrations and both rounds' bags, from round 1's expert
    extra = json.loads((tmp_path / 'dagger' / 'round_2' / 'checkpoint' /
                        'config.json').read_text())['extra']
    assert len(extra['bags']) == 4
    written = json.loads((tmp_path / 'dagger' / 'rounds.json').read_text())
    assert written['stopped'] == result.stopped and len(written['rounds']) == 3
    assert any('| 2 |' in line for line in lines)                  # the table, printed
