"""The digest of a model folder's weight files: what pins the weights in the feature contract.

    digest = SHA-256 over one line "<file name> <SHA-256 of the file>" per weight file
             (*.safetensors, pytorch_model*.bin) of the folder, by name; first 16 hex digits

It names the weights themselves, not their layout: two fine-tunes of one architecture have the
same safetensors headers and file sizes, so a digest of those would not tell them apart. Each
file's SHA-256 is found without reading gigabytes at every configure:

- in a Hugging Face cache snapshot a weight file is a link to `blobs/<sha256>`: the hub names
  an LFS blob by the SHA-256 of its content, so the link's target is the file's digest and
  nothing is read;
- any other file is hashed once (as long as reading it: 7.5 GB for the 3B in bf16) and its
  digest remembered in `cache_root()/weight_digests.json` under its resolved path with its
  size and modification time; a later configure re-hashes only a file whose size or mtime
  changed. (A file rewritten with its old size and mtime forged would keep its old digest:
  the cache guards against accidents, not against someone who can write the model folder.)
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
import re

from vla_insertion.core.vlm.source import VlmLoadError

logger = logging.getLogger(__name__)

WEIGHT_PATTERNS = ('*.safetensors', 'pytorch_model*.bin')
_SHA256 = re.compile(r'[0-9a-f]{64}')
_BLOCK = 1 << 22                  # bytes read per step while hashing a file


def weight_files(folder: Path) -> list[Path]:
    """Return the folder's weight files, sorted by name (the shards of an index included)."""
    folder = Path(folder)
    return sorted({p for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern)},
                  key=lambda p: p.name)


def default_cache_file() -> Path:
    from vla_insertion.core.artifacts import cache_root
    return cache_root() / 'weight_digests.json'


def hub_blob_sha256(path: Path) -> str | None:
    """Return the SHA-256 a hub cache names a linked blob by, or None for any other file."""
    if not path.is_symlink():
        return None
    target = path.resolve()
    if target.parent.name == 'blobs' and _SHA256.fullmatch(target.name):
        return target.name
    return None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(_BLOCK), b''):
            digest.update(block)
    return digest.hexdigest()


class DigestCache:
    """File digests remembered by (resolved path, size, mtime); one JSON file, rewritten whole."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.hashed = 0                # files read and hashed by this instance
        self._entries: dict[str, dict] = {}
        if path is not None and path.is_file():
            try:
                entries = json.loads(path.read_text(encoding='utf-8'))
            except (OSError, ValueError) as exc:
                logger.warning(f'{path}: unreadable weight digest cache, starting anew ({exc})')
            else:
                self._entries = entries if isinstance(entries, dict) else {}
        self._dirty = False

    def sha256(self, path: Path) -> str:
        blob = hub_blob_sha256(path)
        if blob is not None:
            return blob
        real = path.resolve()
        info = real.stat()
        key = str(real)
        entry = self._entries.get(key)
        if entry and entry.get('size') == info.st_size and \
                entry.get('mtime_ns') == info.st_mtime_ns and _SHA256.fullmatch(
                    str(entry.get('sha256', ''))):
            return entry['sha256']
        logger.info(f'hashing {path} ({info.st_size / 2**20:.0f} MiB) once for the weights '
                    'digest')
        sha = file_sha256(real)
        self.hashed += 1
        self._entries[key] = {'size': info.st_size, 'mtime_ns': info.st_mtime_ns, 'sha256': sha}
        self._dirty = True
        return sha

    def save(self) -> None:
        if self.path is None or not self._dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f'.{self.path.name}.{os.getpid()}')
            tmp.write_text(json.dumps(self._entries, indent=1, sort_keys=True), encoding='utf-8')
            os.replace(tmp, self.path)
        except OSError as exc:         # a read-only home: the digest is right, only slower
            logger.warning(f'{self.path}: weight digests not remembered ({exc})')
        self._dirty = False


def weights_digest(folder: str | os.PathLike, cache: DigestCache | None = None) -> str:
    """Return the 16-hex-digit digest of a model folder's weight files.

    `cache`: where file digests are remembered (default: `default_cache_file()`). Raises
    VlmLoadError when the folder holds no weight file.
    """
    folder = Path(folder)
    files = weight_files(folder)
    if not files:
        raise VlmLoadError(f'model folder {folder} holds no weight files '
                           f'({", ".join(WEIGHT_PATTERNS)})')
    cache = cache if cache is not None else DigestCache(default_cache_file())
    try:
        lines = ''.join(f'{p.name} {cache.sha256(p)}\n' for p in files)
    except OSError as exc:
        raise VlmLoadError(f'weights in {folder} could not be read: {exc}') from None
    finally:
        cache.save()
    return hashlib.sha256(lines.encode()).hexdigest()[:16]
