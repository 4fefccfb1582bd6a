"""pin_weights: pin an action-expert checkpoint to the VLM weights it was trained on.

A checkpoint written before feature contracts carried a digest of the VLM's weight files has
none, and the expert refuses features of any pinned weights (contract_mismatch, naming
`weights_digest`): this code cannot know which weights the checkpoint learned from. Its owner
does; this writes the digest of the VLM the params file configures into the checkpoint's
contract, once every other field of the contract agrees.

    pin_weights artifacts/checkpoints/trained-expert --params-file config/vla_insertion.yaml
    pin_weights CHECKPOINT --vlm-model /models/qwen2.5-vl-3b-ft --force   # re-pin

Exits 0 (pinned, or pinned already), 2 with the reason.
"""
from __future__ import annotations

import argparse
import sys

from vla_insertion.core.config import ConfigError, VlmConfig
from vla_insertion.core.expert.checkpoint import CheckpointError, pin_weights
from vla_insertion.core.params import load_config
from vla_insertion.core.vlm import feature_contract_for
from vla_insertion.core.vlm.source import VlmLoadError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='pin_weights', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('checkpoint', help='the checkpoint folder (config.json is rewritten)')
    parser.add_argument('--params-file', help='ROS params YAML whose vlm_node entry '
                                              'configures the VLM (default: built-in defaults)')
    parser.add_argument('--vlm-model', help='VLM hub id or local folder (overrides the file)')
    parser.add_argument('--force', action='store_true',
                        help='replace a digest the checkpoint holds already')
    args = parser.parse_args(argv)
    try:
        config = load_config(VlmConfig, 'vlm_node', args.params_file,
                             overrides={'model': args.vlm_model} if args.vlm_model else None)
        vlm = feature_contract_for(config)
        meta = pin_weights(args.checkpoint, vlm, force=args.force)
    except (ConfigError, CheckpointError, VlmLoadError, OSError) as exc:
        print(f'pin_weights: {exc}', file=sys.stderr)
        return 2
    print(f'pin_weights: {args.checkpoint} pinned to weights {vlm.weights_digest} of '
          f'{vlm.model_id}; contract {meta.contract_digest}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
