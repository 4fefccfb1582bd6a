"""Which weights: the digest of a model's weight files, the offline hub cache, pinned revisions.

The digest tells apart files of the same size (two fine-tunes share the layout), is read from
a hub snapshot's blob names without reading a byte, and is computed once per file and machine
otherwise. A hub id resolves from the local cache only unless downloads are asked for, at the
pinned revision; the tiny VLM's contract carries its weights digest.
"""
import hashlib
import logging
import os
from pathlib import Path
import shutil

import huggingface_hub
from huggingface_hub import constants
import pytest

from vla_insertion.core.config import VlmConfig
from vla_insertion.core.vlm.contract import feature_contract_for
from vla_insertion.core.vlm.source import resolve_model, VlmLoadError
from vla_insertion.core.vlm.weights import DigestCache, weights_digest

REVISION = '0123456789abcdef0123456789abcdef01234567'


@pytest.fixture(autouse=True)
def own_cache_root(tmp_path, monkeypatch):
    """Keep the digest cache of these tests in their own folder, not the user's."""
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))


def weights_folder(path: Path, content: bytes) -> Path:
    path.mkdir(parents=True)
    (path / 'model.safetensors').write_bytes(content)
    return path


def test_the_digest_names_the_weights_not_their_layout(tmp_path):
    a = weights_digest(weights_folder(tmp_path / 'a', b'\x01' * 4096))
    b = weights_digest(weights_folder(tmp_path / 'b', b'\x02' * 4096))   # same size
    same = weights_digest(weights_folder(tmp_path / 'c', b'\x01' * 4096))
    assert a != b and a == same and len(a) == 16
    with pytest.raises(VlmLoadError, match='no weight files'):
        weights_digest(tmp_path / 'no_such')


def test_a_file_is_hashed_once_until_it_changes(tmp_path):
    folder = weights_folder(tmp_path / 'model', b'\x01' * 4096)
    store = tmp_path / 'digests.json'
    first = DigestCache(store)
    digest = weights_digest(folder, first)
    assert first.hashed == 1 and store.is_file()
    again = DigestCache(store)                 # a later configure, another process
    assert weights_digest(folder, again) == digest and again.hashed == 0, 'nothing re-read'
    (folder / 'model.safetensors').write_bytes(b'\x03' * 4096)   # retrained, same size
    stat = (folder / 'model.safetensors').stat()
    os.utime(folder / 'model.safetensors', ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed = DigestCache(store)
    assert weights_digest(folder, changed) != digest and changed.hashed == 1


def hub_cache(root: Path, repo: str, folder: Path, revision: str = REVISION) -> Path:
    """Lay `folder`'s files out as huggingface_hub caches a snapshot; return the snapshot."""
    repo_dir = root / f'models--{repo.replace("/", "--")}'
    snapshot = repo_dir / 'snapshots' / revision
    (repo_dir / 'blobs').mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        data = file.read_bytes()
        # LFS files (the weights) are named by their SHA-256, small git files by a SHA-1
        name = (hashlib.sha256(data).hexdigest() if file.suffix == '.safetensors'
                else hashlib.sha1(data).hexdigest())
        shutil.copyfile(file, repo_dir / 'blobs' / name)
        (snapshot / file.name).symlink_to(Path('../../blobs') / name)
    (repo_dir / 'refs').mkdir()
    (repo_dir / 'refs' / 'main').write_text(revision)
    return snapshot


def test_a_hub_snapshot_s_digest_is_read_from_its_blob_names(tmp_path):
    folder = weights_folder(tmp_path / 'model', b'\x05' * 8192)
    snapshot = hub_cache(tmp_path / 'hub', 'org/model', folder)
    cache = DigestCache(tmp_path / 'digests.json')
    assert weights_digest(snapshot, cache) == weights_digest(folder)
    assert cache.hashed == 0, 'no weight file read for a hub snapshot'


@pytest.fixture
def offline_hub(tmp_path, tiny_vlm_dir, monkeypatch):
    """Serve the tiny VLM as the hub model org/tiny at REVISION; record every hub call."""
    snapshot = hub_cache(tmp_path / 'hub', 'org/tiny', Path(tiny_vlm_dir))
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(tmp_path / 'hub'))
    calls = []
    real = huggingface_hub.snapshot_download

    def recorded(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)
    monkeypatch.setattr(huggingface_hub, 'snapshot_download', recorded)
    return snapshot, calls


def test_a_hub_model_resolves_offline_at_its_pinned_revision(offline_hub, tiny_vlm_dir,
                                                             caplog):
    snapshot, calls = offline_hub
    source = resolve_model('org/tiny', revision=REVISION)
    assert source.folder == snapshot and source.model_id == 'org/tiny'
    assert source.weights_digest == weights_digest(tiny_vlm_dir)
    with pytest.raises(VlmLoadError, match='not in the local Hugging Face cache'):
        resolve_model('org/tiny', revision='f' * 40)
    with caplog.at_level(logging.WARNING):
        assert resolve_model('org/tiny').folder == snapshot      # the cached main
    assert 'not pinned to a revision' in caplog.text
    assert calls and all(c['local_files_only'] for c in calls), 'the hub was never asked'
    with pytest.raises(VlmLoadError, match='for a hub id'):
        resolve_model(str(tiny_vlm_dir), revision=REVISION)


def test_the_contract_carries_the_weights_of_the_tiny_vlm_wherever_it_comes_from(
        offline_hub, tiny_vlm_dir):
    folder = feature_contract_for(VlmConfig(model=str(tiny_vlm_dir)))
    hub = feature_contract_for(VlmConfig(model='org/tiny', revision=REVISION))
    loaded = feature_contract_for(VlmConfig(model=str(tiny_vlm_dir)),
                                  resolve_model(str(tiny_vlm_dir)))
    assert folder.weights_digest == hub.weights_digest == weights_digest(tiny_vlm_dir)
    assert loaded == folder, 'the node (a resolved source) and the tools agree'
