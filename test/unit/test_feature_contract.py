"""The feature contract validates, round-trips and changes its digest with every field."""
import dataclasses

import pytest

from vla_insertion.core.config import ConfigError
from vla_insertion.core.feature_contract import FeatureContract

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
    {'view_names': ('zed_2', 'zed_1', 'zed_3', 'zed_4', 'oak')}])
def test_every_field_changes_the_digest(change):
    assert dataclasses.replace(CONTRACT, **change).digest != CONTRACT.digest


@pytest.mark.parametrize('bad', [{'num_tokens': 0}, {'model_id': ''},
                                 {'view_names': ('a', 'a')}, {'image_width': -1}])
def test_invalid_contract_is_refused(bad):
    with pytest.raises(ConfigError):
        dataclasses.replace(CONTRACT, **bad)


def test_from_dict_names_the_problem():
    with pytest.raises(ConfigError, match='invalid feature contract'):
        FeatureContract.from_dict({'model_id': 'm'})
