"""The VL-feature cache: the emulated VLM cadence, stored features, skips, refusals, no VLM later.

Known answers for the schedule on synthetic frame timelines; the cache against the extractor run
directly on the same frames (tiny VLM); a second run that finds everything cached; a changed
bag; a cache of another contract refused by field name; and a training run on the cache, in a
fresh interpreter, that never imports the VLM code nor decodes a JPEG.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest

from vla_insertion.core.bag.recording import load_recording, Timeline
from vla_insertion.core.data import CameraFrame
from vla_insertion.core.interfaces import VlmObservation
from vla_insertion.core.train.feature_cache import (
    build_cache, FeatureCache, FeatureCacheError, vlm_schedule)
from vla_insertion.tools import cache_features

VIEWS = ('zed_1', 'oak')


def timelines(stamps: dict[str, np.ndarray]) -> dict[str, Timeline]:
    return {v: Timeline([(float(s), CameraFrame(view=v, stamp_s=float(s), data=b''))
                         for s in ts]) for v, ts in stamps.items()}


def test_schedule_runs_back_to_back_on_the_newest_in_sync_views():
    fps = 30.0
    a = np.arange(0.0, 3.0, 1 / fps)
    b = a + 0.004                                             # the second camera 4 ms later
    b = b[(b < 1.0) | (b > 1.6)]                              # and silent for 0.6 s
    updates = vlm_schedule(timelines({'zed_1': a, 'oak': b}), VIEWS, 0.385, 0.1, 0.5)
    runs = np.array([u.run_s for u in updates])
    # the first run as soon as both views are there, then every 0.385 s while they are in sync
    assert runs[0] == pytest.approx(0.004)
    for u in updates:
        newest_a = a[a <= u.run_s + 1e-9].max()
        newest_b = b[b <= u.run_s + 1e-9].max()
        assert u.view_stamps_s == (newest_a, newest_b)        # the newest views at the run
        assert u.stamp_s == max(newest_a, newest_b)
        assert abs(newest_a - newest_b) <= 0.1
    gaps = np.diff(runs)
    assert np.all(gaps >= 0.385 - 1e-9)
    assert np.sum(gaps > 0.4) == 1                            # one pause: oak silent/out of sync
    (pause,) = np.flatnonzero(gaps > 0.4)
    assert runs[pause] < 1.1 and runs[pause + 1] == pytest.approx(b[b > 1.6][0])
    assert len({u.view_stamps_s for u in updates}) == len(updates)  # no set run twice


def test_period_zero_runs_every_new_set():
    a = np.arange(0.0, 1.0, 0.1)
    updates = vlm_schedule(timelines({'zed_1': a, 'oak': a}), VIEWS, 0.0, 0.1, 0.5)
    np.testing.assert_allclose([u.stamp_s for u in updates], a)


def test_cache_holds_the_extractor_features_as_float16(cached_bags):
    from vla_insertion.core.vlm.extractor import VlmFeatureExtractor
    cache = FeatureCache.load(cached_bags['cache'])
    bag = cached_bags['bags'][1]
    cached = cache.bag(bag)
    manifest = json.loads((Path(cached_bags['cache']) / 'manifest.json').read_text())
    entry = manifest['bags'][next(iter(k for k in manifest['bags'] if k.startswith('bag1')))]
    assert cached.features.dtype == np.float16 and isinstance(cached.features, np.memmap)
    assert entry['count'] == len(cached.updates) == cached.features.shape[0] >= 30
    assert set(entry['fingerprint']) == {p.name for p in Path(bag).iterdir() if p.is_file()}
    identity = manifest['identity']
    assert identity['contract_digest'] == cache.contract.digest
    assert identity['schedule']['vl_period_s'] == 0.0 and identity['storage_dtype'] == 'float16'
    assert manifest['code_version'] and manifest['vlm_config']['image_width'] == 112

    extractor = VlmFeatureExtractor(cached_bags['vlm_config'], download=False)
    rec = load_recording(bag, views=VIEWS)
    for k in (0, 7, len(cached.updates) - 1):
        u = cached.updates[k]
        frames = {v: rec.frames[v].newest(s) for v, s in zip(VIEWS, u.view_stamps_s)}
        live = extractor.infer(VlmObservation(frames=frames)).features
        np.testing.assert_allclose(cached.features[k].astype(np.float32), live, rtol=2e-3,
                                   atol=2e-3 * np.abs(live).max())


def test_a_second_run_skips_and_a_changed_bag_is_computed_again(cached_bags, tmp_path):
    bags, cache_dir = cached_bags['bags'], cached_bags['cache']
    files = sorted((Path(cache_dir) / 'features').glob('*.npy'))
    before = {f: f.stat().st_mtime_ns for f in files}
    said = []
    build_cache(bags, cached_bags['vlm_config'], cache_dir, 0.0, report=said.append)
    assert len(said) == 3 and all('cached already' in s for s in said)
    assert {f: f.stat().st_mtime_ns for f in files} == before

    # a copy of a bag, then changed: cached, then found stale and computed again
    import shutil
    copy = tmp_path / 'copy'
    shutil.copytree(bags[0], copy)
    other = tmp_path / 'cache'
    build_cache([str(copy)], cached_bags['vlm_config'], other, 0.0)
    cache = FeatureCache.load(other)
    assert cache.is_current(copy)
    data = next(f for f in copy.iterdir() if f.suffix in ('.mcap', '.db3'))
    os.utime(data, ns=(data.stat().st_atime_ns, data.stat().st_mtime_ns + 10**9))
    assert not cache.is_current(copy)
    with pytest.raises(FeatureCacheError, match='changed since it was cached'):
        cache.bag(copy)
    said.clear()
    build_cache([str(copy)], cached_bags['vlm_config'], other, 0.0, report=said.append)
    assert 'VL updates' in said[0] and FeatureCache.load(other).bag(copy).updates


def test_a_cache_of_another_contract_is_refused_naming_the_field(cached_bags, capsys):
    import dataclasses
    wider = dataclasses.replace(cached_bags['vlm_config'], image_width=140)
    with pytest.raises(FeatureCacheError, match=r'contract\.image_width: cache 112, this run 140'):
        build_cache(cached_bags['bags'][:1], wider, cached_bags['cache'], 0.0)
    rc = cache_features.main([cached_bags['bags'][0], '--params-file', cached_bags['params'],
                              '--cache', cached_bags['cache'], '--vl-period-s', '0.385',
                              '--no-progress'])
    assert rc == 2
    assert 'schedule.vl_period_s: cache 0.0, this run 0.385' in capsys.readouterr().err


def test_training_on_the_cache_runs_no_vlm_and_decodes_no_image(cached_bags, tmp_path):
    out = tmp_path / 'expert'
    code = (
        'import json, sys\n'
        'from vla_insertion.tools import train_expert\n'
        f'rc = train_expert.main({cached_bags["bags"]!r} + ["--cache", '
        f'{cached_bags["cache"]!r}, "--steps", "5", "--batch-size", "8", "--out", {str(out)!r},'
        ' "--no-progress", "--threads", "1"])\n'
        'print(json.dumps({"rc": rc, "modules": [m for m in sys.modules if m.startswith('
        '("transformers", "PIL.JpegImagePlugin", "vla_insertion.core.vlm.extractor", '
        '"vla_insertion.core.vlm.model"))]}))\n')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            timeout=300, cwd=Path(__file__).resolve().parents[3],
                            env={**os.environ, 'HF_HUB_OFFLINE': '1'})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {'rc': 0, 'modules': []}, report
    assert 'the VLM is not loaded' in result.stdout
    assert (out / 'model.safetensors').is_file()


def test_training_refuses_a_cache_of_another_contract(cached_bags, tmp_path, capsys):
    from vla_insertion.tools import train_expert
    params = tmp_path / 'params.yaml'
    text = Path(cached_bags['params']).read_text()
    params.write_text(text.replace('image_width: 112', 'image_width: 140'))
    rc = train_expert.main(cached_bags['bags'] + ['--cache', cached_bags['cache'],
                                                  '--params-file', str(params), '--steps', '2',
                                                  '--out', str(tmp_path / 'x'), '--no-progress'])
    assert rc == 2
    assert 'contract.image_width: cache 112, this run 140' in capsys.readouterr().err
    assert not (tmp_path / 'x').exists()
