"""Expert checkpoints: bit-exact round trip, contract checks, corrupted and missing files."""
import dataclasses
from dataclasses import replace
import json

import numpy as np
import pytest
from safetensors.torch import load_file
import torch

from vla_insertion.core.data import RobotState, SensorWindowData, VLFeatureData
from vla_insertion.core.expert.checkpoint import (
    check_features, CheckpointError, ContractMismatch, load_checkpoint)
from vla_insertion.core.expert.policy import ExpertPolicy, ObservationError
from vla_insertion.core.expert.presets import make_untrained_checkpoint
from vla_insertion.core.feature_contract import FeatureContract
from vla_insertion.core.interfaces import ExpertObservation
from vla_insertion.tools.make_untrained_checkpoint import main as tool_main

CONTRACT = FeatureContract(model_id='tiny-test-vlm', reduction='image_token_grid_pool',
                           num_tokens=6, feature_dim=32, image_width=64, image_height=36,
                           view_names=('zed_1', 'oak'), prompt='insert')


def observation(seed: int = 0, contract: FeatureContract = CONTRACT, now_s: float = 100.0,
                valid: int = 65) -> ExpertObservation:
    rng = np.random.default_rng(seed)
    samples = rng.standard_normal((65, 7)).astype(np.float32)
    samples[:65 - valid] = np.nan
    obs = ExpertObservation(
        features=VLFeatureData(
            stamp_s=now_s - 0.3, sequence=5, contract_hash=contract.digest,
            model_id=contract.model_id,
            features=rng.standard_normal((contract.num_tokens, contract.feature_dim)
                                         ).astype(np.float32)),
        window=SensorWindowData(stamp_s=now_s - 0.01, samples=samples, valid_samples=valid,
                                sample_rate_hz=650.0,
                                channel_names=('fx', 'fy', 'fz', 'tx', 'ty', 'tz', 'distance')),
        robot=RobotState(stamp_s=now_s - 0.02, joint_positions_rad=rng.uniform(-1, 1, 6),
                         tool_position_m=np.array([0.4, 0.0, 0.3]),
                         tool_orientation_xyzw=np.array([0.0, 0.0, 0.0, 1.0]), gripper=0.5),
        now_s=now_s)
    return replace(obs, capture_robot=obs.robot)  # the views were taken at this state


