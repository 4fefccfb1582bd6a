"""The feature contract validates, round-trips and changes its digest with every field."""
import dataclasses
import hashlib
import json

import pytest

from vla_insertion.core.config import ConfigError
from vla_insertion.core.feature_contract import describe_mismatch, differences, FeatureContract

CONTRACT = FeatureContract(model_id='Qwen/Qwen2.5-VL-3B-Instruct', reduction='grid2x4+text',
                           num_tokens=41, feature_dim=2048, image_width=640, image_height=360,
                           view_names=('zed_1', 'zed_2', 'zed_3', 'zed_4', 'oak'),
                           prompt='Insert the needle into the target.')


def test_round_trip_and_stable_digest():
    back = FeatureContract.from_dict(CONTRACT.to_dict())
    assert back == CONTRACT
    assert back.digest == CONTRACT.digest and len(CONTRACT.digest) == 16


@pytest.mark.parametrize('change', [
    {'model_id': 'other'}, {'reduction': 'mean'}, {'num_tokens': 40}, {'feature_dim': 64},
    {'image_width': 1280}, {'image_height': 720}, {'prompt': 'Insert the peg.'},
    {'view_names': ('zed_2', 'zed_1', 'zed_3', 'zed_4', 'oak')},
    {'weights_digest': '0123456789abcdef'}])
def test_every_field_changes_the_digest(change):
    assert dataclasses.replace(CONTRACT, **change).digest != CONTRACT.digest


@pytest.mark.parametrize('bad', [{'num_tokens': 0}, {'model_id': ''},
                                 {'view_names': ('a', 'a')}, {'image_width': -1},
                                 {'weights_digest': 'sha256:abc'}])
def test_invalid_contract_is_refused(bad):
    with pytest.raises(ConfigError):
        dataclasses.replace(CONTRACT, **bad)


def test_from_dict_names_the_problem():
    with pytest.raises(ConfigError, match='invalid feature contract'):
        FeatureContract.from_dict({'model_id': 'm'})


@pytest.mark.parametrize('change,field,shown', [
    ({'prompt': 'Insert the peg into the hole.'}, 'prompt', 'Insert the peg into the hole'),
    ({'model_id': 'vla_insertion/tiny'}, 'model_id', 'vla_insertion/tiny'),
    ({'view_names': ('zed_1', 'oak')}, 'view_names', "('zed_1', 'oak')"),
    ({'image_width': 320}, 'image_width', '320'),
    ({'reduction': 'mean'}, 'reduction', 'mean'),
    ({'num_tokens': 9, 'feature_dim': 64}, 'num_tokens', '9'),
], ids=['instruction', 'model', 'views', 'image_size', 'reduction', 'shape'])
def test_a_mismatch_names_the_differing_field_with_both_values(change, field, shown):
    vlm = dataclasses.replace(CONTRACT, **change)
    found = differences(CONTRACT, vlm)
    assert len(found) == len(change)
    line = next(d for d in found if d.startswith(f'{field}:'))
    assert shown in line and 'checkpoint' in line and 'VLM' in line, line
    message = describe_mismatch(CONTRACT, vlm)
    assert vlm.digest in message and CONTRACT.digest in message


def test_an_instruction_change_reads_as_the_two_instructions():
    views, end = '<zed_1><zed_2><zed_3><zed_4><oak> Task: ', '<|im_end|><|assistant|>'
    checkpoint = dataclasses.replace(CONTRACT, prompt=views + 'Insert the needle.' + end)
    vlm = dataclasses.replace(CONTRACT, prompt=views + 'Insert the peg into the hole.' + end)
    (line,) = differences(checkpoint, vlm)
    assert "VLM '... Insert the peg into the hole...'" in line, line
    assert "checkpoint '... Insert the needle...'" in line, line
    assert 'instruction:=' in line
    assert differences(CONTRACT, CONTRACT) == []


def test_the_published_json_round_trips_and_junk_is_refused():
    assert FeatureContract.from_json(CONTRACT.to_json()) == CONTRACT
    for junk in ('not json', '[1, 2]', '{"model_id": "m"}'):
        with pytest.raises(ConfigError):
            FeatureContract.from_json(junk)


def test_a_contract_without_weights_keeps_the_digest_it_had_before_the_field():
    # the canonical form written before weights_digest existed: checkpoints keep loading
    before = {'model_id': CONTRACT.model_id, 'reduction': CONTRACT.reduction,
              'num_tokens': 41, 'feature_dim': 2048, 'image_width': 640, 'image_height': 360,
              'view_names': list(CONTRACT.view_names), 'prompt': CONTRACT.prompt, 'version': 1}
    canonical = json.dumps(before, sort_keys=True, separators=(',', ':'))
    assert CONTRACT.digest == hashlib.sha256(canonical.encode()).hexdigest()[:16]
    assert FeatureContract.from_dict(before) == CONTRACT and 'weights_digest' not in \
        CONTRACT.to_dict()


def test_features_of_pinned_weights_name_the_weights_against_an_unpinned_checkpoint():
    vlm = dataclasses.replace(CONTRACT, weights_digest='0123456789abcdef')
    (line,) = differences(CONTRACT, vlm)
    assert line.startswith('weights_digest:') and '0123456789abcdef' in line
    assert 'pin_weights' in line, 'the cause says how an owner pins an older checkpoint'
    other = dataclasses.replace(vlm, weights_digest='fedcba9876543210')
    assert differences(vlm, other)[0].startswith('weights_digest:')
