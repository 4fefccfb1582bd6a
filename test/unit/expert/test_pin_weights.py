"""The weights in the contract: features of other weights are refused; an owner pins an old one.

A checkpoint written before contracts carried a weights digest keeps loading with its old
contract digest, refuses features of any pinned weights (the difference named: weights), and
is pinned once by its owner with `pin_weights`, which refuses when anything else differs.
"""
import dataclasses
import json

import numpy as np
import pytest

from vla_insertion.core.config import VlmConfig
from vla_insertion.core.data import VLFeatureData
from vla_insertion.core.expert.checkpoint import (
    check_features, CheckpointError, ContractMismatch, load_checkpoint, pin_weights)
from vla_insertion.core.expert.presets import make_untrained_checkpoint
from vla_insertion.core.feature_contract import FeatureContract
from vla_insertion.core.vlm import feature_contract_for
from vla_insertion.tools.pin_weights import main as pin_tool

LEGACY = FeatureContract(model_id='org/vlm', reduction='image_grid_pool+instruction_mean:1x1',
                         num_tokens=3, feature_dim=32, image_width=64, image_height=36,
                         view_names=('zed_1', 'oak'), prompt='insert')
WEIGHTS = dataclasses.replace(LEGACY, weights_digest='0123456789abcdef')
OTHER_WEIGHTS = dataclasses.replace(LEGACY, weights_digest='fedcba9876543210')


def features(contract: FeatureContract) -> VLFeatureData:
    return VLFeatureData(stamp_s=1.0, sequence=1, contract_hash=contract.digest,
                         model_id=contract.model_id,
                         features=np.zeros((contract.num_tokens, contract.feature_dim),
                                           np.float32))


@pytest.fixture
def legacy(tmp_path):
    folder = make_untrained_checkpoint(tmp_path / 'ckpt', LEGACY, preset='small')
    doc = json.loads((folder / 'config.json').read_text())
    assert 'weights_digest' not in doc['feature_contract'], 'written as before the field'
    return folder


def test_features_of_other_weights_are_refused(tmp_path):
    meta = load_checkpoint(make_untrained_checkpoint(tmp_path / 'c', WEIGHTS,
                                                     preset='small')).meta
    check_features(meta, features(WEIGHTS))
    for other in (OTHER_WEIGHTS, LEGACY):
        with pytest.raises(ContractMismatch):
            check_features(meta, features(other))


def test_an_unpinned_checkpoint_is_refused_until_its_owner_pins_it(legacy):
    meta = load_checkpoint(legacy).meta
    assert meta.contract_digest == LEGACY.digest
    with pytest.raises(ContractMismatch):
        check_features(meta, features(WEIGHTS))
    pinned = pin_weights(legacy, WEIGHTS)
    assert pinned.contract == WEIGHTS
    meta = load_checkpoint(legacy).meta              # weights unchanged, digests consistent
    check_features(meta, features(WEIGHTS))
    assert pin_weights(legacy, WEIGHTS) == meta, 'pinning again changes nothing'
    with pytest.raises(CheckpointError, match='pinned already'):
        pin_weights(legacy, OTHER_WEIGHTS)
    assert pin_weights(legacy, OTHER_WEIGHTS, force=True).contract == OTHER_WEIGHTS


def test_pinning_refuses_a_contract_that_differs_in_more_than_the_weights(legacy):
    other_prompt = dataclasses.replace(WEIGHTS, prompt='insert the peg')
    with pytest.raises(CheckpointError, match='prompt'):
        pin_weights(legacy, other_prompt)
    with pytest.raises(CheckpointError, match='no weights digest'):
        pin_weights(legacy, LEGACY)
    assert load_checkpoint(legacy).meta.contract == LEGACY, 'left as it was'


def test_the_tool_pins_a_checkpoint_to_the_tiny_vlm(tiny_vlm_dir, tmp_path, capsys):
    vlm = feature_contract_for(VlmConfig(model=str(tiny_vlm_dir)))
    unpinned = dataclasses.replace(vlm, weights_digest='')
    folder = make_untrained_checkpoint(tmp_path / 'ckpt', unpinned, preset='small')
    assert pin_tool([str(folder), '--vlm-model', str(tmp_path / 'no_vlm')]) == 2
    assert 'pin_weights:' in capsys.readouterr().err
    assert pin_tool([str(folder), '--vlm-model', str(tiny_vlm_dir)]) == 0
    assert load_checkpoint(folder).meta.contract_digest == vlm.digest
