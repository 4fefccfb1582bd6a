"""Expert architecture presets and the untrained (seeded random) checkpoint builder.

`PRESETS` name the architecture sizes every tool offers (`default`: ~19.4M trainable
parameters, as the seeds' expert; `medium`: the demo's policy, trained on a 2-core CPU;
`small`: for tests and quick runs); the input and output
sizes come from the feature contract and the flags. An untrained checkpoint is labelled
`untrained: true`: its actions are meaningless and must never drive a real robot.
"""
from __future__ import annotations

from pathlib import Path

import torch

from vla_insertion.core.config import ConfigError
from vla_insertion.core.expert.checkpoint import CheckpointMeta, save_checkpoint
from vla_insertion.core.expert.model import ActionExpert, count_parameters, ExpertModelConfig
from vla_insertion.core.feature_contract import FeatureContract

# Architecture presets; the input and output sizes come from the contract and the flags.
PRESETS = {
    'default': {},  # ~19.4M trainable parameters (the seeds' expert has 20.8M)
    # the demo's policy: trains on 2 CPU cores in minutes
    'medium': {'sensor_conv': 64, 'sensor_dim': 128, 'vl_token_dim': 32, 'vl_queries': 2,
               'vl_dim': 256, 'state_hidden': 128, 'trunk_dim': 512, 'trunk_layers': 2,
               'flow_hidden': 256, 'flow_layers': 1},
    'small': {'sensor_conv': 32, 'sensor_dim': 64, 'vl_token_dim': 16, 'vl_queries': 2,
              'vl_dim': 64,  # tests
              'state_hidden': 32, 'trunk_dim': 128, 'trunk_layers': 1, 'flow_hidden': 128,
              'flow_layers': 1},
}

# Plausible scales of the default sensor channels (forces [N], torques [N m], distance [m]):
# an untrained checkpoint has no data to estimate them from.
_SENSOR_STD = [5.0, 5.0, 5.0, 0.5, 0.5, 0.5, 0.01]


def model_config(preset: str, contract: FeatureContract, **overrides) -> ExpertModelConfig:
    """Return the model config of a preset for features of `contract`."""
    if preset not in PRESETS:
        raise ConfigError(f'preset must be one of {sorted(PRESETS)}, got {preset!r}')
    return ExpertModelConfig(**{**PRESETS[preset], 'feature_tokens': contract.num_tokens,
                                'feature_dim': contract.feature_dim, **overrides})


def make_untrained_checkpoint(output: str | Path, contract: FeatureContract, *,
                              preset: str = 'default', head: str = 'regression',
                              flow_steps: int = 10, seed: int = 0, horizon: int = 8,
                              dt_s: float = 0.1, **overrides) -> Path:
    """Build a seeded random model for `contract` and save it as an untrained checkpoint."""
    cfg = model_config(preset, contract, head=head, flow_steps=flow_steps, horizon=horizon,
                       **overrides)
    torch.manual_seed(seed)
    model = ActionExpert(cfg).eval()
    if cfg.sensor_channels == len(_SENSOR_STD):
        model.set_normalization({'sensor_std': _SENSOR_STD})
    meta = CheckpointMeta(
        model=cfg, contract=contract, dt_s=float(dt_s), untrained=True,
        description=f'UNTRAINED: random weights (seed {seed}, preset {preset}, '
                    f'{count_parameters(model)} parameters) for the demo and tests; its actions '
                    'are meaningless',
        extra={'seed': seed, 'preset': preset})
    return save_checkpoint(output, model, meta)
