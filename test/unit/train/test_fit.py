"""fit() on cached bags: resume continues the same run, the best checkpoint, metrics, budgets.

The runs use the flow head with prefix conditioning so that every random stream of a step
(sample indices, feature draws, prefixes, flow noise and times) must be restored by a resume.
"""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from vla_insertion.core.expert.checkpoint import load_checkpoint
from vla_insertion.core.train.fit import fit, FitConfig
from vla_insertion.core.train.trainer import (
    LAST, METRICS_FILE, param_groups, TrainConfig, WarmupCosine)

STEPS = 24


def run(cached_bags, out, resume: bool = False, **train) -> object:
    cfg = FitConfig(bags=tuple(cached_bags['bags']), out=str(out), cache=cached_bags['cache'],
                    head='flow', flow_steps=4, prefix_conditioning=True, val_fraction=0.34,
                    resume=resume,
                    train=TrainConfig(**{'steps': STEPS, 'batch_size': 16, 'lr': 3e-3,
                                         'warmup_steps': 4, 'val_every': 6, 'save_every': 0,
                                         'max_prefix': 3, **train}))
    torch.set_num_threads(1)
    return fit(cfg, progress_bar=False, report=lambda _msg: None)


def metrics(out) -> list[dict]:
    with open(out / METRICS_FILE, newline='') as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope='module')
def straight(cached_bags, tmp_path_factory):
    out = tmp_path_factory.mktemp('straight')
    return out, run(cached_bags, out)


def test_n_steps_then_resume_m_steps_equals_n_plus_m_steps(cached_bags, straight, tmp_path):
    out_a, result_a = straight
    out_b = tmp_path / 'interrupted'
    first = run(cached_bags, out_b, stop_after=10)
    assert first.train.stopped == 'stop_after' and first.train.step == 10
    assert not (out_b / 'vlm').exists()
    second = run(cached_bags, out_b, resume=True)
    assert second.train.step == STEPS and len(second.train.losses) == STEPS - 10
    np.testing.assert_allclose(first.train.losses + second.train.losses, result_a.train.losses,
                               rtol=1e-5, atol=1e-7)
    rows_a, rows_b = metrics(out_a), metrics(out_b)
    assert [int(r['step']) for r in rows_b] == list(range(1, STEPS + 1))   # no duplicate rows
    np.testing.assert_allclose([float(r['loss']) for r in rows_b],
                               [float(r['loss']) for r in rows_a], rtol=1e-5)
    np.testing.assert_allclose([float(r['lr']) for r in rows_b],
                               [float(r['lr']) for r in rows_a], rtol=1e-6)
    weights_a = load_checkpoint(out_a / LAST).model.state_dict()
    weights_b = load_checkpoint(out_b / LAST).model.state_dict()
    for name, value in weights_a.items():
        np.testing.assert_allclose(weights_b[name].numpy(), value.numpy(), rtol=1e-5,
                                   atol=1e-6, err_msg=name)
    # a resumed run must be the same run
    with pytest.raises(Exception, match='cannot resume.*seed was 0, now 1'):
        run(cached_bags, out_b, resume=True, seed=1)


def test_the_best_checkpoint_by_validation_loss_and_the_metrics(straight):
    out, result = straight
    rows = metrics(out)
    assert len(rows) == STEPS and set(rows[0]) >= {'step', 'lr', 'loss', 'grad_norm',
                                                   'val_loss', 'feature_age_s'}
    validated = [(float(r['val_loss']), int(r['step'])) for r in rows
                 if not math.isnan(float(r['val_loss']))]
    assert [s for _, s in validated] == [6, 12, 18, 24]
    best_loss, best_step = min(validated)
    meta = json.loads((out / 'config.json').read_text())
    assert meta['extra']['step'] == best_step == result.train.best_step
    assert meta['extra']['val_loss'] == pytest.approx(best_loss, rel=1e-4)
    assert meta['untrained'] is False and meta['model']['prefix_conditioning'] is True
    assert not set(meta['extra']['train_episodes']) & set(meta['extra']['val_episodes'])
    assert meta['extra']['final_loss'] < meta['extra']['start_loss']
    assert json.loads((out / LAST / 'config.json').read_text())['extra']['step'] == STEPS
    ages = [float(r['feature_age_s']) for r in rows]
    assert 0.3 < np.mean(ages) < 1.0                        # drawn from the default model
    lr = [float(r['lr']) for r in rows]
    assert lr[0] == pytest.approx(3e-3 / 4) and max(lr) == pytest.approx(3e-3)  # warm-up


def test_a_time_budget_ends_the_run_resumably(cached_bags, tmp_path):
    out = tmp_path / 'budget'
    result = run(cached_bags, out, steps=6, time_budget_s=1e-6)
    assert result.train.stopped == 'time_budget' and result.train.step == 1
    assert (out / 'model.safetensors').is_file() and (out / LAST / 'train_state.pt').is_file()
    assert run(cached_bags, out, resume=True, steps=6).train.step == 6


def test_schedule_and_separate_learning_rates():
    schedule = WarmupCosine(warmup=10, total=110, min_ratio=0.1)
    assert schedule(0) == pytest.approx(0.1) and schedule(9) == pytest.approx(1.0)
    assert schedule(10) == pytest.approx(1.0) and schedule(60) == pytest.approx(0.55)
    assert schedule(110) == pytest.approx(0.1) and schedule(500) == pytest.approx(0.1)
    from vla_insertion.core.expert.model import ActionExpert, ExpertModelConfig
    from vla_insertion.core.expert.presets import PRESETS
    expert = ActionExpert(ExpertModelConfig(**PRESETS['small'], feature_tokens=6,
                                            feature_dim=32))
    cfg = TrainConfig(lr=1e-4, sensor_lr=5e-4)
    groups = {g['name']: g for g in param_groups(expert, None, cfg)}
    assert groups['sensor']['lr'] == 5e-4 and groups['action']['lr'] == 1e-4
    assert groups['action_no_decay']['weight_decay'] == 0.0
    sensor = {id(p) for p in expert.sensor_encoder.parameters()}
    assert {id(p) for p in groups['sensor']['params'] + groups['sensor_no_decay']['params']} \
        == sensor
    count = sum(len(g['params']) for g in groups.values())
    assert count == len(list(expert.parameters()))
