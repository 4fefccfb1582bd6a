"""The VL-feature cache: the VLM run once over recorded bags, at the times it would run live.

Stage-1 training keeps the VLM frozen, so its features of a given set of views never change;
computing them once turns a training step into a few small matrix products on arrays read from
disk (no JPEG decoding, no VLM). Layout of a cache folder:

    manifest.json          identity (contract, weights, schedule, ...) and one entry per bag
    features/<key>.npy     (U, T, F) float16, one row per VLM update of the bag (np.load with
                           mmap_mode='r' maps it; `.npy` so the file says its own shape)

The updates are those `vlm_schedule` emulates: the VLM node runs back to back on the newest
complete, in-sync set of views (core.vlm.selection, the node's own rules); here an update starts
every `vl_period_s` of recorded time on the newest views captured by then, and when a set is
not ready (incomplete, out of sync, nothing new) at the next frame. `vl_period_s` 0 runs every
new set. Each update is keyed by its views' capture stamps (`stamp_s` = the newest, as the node
stamps its features). Deterministic: equal bags and settings give equal updates.

A cache has one identity (`cache_identity`): the feature contract, a fingerprint of the weights,
the compute dtype, the preprocessing, the schedule and the storage dtype. Adding bags to a cache
of another identity is refused, naming the field that differs. A bag whose files changed since
it was cached (size or modification time, or content with `content_hash`) is computed again.
"""
from __future__ import annotations

from dataclasses import dataclass
import hashlib
import json
import logging
import os
from pathlib import Path
import subprocess
import time

import numpy as np

from vla_insertion.core.bag.recording import Timeline
from vla_insertion.core.feature_contract import FeatureContract
from vla_insertion.core.interfaces import VlmObservation
from vla_insertion.core.vlm.selection import LatestFrames

logger = logging.getLogger(__name__)

FORMAT = 'vla_insertion.feature_cache'
VERSION = 1
MANIFEST = 'manifest.json'
STORAGE_DTYPE = 'float16'
PREPROCESSING = ('views decoded with PIL (JPEG at a reduced DCT scale when >= 2x the target), '
                 'resized bilinear to image_width x image_height, Qwen2.5-VL image processor '
                 '(14 px patches, CLIP normalisation), one chat prompt, base model forward, '
                 'image_grid_pool + instruction_mean reduction')


class FeatureCacheError(RuntimeError):
    """A cache cannot be used: other identity, missing or changed bag, unreadable file."""


@dataclass(frozen=True)
class VlUpdate:
    """One emulated VLM run: when it started and the capture stamps of the views it ran on."""

    run_s: float                   # recorded time at which the node would start the run [s]
    stamp_s: float                 # newest capture stamp of its views (the features' stamp) [s]
    view_stamps_s: tuple[float, ...]  # capture stamp per view, in view order [s]


def vlm_schedule(frames: dict[str, Timeline], views: tuple[str, ...], period_s: float,
                 sync_tolerance_s: float, max_view_age_s: float) -> list[VlUpdate]:
    """Return the VLM updates a node running back to back would make over recorded frames.

    `period_s` is the time one run takes (the next starts then); 0 runs every new set.
    """
    events = sorted(((stamp, view, frame) for view in views
                     for stamp, frame in frames[view].items), key=lambda e: e[:2])
    latest = LatestFrames(views, max_view_age_s)
    updates: list[VlUpdate] = []
    j, now = 0, events[0][0] if events else 0.0
    while j < len(events):
        while j < len(events) and events[j][0] <= now + 1e-9:  # every frame captured by now
            latest.put(events[j][2], now_s=events[j][0])  # arrives at its capture stamp
            j += 1
        selection = latest.select(now, sync_tolerance_s, max_view_age_s)
        if selection.ready:
            stamps = tuple(selection.frames[v].stamp_s for v in views)
            updates.append(VlUpdate(now, max(stamps), stamps))
            if period_s > 0:
                now += period_s
                continue
        if j < len(events):                # not ready or back to back: wait for a new frame
            now = max(now, events[j][0])
    return updates


# --- identity and fingerprints ----------------------------------------------------------------