@pytest.fixture(scope='module', params=['regression', 'flow'])
def checkpoint_dir(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp('ckpt') / request.param
    return make_untrained_checkpoint(folder, CONTRACT, preset='small', head=request.param,
                                     flow_steps=3, seed=1)


def test_checkpoints_from_before_action_frame_load_as_absolute(checkpoint_dir, tmp_path):
    import shutil
    old = tmp_path / 'old'
    shutil.copytree(checkpoint_dir, old)
    doc = json.loads((old / 'config.json').read_text())
    assert doc['model'].pop('action_frame') == 'delta'            # written by this version
    (old / 'config.json').write_text(json.dumps(doc))
    assert load_checkpoint(old).meta.model.action_frame == 'absolute'


def test_checkpoints_from_before_token_pooling_load_as_they_were_trained(tmp_path):
    legacy = {'vl_pooling': 'attention', 'feature_norm': False, 'capture_motion': False}
    folder = make_untrained_checkpoint(tmp_path / 'old', CONTRACT, preset='small', **legacy)
    doc = json.loads((folder / 'config.json').read_text())
    for name in legacy:                          # what a checkpoint of the last version says
        doc['model'].pop(name)
    assert set(doc['normalization']) == {f'{n}_{s}' for n in ('sensor', 'state', 'action')
                                         for s in ('mean', 'std')}
    (folder / 'config.json').write_text(json.dumps(doc))
    loaded = load_checkpoint(folder)
    assert {k: getattr(loaded.meta.model, k) for k in legacy} == legacy
    obs = observation()
    policy = ExpertPolicy(loaded)
    assert policy.infer(obs).actions.shape == (8, 7)
    assert np.array_equal(policy.predict(obs), policy.predict(replace(obs, capture_robot=None)))


def test_round_trip_is_bit_exact(checkpoint_dir):
    ckpt = load_checkpoint(checkpoint_dir)
    assert ckpt.meta.untrained and ckpt.meta.contract == CONTRACT
    again = load_checkpoint(checkpoint_dir)
    a = ExpertPolicy(ckpt, seed=0).infer(observation())
    b = ExpertPolicy(again, seed=0).infer(observation())
    assert a.actions.shape == (8, 7) and a.actions.dtype == np.float32
    np.testing.assert_array_equal(a.actions, b.actions)
    assert a.stamp_s == 100.0 and a.dt_s == pytest.approx(0.1)
    assert a.feature_sequence == 5 and a.feature_age_s == pytest.approx(0.3)
    assert a.sensor_stamp_s == pytest.approx(99.99) and a.inference_ms > 0


def test_same_seed_same_weights(tmp_path):
    a = make_untrained_checkpoint(tmp_path / 'a', CONTRACT, preset='small', seed=7)
    b = make_untrained_checkpoint(tmp_path / 'b', CONTRACT, preset='small', seed=7)
    ta, tb = load_file(a / 'model.safetensors'), load_file(b / 'model.safetensors')
    assert ta.keys() == tb.keys()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


def test_policy_is_deterministic_and_handles_incomplete_windows(checkpoint_dir):
    policy = ExpertPolicy(checkpoint_dir, seed=0)
    first = policy.infer(observation(seed=2)).actions
    policy.infer(observation(seed=3))
    np.testing.assert_array_equal(policy.infer(observation(seed=2)).actions, first)
    partial = policy.infer(observation(seed=2, valid=30)).actions
    assert np.isfinite(partial).all()


def test_contract_mismatch_names_both_digests_and_shapes(checkpoint_dir):
    policy = ExpertPolicy(checkpoint_dir)
    other = dataclasses.replace(CONTRACT, prompt='another prompt')
    with pytest.raises(ContractMismatch) as info:
        policy.infer(observation(contract=other))
    message = str(info.value)
    assert other.digest in message and CONTRACT.digest in message
    assert '(6, 32)' in message
    wider = dataclasses.replace(CONTRACT, feature_dim=48)
    obs = observation(contract=wider)
    forged = dataclasses.replace(obs.features, contract_hash=CONTRACT.digest)
    with pytest.raises(ContractMismatch, match=r'\(6, 48\).*\(6, 32\)'):
        check_features(policy.meta, forged)


def test_wrong_sensor_layout_is_refused(checkpoint_dir):
    policy = ExpertPolicy(checkpoint_dir)
    obs = observation()
    renamed = dataclasses.replace(obs.window, channel_names=('a',) * 7)
    with pytest.raises(ObservationError, match='channels'):
        policy.infer(dataclasses.replace(obs, window=renamed))
    short = dataclasses.replace(obs.window, samples=obs.window.samples[:10])
    with pytest.raises(ObservationError, match='shape'):
        policy.infer(dataclasses.replace(obs, window=short))


def _copy(src, dst):
    dst.mkdir()
    for name in ('config.json', 'model.safetensors'):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


@pytest.mark.parametrize('damage,match', [
    (lambda d: (d / 'model.safetensors').unlink(), 'model.safetensors: missing'),
    (lambda d: (d / 'config.json').unlink(), 'config.json: missing'),
    (lambda d: (d / 'config.json').write_text('{not json'), 'not valid JSON'),
    (lambda d: (d / 'model.safetensors').write_bytes(
        (d / 'model.safetensors').read_bytes()[:-100]), 'SHA-256'),
])
def test_damaged_files_give_clear_errors(checkpoint_dir, tmp_path, damage, match):
    folder = _copy(checkpoint_dir, tmp_path / 'copy')
    damage(folder)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(folder)


@pytest.mark.parametrize('edit,match', [
    (lambda doc: doc.update(version=99), 'version 99 is not supported'),
    (lambda doc: doc['feature_contract'].update(prompt='edited'), 'contract_digest'),
    (lambda doc: doc['model'].update(trunk_dim=64), 'shapes differ'),
    (lambda doc: doc['action'].pop('dt_s'), "missing field 'dt_s'"),
    (lambda doc: doc['normalization'].update(action_std=[9.0] * 7), 'normalization.action_std'),
    (lambda doc: doc['sensor'].update(channels=['fx']), 'sensor channel names'),
])
def test_inconsistent_config_is_refused(checkpoint_dir, tmp_path, edit, match):
    folder = _copy(checkpoint_dir, tmp_path / 'copy')
    doc = json.loads((folder / 'config.json').read_text())
    edit(doc)
    (folder / 'config.json').write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(folder)


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match='not found'):
        load_checkpoint(tmp_path / 'nowhere')


def test_tool_writes_a_labelled_untrained_checkpoint(tmp_path, capsys):
    out = tmp_path / 'untrained'
    assert tool_main(['--output', str(out), '--preset', 'small',
                      '--contract-json', json.dumps(CONTRACT.to_dict())]) == 0
    assert 'UNTRAINED' in capsys.readouterr().out
    doc = json.loads((out / 'config.json').read_text())
    assert doc['untrained'] is True and doc['contract_digest'] == CONTRACT.digest
    assert 'UNTRAINED' in doc['description']
    assert tool_main(['--output', str(out), '--contract-json', '{"model_id": ""}']) == 2
