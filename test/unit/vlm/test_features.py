"""VLM features on the tiny untrained Qwen2.5-VL: contract, determinism, reduction, load errors.

The tiny model is written once per session (test/conftest.py: tiny_vlm_dir, about 1 s); one
extractor is shared by the module. Torch runs on one thread: the machine is shared.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path
import shutil
import time

import numpy as np
from PIL import Image
import pytest
import torch

from vla_insertion.core.config import VlmConfig
from vla_insertion.core.data import CameraFrame, VLFeatureData
from vla_insertion.core.interfaces import VlmObservation
from vla_insertion.core.vlm import feature_contract_for, VlmLoadError
from vla_insertion.core.vlm.architecture import published_3b_config, visual_tokens
from vla_insertion.core.vlm.extractor import DelayedVlm, VlmFeatureExtractor, VlmInputError
from vla_insertion.core.vlm.model import (
    build_random_model, tiny_model_id, tiny_model_is_valid, write_tiny_model)
from vla_insertion.core.vlm.prompt import build_prompt, chat_messages
from vla_insertion.core.vlm.reduction import reduce_hidden_states
from vla_insertion.core.vlm.source import MARKER_FILE, resolve_model
from vla_insertion.core.vlm.weights import weights_digest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
VIEWS = ('zed_1', 'zed_2', 'zed_3', 'zed_4', 'oak')
SMALL_FILES = ('config.json', MARKER_FILE, 'tokenizer.json', 'tokenizer_config.json',
               'vocab.json', 'merges.txt', 'preprocessor_config.json')


def jpeg(seed: int, width: int = 320, height: int = 180) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, 'JPEG', quality=85)
    return buffer.getvalue()


def observation(seeds=(0, 1, 2, 3, 4), stamps=(10.00, 10.01, 10.03, 10.02, 10.015),
                sequence: int = 7) -> VlmObservation:
    return VlmObservation(frames={v: CameraFrame(view=v, stamp_s=t, data=jpeg(s))
                                  for v, s, t in zip(VIEWS, seeds, stamps)}, sequence=sequence)


@pytest.fixture(scope='module')
def config(tiny_vlm_dir) -> VlmConfig:
    return VlmConfig(model=str(tiny_vlm_dir), device='cpu', torch_threads=1, warmup_runs=0)


@pytest.fixture(scope='module')
def extractor(config) -> VlmFeatureExtractor:
    return VlmFeatureExtractor(config)


def copy_small_files(source: Path, target: Path, skip: tuple[str, ...] = ()) -> Path:
    """Make a model folder from the tiny one's small files (the weights are linked, not copied)."""
    target.mkdir()
    for name in SMALL_FILES:
        if name not in skip:
            shutil.copyfile(source / name, target / name)
    if 'model.safetensors' not in skip:
        (target / 'model.safetensors').symlink_to(source / 'model.safetensors')
    return target


# --- processor and prompt -------------------------------------------------------------------

def test_a_640x360_view_becomes_299_visual_tokens(extractor):
    assert visual_tokens(640, 360) == (13, 23) and 13 * 23 == 299
    image = Image.new('RGB', (640, 360), (10, 200, 30))
    inputs = extractor.processor(text=[build_prompt(('oak',), 'insert')], images=[image],
                                 return_tensors='pt')
    assert int((inputs['input_ids'] == extractor.model.config.image_token_id).sum()) == 299
    assert inputs['image_grid_thw'].tolist() == [[1, 26, 46]]   # 14-pixel patches of 644x364


def test_the_folder_chat_template_renders_the_contract_prompt(extractor, config):
    rendered = extractor.processor.apply_chat_template(
        chat_messages(config.view_names, config.instruction), tokenize=False,
        add_generation_prompt=True)
    assert rendered == extractor.contract.prompt
    assert [extractor.contract.prompt.index(f'{v}: ') for v in VIEWS] == sorted(
        extractor.contract.prompt.index(f'{v}: ') for v in VIEWS), 'views in configured order'


# --- features and contract ------------------------------------------------------------------

def test_features_follow_the_contract_and_carry_the_stamps(extractor, config, tiny_vlm_dir):
    obs = observation()
    out = extractor.infer(obs)
    contract = feature_contract_for(config)
    assert isinstance(out, VLFeatureData)
    assert out.features.shape == (contract.num_tokens, contract.feature_dim) == (5 * 8 + 1, 64)
    assert out.features.dtype == np.float32 and np.isfinite(out.features).all()
    assert out.stamp_s == 10.03, 'stamped with the newest capture time'
    assert out.view_names == VIEWS and out.view_stamps_s == (10.00, 10.01, 10.03, 10.02, 10.015)
    assert out.sequence == 7 and out.untrained
    assert out.contract_hash == contract.digest == extractor.contract.digest
    assert out.model_id == tiny_model_id(0) and str(tiny_vlm_dir) not in out.model_id
    stages = extractor.last_timings
    assert set(stages) == {'decode_ms', 'resize_ms', 'processor_ms', 'forward_ms',
                           'reduction_ms', 'total_ms'}
    assert stages['total_ms'] >= stages['forward_ms'] > 0.0
    assert out.inference_ms == pytest.approx(stages['total_ms'])


