"""Write an untrained (randomly initialised) action-expert checkpoint for the demo and tests.

The weights come from a fixed seed and the checkpoint is labelled `untrained: true`: its actions
are meaningless and must never drive a real robot. The feature contract, which the expert node
checks against every VLFeatures message, comes from the VLM side:

- by default from the VLM node's parameters (`--vlm-params`, `--vlm-model`) through
  `vla_insertion.core.vlm.feature_contract_for`, which computes it without running the VLM;
- or explicitly with `--contract-json` (a file or an inline JSON object of FeatureContract
  fields), e.g. for features of a VLM this package does not know.

    make_untrained_checkpoint                                   # -> artifacts/checkpoints/...
    make_untrained_checkpoint --vlm-model artifacts/models/tiny-qwen2.5-vl --preset small
    make_untrained_checkpoint --contract-json contract.json --head flow --flow-steps 10
"""
from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
import sys

import torch

from vla_insertion.core.config import ConfigError
from vla_insertion.core.expert.checkpoint import CheckpointMeta, save_checkpoint
from vla_insertion.core.expert.model import ActionExpert, count_parameters, ExpertModelConfig
from vla_insertion.core.feature_contract import FeatureContract

DEFAULT_OUTPUT = 'artifacts/checkpoints/untrained-expert'

# Architecture presets; the input and output sizes come from the contract and the flags.
PRESETS = {
    'default': {},  # ~20.7M trainable parameters (the seeds' expert has 20.8M)
    'small': {'sensor_conv': 32, 'sensor_dim': 64, 'vl_queries': 2, 'vl_dim': 64,  # tests
              'state_hidden': 32, 'trunk_dim': 128, 'trunk_layers': 1, 'flow_hidden': 128,
              'flow_layers': 1},
}

# Plausible scales of the default sensor channels (forces [N], torques [N m], distance [m]):
# an untrained checkpoint has no data to estimate them from.
_SENSOR_STD = [5.0, 5.0, 5.0, 0.5, 0.5, 0.5, 0.01]


def contract_from_vlm(params_file: str | None, model: str | None) -> FeatureContract:
    """Compute the VLM's feature contract from its node parameters, without running it."""
    from vla_insertion.core.config import config_from_dict, load_node_params, VlmConfig
    values = load_node_params(params_file, 'vlm_node') if params_file else {}
    if model:
        values['model'] = model
    config = config_from_dict(VlmConfig, values, ignore_unknown=True)
    for name in ('vla_insertion.core.vlm', 'vla_insertion.core.vlm.contract',
                 'vla_insertion.core.vlm.features'):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, 'feature_contract_for'):
            return module.feature_contract_for(config)
    raise ConfigError('vla_insertion.core.vlm.feature_contract_for is not available; pass the '
                      'contract with --contract-json')


def contract_from_json(text_or_path: str) -> FeatureContract:
    path = Path(text_or_path)
    text = path.read_text(encoding='utf-8') if path.is_file() else text_or_path
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f'--contract-json: neither a file nor valid JSON: {exc}') from None
    return FeatureContract.from_dict(doc.get('feature_contract', doc))


def make_untrained_checkpoint(output: str | Path, contract: FeatureContract, *,
                              preset: str = 'default', head: str = 'regression',
                              flow_steps: int = 10, seed: int = 0, horizon: int = 8,
                              dt_s: float = 0.1, **overrides) -> Path:
    """Build a seeded random model for `contract` and save it as an untrained checkpoint."""
    if preset not in PRESETS:
        raise ConfigError(f'preset must be one of {sorted(PRESETS)}, got {preset!r}')
    cfg = ExpertModelConfig(**{**PRESETS[preset], 'feature_tokens': contract.num_tokens,
                               'feature_dim': contract.feature_dim, 'head': head,
                               'flow_steps': flow_steps, 'horizon': horizon, **overrides})
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--output', '--out', default=DEFAULT_OUTPUT,
                        help=f'checkpoint folder to write (default {DEFAULT_OUTPUT})')
    parser.add_argument('--contract-json', default=None,
                        help='feature contract as a JSON file or inline JSON object '
                             '(default: computed from the VLM parameters)')
    parser.add_argument('--vlm-params', '--params-file', dest='vlm_params', default=None,
                        help='ROS params YAML whose vlm_node entry configures the VLM')
    parser.add_argument('--vlm-model', default=None,
                        help='VLM hub id or local folder (overrides the params file)')
    parser.add_argument('--preset', choices=sorted(PRESETS), default='default',
                        help='architecture size: default (~20.7M parameters) or small (tests)')
    parser.add_argument('--head', choices=['regression', 'flow'], default='regression')
    parser.add_argument('--flow-steps', type=int, default=10, help='default ODE steps (flow)')
    parser.add_argument('--horizon', type=int, default=8, help='actions per chunk')
    parser.add_argument('--dt', type=float, default=0.1, help='time between actions [s]')
    parser.add_argument('--seed', type=int, default=0, help='seed of the random weights')
    args = parser.parse_args(argv)
    try:
        contract = (contract_from_json(args.contract_json) if args.contract_json
                    else contract_from_vlm(args.vlm_params, args.vlm_model))
        folder = make_untrained_checkpoint(
            args.output, contract, preset=args.preset, head=args.head,
            flow_steps=args.flow_steps, seed=args.seed, horizon=args.horizon, dt_s=args.dt)
    except (ConfigError, OSError, ValueError) as exc:
        print(f'make_untrained_checkpoint: {exc}', file=sys.stderr)
        return 2
    doc = json.loads((folder / 'config.json').read_text())
    cfg = ExpertModelConfig(**doc['model'])
    print(f'wrote UNTRAINED expert checkpoint {folder} (head {cfg.head}, '
          f'{cfg.feature_tokens}x{cfg.feature_dim} features, contract '
          f'{doc["contract_digest"]}, model {contract.model_id})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
