"""Episodes and the split: whole episodes on one side, stable under additions, cut by a log."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from vla_insertion.core.bag.recording import load_recording
from vla_insertion.core.config import ConfigError
from vla_insertion.core.expert.runner import ExpertRunner
from vla_insertion.core.expert.staleness import StalenessLimits
from vla_insertion.core.train.dataset import build_split, FeatureBank
from vla_insertion.core.train.feature_age import load_age_model
from vla_insertion.core.train.feature_cache import FeatureCache
from vla_insertion.core.train.split import (
    bag_episodes, Episode, intervals_from_episode_log, split_episodes)

H, DT = 8, 0.1


def test_split_keeps_whole_episodes_apart_and_is_stable():
    episodes = [Episode(f'/data/bag{i:02d}') for i in range(40)]
    train, val = split_episodes(episodes, 0.25, seed=3)
    assert not {e.key for e in train} & {e.key for e in val}
    assert sorted(e.key for e in train + val) == sorted(e.key for e in episodes)
    assert 4 <= len(val) <= 18                                   # about a quarter
    assert split_episodes(episodes, 0.25, seed=3) == (train, val)  # deterministic
    assert split_episodes(episodes, 0.25, seed=4)[1] != val       # the seed matters
    more = episodes + [Episode(f'/data/new{i}') for i in range(10)]
    train2, val2 = split_episodes(more, 0.25, seed=3)
    assert {e.key for e in val} <= {e.key for e in val2}          # nobody changed sides
    assert {e.key for e in train} <= {e.key for e in train2}


def test_split_edge_cases_and_explicit_validation_bags():
    one = [Episode('/data/a')]
    assert split_episodes(one, 0.2) == (one, [])
    two = [Episode('/data/a'), Episode('/data/b')]
    train, val = split_episodes(two, 0.01)
    assert len(train) == len(val) == 1                            # at least one on each side
    train, val = split_episodes(two, 0.99)
    assert len(train) == len(val) == 1
    assert split_episodes(two, 0.0) == (two, [])
    train, val = split_episodes(two + [Episode('/data/c')], 0.5, val_bags=('/data/b',))
    assert [e.bag for e in val] == ['/data/b'] and len(train) == 2
    with pytest.raises(ConfigError, match='not among'):
        split_episodes(two, 0.5, val_bags=('/data/z',))
    with pytest.raises(ConfigError, match='twice'):
        split_episodes(two + [Episode('/data/a')], 0.5)


def test_episode_log_cuts_a_bag(tmp_path):
    log = tmp_path / 'episodes.jsonl'
    records = [('start', 0, 10.0), ('end', 0, 11.5), ('start', 1, 12.0), ('end', 1, 13.2),
               ('start', 2, 13.5)]                                 # the last never ended
    log.write_text('\n'.join(json.dumps({'event': e, 'episode': i, 'sender_time_s': t,
                                         'reason': None}) for e, i, t in records) + '\n')
    intervals = intervals_from_episode_log(log)
    assert intervals == [(10.0, 11.5), (12.0, 13.2)]
    episodes = bag_episodes('/data/x', intervals)
    assert [(e.index, e.start_s, e.end_s) for e in episodes] == [(0, 10.0, 11.5),
                                                                 (1, 12.0, 13.2)]
    assert bag_episodes('/data/x')[0].start_s == -math.inf
    log.write_text('{"event": "start"}\n')
    with pytest.raises(ConfigError, match='line 1'):
        intervals_from_episode_log(log)


def samples_by_episode(cached_bags, episodes):
    cache = FeatureCache.load(cached_bags['cache'])
    bank = FeatureBank([cache.bag(b) for b in cached_bags['bags']])
    recordings = {b: load_recording(b, views=()) for b in cached_bags['bags']}
    contract = cache.contract
    limits = StalenessLimits()

    def runner():
        return ExpertRunner(None, limits, contract_digest=contract.digest,
                            feature_shape=(contract.num_tokens, contract.feature_dim))
    data, report = build_split(recordings, bank, episodes, runner, contract,
                               load_age_model('uniform:0.3:0.385', 1.0), 1.0, H, DT, 10.0)
    return data, report, bank


def test_no_episode_on_both_sides_of_the_training_data(cached_bags):
    episodes = [e for b in cached_bags['bags'] for e in bag_episodes(b)]
    train_eps, val_eps = split_episodes(episodes, 0.34, seed=0)
    assert train_eps and val_eps
    train, _, bank = samples_by_episode(cached_bags, train_eps)
    val, _, _ = samples_by_episode(cached_bags, val_eps)

    def bags_of(data):
        rows, _ = data.pair(np.arange(len(data)), np.random.default_rng(0).random(len(data)))
        sample_bags = {data.episodes[i].bag for i in data.episode}
        feature_bags = {bank.bags[b].path for b in bank.locate(rows)[0]}
        return sample_bags, feature_bags
    train_bags, train_features = bags_of(train)
    val_bags, val_features = bags_of(val)
    assert not train_bags & val_bags
    assert train_features <= train_bags and val_features <= val_bags  # features stay home


def test_samples_and_their_features_stay_inside_their_episode(cached_bags):
    bag = cached_bags['bags'][0]
    episodes = bag_episodes(bag, [(0.4 + 1.7e9, 1.9 + 1.7e9), (2.0 + 1.7e9, 3.9 + 1.7e9)])
    data, report, bank = samples_by_episode(cached_bags, episodes)
    assert report['episodes'] == 2 and len(data) > 10
    rows, ages = data.pair(np.arange(len(data)), np.random.default_rng(1).random(len(data)))
    stamps = bank.bags[0].stamps_s
    for i in range(len(data)):
        e = data.episodes[data.episode[i]]
        t = data.tick_s[i]
        assert e.contains(t, t + (H - 1) * DT)                  # tick and whole chunk inside
        assert e.start_s <= stamps[rows[i]] <= t                # its features too
        assert ages[i] <= 1.0
    assert set(data.episode) == {0, 1}


def test_the_bank_holds_each_updates_capture_state_and_the_statistics(cached_bags):
    from vla_insertion.core.expert.policy import robot_state_vector
    cache = FeatureCache.load(cached_bags['cache'])
    bags = [cache.bag(b) for b in cached_bags['bags']]
    recordings = {b: load_recording(b, views=()) for b in cached_bags['bags']}
    bank = FeatureBank(bags, recordings)
    assert bank.captures.shape == (len(bank), 14)
    bag, local = bank.locate(np.arange(len(bank)))
    for row in range(0, len(bank), 7):
        stamp = bags[bag[row]].stamps_s[local[row]]
        robot = recordings[bags[bag[row]].path].robot(stamp)
        if robot is not None:                      # the views' stamp, not the VLM's run
            assert robot.stamp_s <= stamp
            assert np.array_equal(bank.captures[row], robot_state_vector(robot))
    with pytest.raises(ValueError, match='recordings'):
        FeatureBank(bags).capture_states(np.arange(2))

    episodes = [e for b in cached_bags['bags'] for e in bag_episodes(b)]
    data, _, _ = samples_by_episode(cached_bags, episodes)
    data.bank = bank                               # the split's bank, with the captures
    stats = data.normalization()
    shape = (cache.contract.num_tokens, cache.contract.feature_dim)
    assert stats['feature_mean'].shape == stats['feature_std'].shape == shape
    rows = np.unique(data.cand_rows)
    features = bank.features(rows).double().numpy()
    assert np.allclose(stats['feature_mean'], features.mean(0), atol=1e-5)
    assert (stats['feature_std'] >= features.std(0) - 1e-5).all()   # floored, never below
    assert stats['motion_mean'].shape == stats['motion_std'].shape == (14,)
    # the bags' joints move ~0.3 pi rad/s and the features are 0-0.4 s old
    assert 0.005 < float(stats['motion_std'][:6].mean()) < 0.5
    assert np.isfinite(stats['motion_mean']).all()
    index = np.arange(4)
    rows, _ = data.pair(index, np.full(4, 0.5))
    assert np.array_equal(data.captures_of(index, rows).numpy(), bank.captures[rows])