def test_features_are_deterministic_and_depend_on_every_view_in_order(extractor):
    first = extractor.infer(observation()).features
    assert np.array_equal(first, extractor.infer(observation()).features)
    other_image = extractor.infer(observation(seeds=(0, 1, 2, 3, 9))).features
    assert not np.allclose(first[32:40], other_image[32:40]), "oak's pooled rows must change"
    swapped = extractor.infer(observation(seeds=(1, 0, 2, 3, 4))).features
    assert not np.array_equal(first, swapped), 'view order is part of the input'


def test_input_errors_are_specific(extractor):
    obs = observation()
    missing = dict(obs.frames)
    del missing['zed_3']
    with pytest.raises(VlmInputError, match='zed_3'):
        extractor.infer(VlmObservation(frames=missing))
    corrupt = dict(obs.frames)
    corrupt['oak'] = CameraFrame(view='oak', stamp_s=1.0, data=b'\xff\xd8 not a jpeg')
    with pytest.raises(VlmInputError, match='oak'):
        extractor.infer(VlmObservation(frames=corrupt))


@pytest.mark.parametrize('change', [
    {'image_width': 480}, {'image_height': 270}, {'view_names': VIEWS[:4]},
    {'view_names': ('zed_2', 'zed_1', 'zed_3', 'zed_4', 'oak')}, {'instruction': 'Pick it up.'},
    {'pool_grid_h': 3}, {'pool_grid_w': 2},
])
def test_the_digest_changes_with_everything_that_changes_the_features(config, change):
    base = feature_contract_for(config)
    changed = feature_contract_for(dataclasses.replace(config, **change))
    assert changed.digest != base.digest


def test_the_contract_pins_the_weights_but_no_machine_path(tiny_vlm_dir, tmp_path, config):
    # Two copies of the model in different places (the weights linked): same contract.
    a = copy_small_files(tiny_vlm_dir, tmp_path / 'a')
    b = copy_small_files(tiny_vlm_dir, tmp_path / 'somewhere_else')
    contract_a = feature_contract_for(dataclasses.replace(config, model=str(a)))
    contract_b = feature_contract_for(dataclasses.replace(config, model=str(b)))
    assert contract_a == contract_b
    assert contract_a.digest == feature_contract_for(config).digest
    assert contract_a.weights_digest == weights_digest(tiny_vlm_dir)
    # Without its weights a folder has no contract: which weights would it pin?
    c = copy_small_files(tiny_vlm_dir, tmp_path / 'c', skip=('model.safetensors',))
    with pytest.raises(VlmLoadError, match='no weight files'):
        feature_contract_for(dataclasses.replace(config, model=str(c)))
    # Settings that do not change the numbers are not part of it.
    assert feature_contract_for(dataclasses.replace(
        config, max_rate_hz=2.0, mode='sync', torch_threads=2, artificial_delay_s=0.8,
        sync_tolerance_s=1.0)) == contract_a


def test_the_contract_of_the_published_3b_needs_no_download(monkeypatch, tmp_path):
    monkeypatch.setattr('huggingface_hub.constants.HF_HUB_CACHE', str(tmp_path / 'empty'))
    contract = feature_contract_for(VlmConfig())
    assert contract.model_id == 'Qwen/Qwen2.5-VL-3B-Instruct'
    assert (contract.num_tokens, contract.feature_dim) == (41, 2048)


def test_reset_keeps_the_results(extractor):
    before = extractor.infer(observation()).features
    extractor.reset()
    assert np.array_equal(before, extractor.infer(observation()).features)


# --- reduction with known numbers -----------------------------------------------------------

def test_reduction_pools_each_view_grid_and_averages_the_instruction():
    image, end, text = 9, 8, 1
    # prompt: text, view A (2x4 merged tokens), end, view B (2x4), end, 3 instruction tokens
    ids = [text] + [image] * 8 + [end] + [image] * 8 + [end] + [text] * 3
    hidden = torch.zeros(len(ids), 2)
    hidden[1:9, 0] = torch.arange(8.0)             # view A: raster 0..7 over a 2x4 grid
    hidden[10:18, 0] = 100.0                       # view B: constant
    hidden[19:, 1] = torch.tensor([1.0, 2.0, 6.0])  # instruction tokens
    grid = torch.tensor([[1, 4, 8], [1, 4, 8]])    # patch grids: 4x8 patches = 2x4 merged
    out = reduce_hidden_states(hidden, torch.tensor(ids), grid, image_token_id=image,
                               vision_end_token_id=end, merge_size=2, pool_h=1, pool_w=2)
    assert out.shape == (2 * 2 + 1, 2) and out.dtype == torch.float32
    # view A left half = tokens {0,1,4,5}, right half = {2,3,6,7}
    assert out[:, 0].tolist() == [2.5, 4.5, 100.0, 100.0, 0.0]
    assert out[4, 1].item() == pytest.approx(3.0)