def bag_fingerprint(bag: str | Path, content_hash: bool = False) -> dict:
    """Return {file name: [size, mtime_ns]} (or [size, sha256]) of a bag folder's files."""
    folder = Path(bag)
    if not folder.is_dir():
        raise FeatureCacheError(f'{bag}: bag folder not found')
    out = {}
    for f in sorted(folder.iterdir()):
        if f.is_file() and not f.name.startswith('.'):
            stat = f.stat()
            out[f.name] = [stat.st_size, _sha256(f) if content_hash else stat.st_mtime_ns]
    return out


def _sha256(path: Path, limit: int | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        if limit is None:
            for block in iter(lambda: f.read(1 << 20), b''):
                digest.update(block)
        else:
            digest.update(f.read(limit))
            f.seek(max(0, path.stat().st_size - limit))
            digest.update(f.read(limit))
    return digest.hexdigest()


def code_version() -> str:
    """Return the git commit of the package's checkout (with '+dirty'), or 'unknown'."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(['git', '-C', str(here), 'rev-parse', '--short=12', 'HEAD'],
                                capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(['git', '-C', str(here), 'status', '--porcelain', '--', '.'],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return 'unknown'
    return (commit + ('+dirty' if dirty else '')) if commit else 'unknown'


def cache_identity(contract: FeatureContract, weights: str, compute_dtype: str,
                   vl_period_s: float, sync_tolerance_s: float, max_view_age_s: float,
                   preprocessing: str = PREPROCESSING) -> dict:
    """Return what makes two caches' features interchangeable (compared field by field)."""
    return {'contract': contract.to_dict(), 'contract_digest': contract.digest,
            'model_weights': weights, 'compute_dtype': compute_dtype,
            'preprocessing': preprocessing, 'storage_dtype': STORAGE_DTYPE,
            'schedule': {'vl_period_s': float(vl_period_s),
                         'sync_tolerance_s': float(sync_tolerance_s),
                         'max_view_age_s': float(max_view_age_s)}}


def identity_differences(cached: dict, wanted: dict) -> list[str]:
    """Return 'field: cache X, this run Y' for every identity field that differs."""
    out = []
    for key in sorted(set(cached) | set(wanted)):
        a, b = cached.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f'{key}.{d}' for d in identity_differences(a, b)]
        elif a != b:
            out.append(f'{key}: cache {a!r}, this run {b!r}')
    return out


# --- the cache ------------------------------------------------------------------------------

@dataclass
class CachedBag:
    """The VLM updates of one bag and their features."""

    path: str                      # bag folder
    updates: list[VlUpdate]
    features: np.ndarray           # (U, T, F) float16 memmap (cache) or float32 (in memory)

    @property
    def stamps_s(self) -> np.ndarray:
        return np.array([u.stamp_s for u in self.updates], dtype=np.float64)

    @property
    def run_s(self) -> np.ndarray:
        return np.array([u.run_s for u in self.updates], dtype=np.float64)


def bag_key(bag: str | Path) -> str:
    resolved = str(Path(bag).resolve())
    return f'{Path(resolved).name}-{hashlib.sha256(resolved.encode()).hexdigest()[:8]}'


