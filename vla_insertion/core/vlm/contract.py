"""The feature contract of a VLM configuration, computed without loading or running the model.

`feature_contract_for(config)` is what the VLM node stamps on its features and what the
action-expert tool writes into a checkpoint; both must agree, so both call this one function.
It reads the model's config.json (for the hidden size), marker (for the portable name) and
the digest of its weight files (core/vlm/weights.py: computed once per machine and file).
"""
from __future__ import annotations

from vla_insertion.core.config import VlmConfig
from vla_insertion.core.feature_contract import FeatureContract
from vla_insertion.core.vlm.architecture import hidden_size_of, PUBLISHED_HIDDEN_SIZES
from vla_insertion.core.vlm.prompt import build_prompt
from vla_insertion.core.vlm.source import (
    hub_snapshot, is_hub_id, model_id_of, ModelSource, read_config, read_marker, VlmLoadError)
from vla_insertion.core.vlm.weights import weights_digest

REDUCTION_KIND = 'image_grid_pool+instruction_mean'


def reduction_name(config: VlmConfig) -> str:
    """Return the reduction as recorded in the contract, its parameters included."""
    return f'{REDUCTION_KIND}:{config.pool_grid_h}x{config.pool_grid_w}'


def num_feature_tokens(config: VlmConfig) -> int:
    """Return the rows of the feature matrix: pooled tokens of every view, then one text row."""
    return len(config.view_names) * config.pool_grid_h * config.pool_grid_w + 1


def describe_model(model: str, revision: str = '') -> tuple[str, int, str]:
    """Return (portable model id, hidden size, weights digest) of a hub id or folder.

    Nothing is loaded and the hub is not contacted. A published hub model absent from the
    cache is described from its published size, with no weights digest ('').
    """
    if is_hub_id(model):
        try:
            folder = hub_snapshot(model, download=False, revision=revision)
        except VlmLoadError:
            if model in PUBLISHED_HIDDEN_SIZES:
                return model, PUBLISHED_HIDDEN_SIZES[model], ''
            raise
        return model, hidden_size_of(read_config(folder)), weights_digest(folder)
    config = read_config(model)
    return (model_id_of(model, config, read_marker(model)), hidden_size_of(config),
            weights_digest(model))


def feature_contract_for(config: VlmConfig, source: ModelSource | None = None
                         ) -> FeatureContract:
    """Return the feature contract of `config` (the model's config.json is read, nothing runs).

    Pass `source` when the model is already resolved to avoid reading its files again.
    """
    if source is None:
        model_id, hidden, weights = describe_model(config.model, config.revision)
    else:
        model_id, hidden = source.model_id, hidden_size_of(source.config)
        weights = source.weights_digest
    return FeatureContract(
        model_id=model_id, reduction=reduction_name(config),
        num_tokens=num_feature_tokens(config), feature_dim=hidden,
        image_width=config.image_width, image_height=config.image_height,
        view_names=tuple(config.view_names),
        prompt=build_prompt(config.view_names, config.instruction), weights_digest=weights)
