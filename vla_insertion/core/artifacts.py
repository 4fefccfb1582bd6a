"""Where the package's generated artifacts go by default: models, checkpoints, bags, results.

One home for these paths, so the demo, the tools and the launch file agree. They are relative
to the working directory (the checkout for `make demo` and `make test`); `artifacts/` is
gitignored and nothing in it is ever committed.
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path('artifacts')
TINY_VLM = ROOT / 'models' / 'tiny-qwen2.5-vl'               # make_tiny_vlm's output
UNTRAINED_CHECKPOINT = ROOT / 'checkpoints' / 'untrained-expert'
TRAINED_CHECKPOINT = ROOT / 'checkpoints' / 'trained-expert'
BAGS = ROOT / 'bags'
EVALUATION = ROOT / 'eval'
