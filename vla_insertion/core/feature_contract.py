"""The feature contract between the VLM node and the action expert.

An action expert is trained on VL features computed in one precise way. Everything that changes
those numbers (model, reduction of hidden states, image size, view order, prompt) is part of the
contract; its digest travels in every VLFeatures message and is stored in expert checkpoints, and
the expert refuses features whose hash differs from its checkpoint's.

The weights are pinned by `weights_digest`, the digest of the VLM's weight files
(core/vlm/weights.py): a model id names a model, not which snapshot or fine-tune of it, and
features of other weights are refused like any other change. A contract written before the
field existed has none (''); its canonical form, and so its digest, is the one it had then.
Such a checkpoint is therefore refused with features of any pinned weights, the field named
as the difference: this code cannot know which weights it was trained on. A cell owner who
does pins it once with `pin_weights CHECKPOINT` (core/expert/checkpoint.py `pin_weights`);
the expert never guesses (docs/vlm.md, "Which weights").

The digest says only *that* two contracts differ. To say *what* differs, the VLM node also
publishes its whole contract as JSON on `vla/feature_contract` (transient local, so a late
expert still gets it), and `differences` names each field that differs with both values: a
new `instruction:=` shows up as the prompt, a VLM folder swap as the model, and so on.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
import hashlib
import json
import re

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
    weights_digest: str = ''       # of the VLM's weight files, '' = unknown (older contracts)

    def __post_init__(self) -> None:
        require(bool(self.model_id), 'model_id must not be empty')
        require(bool(self.reduction), 'reduction must not be empty')
        for name in ('num_tokens', 'feature_dim', 'image_width', 'image_height'):
            require_positive(name, getattr(self, name))
        require_unique_names('view_names', self.view_names)
        require(isinstance(self.weights_digest, str)
                and re.fullmatch(r'([0-9a-f]{16})?', self.weights_digest) is not None,
                f'weights_digest must be 16 hex digits or empty, got {self.weights_digest!r}')

    def to_dict(self) -> dict:
        d = asdict(self)
        d['view_names'] = list(self.view_names)
        if not self.weights_digest:    # a contract without one keeps its former form and digest
            del d['weights_digest']
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FeatureContract:
        try:
            return cls(**{**d, 'view_names': tuple(d['view_names'])})
        except (KeyError, TypeError) as exc:
            raise ConfigError(f'invalid feature contract {d!r}: {exc}') from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeatureContract:
        """Parse `to_json` output; raise ConfigError for anything else."""
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f'feature contract is not JSON: {exc}') from None
        if not isinstance(doc, dict):
            raise ConfigError(f'feature contract must be a JSON object, got {text[:80]!r}')
        return cls.from_dict(doc)

    @property
    def digest(self) -> str:
        """Return the first 16 hex digits of the SHA-256 of the canonical JSON form."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(',', ':'))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# What changes a field, for the person reading the message.
_CAUSES = {
    'prompt': 'the task instruction (instruction:=) and the view names are part of it',
    'model_id': 'another VLM (vlm_model:=)',
    'reduction': 'another pooling grid (pool_grid_h, pool_grid_w)',
    'num_tokens': 'views times the pooling grid, plus one',
    'feature_dim': 'the VLM hidden size',
    'image_width': 'the size views are resized to',
    'image_height': 'the size views are resized to',
    'view_names': 'which views, in which order',
    'version': 'the contract format',
    'weights_digest': 'other weight files: another model folder, revision or fine-tune; a '
                      'checkpoint without one predates weight digests (pin_weights pins it)',
}


def differences(expected: FeatureContract, actual: FeatureContract,
                expected_name: str = 'checkpoint', actual_name: str = 'VLM') -> list[str]:
    """Describe each field in which `actual` differs from `expected`, with both values.

    Long strings are cut to their differing middle (with a little context before it), so an
    instruction change reads as the two instructions rather than two copies of the prompt.
    """
    out = []
    for name in {**expected.to_dict(), **actual.to_dict()}:
        want, got = getattr(expected, name), getattr(actual, name)
        if want == got:
            continue
        if isinstance(want, str) and isinstance(got, str):
            got, want = _from_first_difference(got, want)
        out.append(f'{name}: {actual_name} {got!r} vs {expected_name} {want!r} '
                   f'({_CAUSES.get(name, name)})')
    return out


def describe_mismatch(expected: FeatureContract, actual: FeatureContract,
                      expected_name: str = 'checkpoint', actual_name: str = 'VLM') -> str:
    """Return one line naming every field in which `actual` differs from `expected`."""
    found = differences(expected, actual, expected_name, actual_name)
    if not found:
        return f'the {actual_name} and {expected_name} contracts are equal ({expected.digest})'
    return (f'the {actual_name} contract {actual.digest} differs from the {expected_name} '
            f'contract {expected.digest} in ' + '; '.join(found))


def _from_first_difference(a: str, b: str, context: int = 12) -> tuple[str, str]:
    start = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    shortest = min(len(a), len(b)) - start
    common_end = next((k for k in range(shortest) if a[-1 - k] != b[-1 - k]), shortest)
    if common_end > 3:       # cut the shared end, after the word the difference is in
        a, b = _cut_after_word(a, len(a) - common_end), _cut_after_word(b, len(b) - common_end)
    if start > context:
        a, b = '...' + a[start - context:], '...' + b[start - context:]
    return a, b


def _cut_after_word(text: str, end: int) -> str:
    while end < len(text) and text[end].isalnum():
        end += 1
    return text[:end] + '...' if end < len(text) else text
