"""The feature contract between the VLM node and the action expert.

An action expert is trained on VL features computed in one precise way. Everything that changes
those numbers (model, reduction of hidden states, image size, view order, prompt) is part of the
contract; its digest travels in every VLFeatures message and is stored in expert checkpoints, and
the expert refuses features whose hash differs from its checkpoint's.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
import hashlib
import json

from vla_insertion.core.config import ConfigError, require, require_positive, require_unique_names

CONTRACT_VERSION = 1


@dataclass(frozen=True)
class FeatureContract:
    model_id: str                  # hub id or model name (not a machine-specific folder path)
    reduction: str                 # how hidden states become features, e.g. "image_token_pool"
    num_tokens: int                # rows of the published feature matrix
    feature_dim: int               # columns: the VLM hidden size
    image_width: int               # pixels each view is resized to before the processor
    image_height: int              # pixels
    view_names: tuple[str, ...]    # views in the order they appear in the prompt
    prompt: str                    # the full text prompt, task instruction included
    version: int = CONTRACT_VERSION  # bumped when the meaning of a field changes

    def __post_init__(self) -> None:
        require(bool(self.model_id), 'model_id must not be empty')
        require(bool(self.reduction), 'reduction must not be empty')
        for name in ('num_tokens', 'feature_dim', 'image_width', 'image_height'):
            require_positive(name, getattr(self, name))
        require_unique_names('view_names', self.view_names)

    def to_dict(self) -> dict:
        d = asdict(self)
        d['view_names'] = list(self.view_names)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FeatureContract:
        try:
            return cls(**{**d, 'view_names': tuple(d['view_names'])})
        except (KeyError, TypeError) as exc:
            raise ConfigError(f'invalid feature contract {d!r}: {exc}') from None

    @property
    def digest(self) -> str:
        """Return the first 16 hex digits of the SHA-256 of the canonical JSON form."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(',', ':'))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]