def test_reduction_refuses_a_token_count_that_does_not_match_the_grids():
    ids = torch.tensor([9] * 7 + [8, 1])
    with pytest.raises(ValueError, match='image tokens'):
        reduce_hidden_states(torch.zeros(9, 2), ids, torch.tensor([[1, 4, 8]]), image_token_id=9,
                             vision_end_token_id=8, merge_size=2, pool_h=1, pool_w=1)


# --- delay wrapper --------------------------------------------------------------------------

class _Instant:
    contract, model_id, untrained = None, 'fake', True

    def __init__(self) -> None:
        self.resets = 0

    def infer(self, obs: VlmObservation) -> VLFeatureData:
        return VLFeatureData(stamp_s=1.0, features=np.ones((2, 3), np.float32), sequence=1,
                             contract_hash='abc', model_id='fake', inference_ms=1.0)

    def reset(self) -> None:
        self.resets += 1


def test_the_delay_wrapper_adds_its_delay_and_keeps_the_features():
    inner = _Instant()
    delayed = DelayedVlm(inner, delay_s=0.05)
    start = time.perf_counter()
    out = delayed.infer(observation())
    assert time.perf_counter() - start >= 0.05
    assert out.inference_ms >= 1.0 + 50.0 and out.contract_hash == 'abc'
    assert np.array_equal(out.features, np.ones((2, 3)))
    assert delayed.last_timings['delay_ms'] >= 50.0 and delayed.untrained
    delayed.reset()
    assert inner.resets == 1
    with pytest.raises(ValueError):
        DelayedVlm(inner, delay_s=-1.0)


# --- the tiny model and load failures -------------------------------------------------------

def test_the_tiny_model_is_deterministic_idempotent_and_marked_untrained(tiny_vlm_dir, tmp_path):
    marker = json.loads((tiny_vlm_dir / MARKER_FILE).read_text())
    assert marker['untrained'] is True and 'UNTRAINED' in marker['description']
    again = write_tiny_model(tmp_path / 'same_seed', seed=0)
    assert json.loads((again / MARKER_FILE).read_text())['weights_sha256'] == \
        marker['weights_sha256']
    mtime = (again / 'model.safetensors').stat().st_mtime_ns
    write_tiny_model(again, seed=0)
    assert (again / 'model.safetensors').stat().st_mtime_ns == mtime, 'a valid folder is kept'
    assert not tiny_model_is_valid(again, seed=1)
    (again / 'tokenizer.json').unlink()
    assert not tiny_model_is_valid(again, seed=0), 'an incomplete folder is not valid'
    assert resolve_model(str(tiny_vlm_dir)).untrained


def test_a_missing_folder_is_named(config, tmp_path):
    with pytest.raises(VlmLoadError, match='model folder not found.*make_tiny_vlm'):
        VlmFeatureExtractor(dataclasses.replace(config, model=str(tmp_path / 'nope')))


@pytest.mark.parametrize('skip,expected', [
    (('model.safetensors',), 'weights'),
    (('tokenizer.json', 'vocab.json'), 'tokenizer'),
    (('preprocessor_config.json',), 'processor'),
    (('config.json',), 'config'),
])
def test_a_missing_part_is_named(config, tiny_vlm_dir, tmp_path, skip, expected):
    folder = copy_small_files(tiny_vlm_dir, tmp_path / 'broken', skip=skip)
    with pytest.raises(VlmLoadError, match=f'missing: .*{expected}'):
        VlmFeatureExtractor(dataclasses.replace(config, model=str(folder)))


def test_corrupt_weights_are_a_load_error(config, tiny_vlm_dir, tmp_path):
    folder = copy_small_files(tiny_vlm_dir, tmp_path / 'corrupt', skip=('model.safetensors',))
    (folder / 'model.safetensors').write_bytes(b'\x08\x00\x00\x00\x00\x00\x00\x00{"a": 1}')
    with pytest.raises(VlmLoadError, match='weights'):
        VlmFeatureExtractor(dataclasses.replace(config, model=str(folder)))


def test_an_uncached_hub_id_is_a_load_error_offline(config, monkeypatch, tmp_path):
    monkeypatch.setattr('huggingface_hub.constants.HF_HUB_CACHE', str(tmp_path / 'empty'))
    monkeypatch.setattr('huggingface_hub.constants.HF_HUB_OFFLINE', True)
    with pytest.raises(VlmLoadError, match='not in the local Hugging Face cache'):
        VlmFeatureExtractor(dataclasses.replace(config, model='Qwen/Qwen2.5-VL-3B-Instruct'))


def test_the_published_3b_builds_with_3_75_billion_parameters():
    model = build_random_model(published_3b_config(), dtype=torch.bfloat16, device='meta')
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(3.75e9, rel=0.01)
    assert model.config.text_config.hidden_size == 2048
