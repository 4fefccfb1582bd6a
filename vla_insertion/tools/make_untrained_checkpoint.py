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
import json
from pathlib import Path
import sys

from vla_insertion.core import artifacts
from vla_insertion.core.config import ConfigError, VlmConfig
from vla_insertion.core.expert.model import ExpertModelConfig
from vla_insertion.core.expert.presets import make_untrained_checkpoint, PRESETS
from vla_insertion.core.feature_contract import FeatureContract
from vla_insertion.core.params import load_config
from vla_insertion.core.vlm import feature_contract_for

DEFAULT_OUTPUT = str(artifacts.UNTRAINED_CHECKPOINT)


def contract_from_vlm(params_file: str | None, model: str | None) -> FeatureContract:
    """Compute the VLM's feature contract from its node parameters, without running it."""
    config = load_config(VlmConfig, 'vlm_node', params_file,
                         overrides={'model': model} if model else None)
    return feature_contract_for(config)


def contract_from_json(text_or_path: str) -> FeatureContract:
    path = Path(text_or_path)
    text = path.read_text(encoding='utf-8') if path.is_file() else text_or_path
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f'--contract-json: neither a file nor valid JSON: {exc}') from None
    return FeatureContract.from_dict(doc.get('feature_contract', doc))


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
                        help='architecture size: default (~19.4M parameters) or small (tests)')
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