class FeatureCache:
    """A cache folder: its manifest and per-bag feature files."""

    def __init__(self, folder: str | Path, manifest: dict) -> None:
        self.folder = Path(folder)
        self.manifest = manifest

    @classmethod
    def load(cls, folder: str | Path) -> FeatureCache:
        """Open an existing cache (for training); raise FeatureCacheError when unusable."""
        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise FeatureCacheError(f'{folder}: no feature cache here ({MANIFEST} missing); '
                                    'build one with cache_features')
        try:
            manifest = json.loads(path.read_text(encoding='utf-8'))
        except (OSError, ValueError) as exc:
            raise FeatureCacheError(f'{path}: unreadable manifest: {exc}') from None
        if manifest.get('format') != FORMAT or manifest.get('version') != VERSION:
            raise FeatureCacheError(f'{path}: format {manifest.get("format")!r} version '
                                    f'{manifest.get("version")!r}, expected {FORMAT!r} {VERSION}')
        return cls(folder, manifest)

    @classmethod
    def create(cls, folder: str | Path, identity: dict, info: dict | None = None
               ) -> FeatureCache:
        """Open the cache at `folder` for adding bags, creating it if absent.

        Raises FeatureCacheError naming each identity field that differs from an existing one.
        """
        if (Path(folder) / MANIFEST).is_file():
            cache = cls.load(folder)
            diff = identity_differences(cache.identity, identity)
            if diff:
                raise FeatureCacheError(
                    f'feature cache {folder} was made under another contract or settings: '
                    f'{"; ".join(diff)}. Use another cache folder, or delete this one')
            return cache
        manifest = {'format': FORMAT, 'version': VERSION, 'identity': identity,
                    'created': time.strftime('%Y-%m-%dT%H:%M:%S%z'), **(info or {}),
                    'bags': {}}
        cache = cls(folder, manifest)
        (cache.folder / 'features').mkdir(parents=True, exist_ok=True)
        cache._write_manifest()
        return cache

    @property
    def identity(self) -> dict:
        return self.manifest['identity']

    @property
    def contract(self) -> FeatureContract:
        return FeatureContract.from_dict(self.identity['contract'])

    def entry(self, bag: str | Path) -> dict | None:
        return self.manifest['bags'].get(bag_key(bag))

    def is_current(self, bag: str | Path, content_hash: bool = False) -> bool:
        """Return True if the bag is cached and its files are unchanged."""
        entry = self.entry(bag)
        return entry is not None and \
            entry['fingerprint'] == bag_fingerprint(bag, entry.get('content_hash', content_hash))

    def add(self, bag: str | Path, updates: list[VlUpdate], features: np.ndarray,
            content_hash: bool = False, seconds: float = 0.0, skipped: dict | None = None
            ) -> None:
        """Store a bag's updates and (U, T, F) features, replacing an older entry."""
        contract = self.contract
        if features.shape != (len(updates), contract.num_tokens, contract.feature_dim):
            raise FeatureCacheError(f'features {features.shape} for {len(updates)} updates '
                                    f'break the contract ({contract.num_tokens}, '
                                    f'{contract.feature_dim})')
        key = bag_key(bag)
        rel = Path('features') / f'{key}.npy'
        tmp = self.folder / 'features' / f'.{key}.npy.tmp-{os.getpid()}'
        array = np.lib.format.open_memmap(tmp, mode='w+', dtype=np.float16,
                                          shape=features.shape)
        array[:] = features                                     # (U, T, F) fp16
        array.flush()
        del array
        os.replace(tmp, self.folder / rel)
        self.manifest['bags'][key] = {
            'path': str(Path(bag).resolve()), 'file': str(rel), 'count': len(updates),
            'fingerprint': bag_fingerprint(bag, content_hash), 'content_hash': content_hash,
            'stamps_s': [u.stamp_s for u in updates], 'run_s': [u.run_s for u in updates],
            'view_stamps_s': [list(u.view_stamps_s) for u in updates],
            'compute_s': round(seconds, 3), 'skipped': skipped or {},
            'created': time.strftime('%Y-%m-%dT%H:%M:%S%z')}
        self._write_manifest()

    def bag(self, bag: str | Path) -> CachedBag:
        """Return a cached bag with its features memory-mapped (read-only)."""
        entry = self.entry(bag)
        if entry is None:
            raise FeatureCacheError(f'{bag} is not in the feature cache {self.folder}; run '
                                    f'cache_features on it first')
        if not self.is_current(bag):
            raise FeatureCacheError(f'{bag} changed since it was cached in {self.folder} (file '
                                    'sizes or times differ); run cache_features again')
        try:
            features = np.load(self.folder / entry['file'], mmap_mode='r')
        except (OSError, ValueError) as exc:
            raise FeatureCacheError(f'{self.folder / entry["file"]}: unreadable: {exc}') from None
        contract = self.contract
        if features.shape != (entry['count'], contract.num_tokens, contract.feature_dim):
            raise FeatureCacheError(f'{entry["file"]}: shape {features.shape} differs from the '
                                    'manifest')
        updates = [VlUpdate(r, s, tuple(v)) for r, s, v in
                   zip(entry['run_s'], entry['stamps_s'], entry['view_stamps_s'])]
        return CachedBag(str(bag), updates, features)

    def _write_manifest(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f'.{MANIFEST}.tmp-{os.getpid()}'
        tmp.write_text(json.dumps(self.manifest, indent=1) + '\n', encoding='utf-8')
        os.replace(tmp, self.folder / MANIFEST)


# --- computing features -----------------------------------------------------------------------

def compute_features(rec, vlm, views: tuple[str, ...], updates: list[VlUpdate],
                     contract_digest: str, progress: bool = False
                     ) -> tuple[list[VlUpdate], np.ndarray, dict]:
    """Run the VLM on each update's views; return the updates kept, (U, T, F) float32, skips.

    An update whose image does not decode is skipped and counted (`bad_image`), as the node
    skips it.
    """
    import torch
    from tqdm import tqdm

    from vla_insertion.core.vlm.extractor import VlmInputError
    kept, rows, skipped = [], [], {'bad_image': 0}
    vlm.reset()
    for update in tqdm(updates, desc=f'VLM {Path(rec.path).name}', unit='update',
                       disable=not progress):
        frames = {v: rec.frames[v].newest(s) for v, s in zip(views, update.view_stamps_s)}
        try:
            with torch.inference_mode():
                out = vlm.infer(VlmObservation(frames=frames, sequence=len(kept) + 1))
        except VlmInputError as exc:
            skipped['bad_image'] += 1
            logger.warning(f'{rec.path}: update at {update.run_s:.3f} s skipped: {exc}')
            continue
        if out.contract_hash != contract_digest:
            raise FeatureCacheError(f'the VLM produced features with contract '
                                    f'{out.contract_hash}, expected {contract_digest}')
        kept.append(update)
        rows.append(np.asarray(out.features, dtype=np.float32))
    if not rows:
        raise FeatureCacheError(f'{rec.path}: no VLM update (no complete, in-sync set of views '
                                f'{list(views)}; skipped {skipped})')
    return kept, np.stack(rows), skipped


def build_cache(bags: list[str], vlm_config, folder: str | Path, vl_period_s: float, *,
                content_hash: bool = False, force: bool = False, progress: bool = False,
                report=logger.info) -> FeatureCache:
    """Cache the features of every bag not cached yet (or changed, or all with `force`)."""
    from vla_insertion.core.bag.recording import load_recording
    from vla_insertion.core.config import config_to_dict
    from vla_insertion.core.vlm.contract import feature_contract_for
    from vla_insertion.core.vlm.model import resolve_device, resolve_dtype
    from vla_insertion.core.vlm.source import resolve_model
    source = resolve_model(vlm_config.model, download=False, revision=vlm_config.revision)
    contract = feature_contract_for(vlm_config, source)
    dtype = resolve_dtype(vlm_config.dtype, resolve_device(vlm_config.device))
    identity = cache_identity(contract, source.weights_digest,
                              str(dtype).replace('torch.', ''), vl_period_s,
                              vlm_config.sync_tolerance_s, vlm_config.max_view_age_s)
    cache = FeatureCache.create(folder, identity, {
        'vlm_config': config_to_dict(vlm_config), 'model_folder': str(source.folder),
        'untrained': source.untrained, 'code_version': code_version()})
    todo = []
    for bag in bags:
        if not force and cache.is_current(bag, content_hash):
            report(f'{bag}: cached already ({cache.entry(bag)["count"]} updates), skipped')
        else:
            todo.append(bag)
    if not todo:
        return cache
    from vla_insertion.core.vlm.extractor import VlmFeatureExtractor
    vlm = VlmFeatureExtractor(vlm_config, download=False)
    views = tuple(vlm_config.view_names)
    for bag in todo:
        rec = load_recording(bag, views=views, progress=progress)
        updates = vlm_schedule(rec.frames, views, vl_period_s, vlm_config.sync_tolerance_s,
                               vlm_config.max_view_age_s)
        started = time.perf_counter()
        kept, features, skipped = compute_features(rec, vlm, views, updates, contract.digest,
                                                   progress)
        seconds = time.perf_counter() - started
        cache.add(bag, kept, features, content_hash, seconds, skipped)
        report(f'{bag}: {len(kept)} VL updates over {rec.end_s - rec.start_s:.1f} s in '
               f'{seconds:.1f} s ({seconds / len(kept) * 1e3:.0f} ms each)'
               + (f', skipped {skipped}' if any(skipped.values()) else ''))
    return cache
