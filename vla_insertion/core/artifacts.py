"""Where the package's generated artifacts go by default: models, checkpoints, bags, results.

One home for these paths, so the demo, the tools and the launch file agree. The defaults are
relative to the working directory (the checkout for `make demo` and `make test`); `artifacts/`
is gitignored and nothing in it is ever committed.

The demo's tiny untrained models also have an absolute home, `cache_root()`
(`$XDG_CACHE_HOME/vla_insertion`, else `~/.cache/vla_insertion`), used when the working
directory has no `artifacts/` copy: `ros2 launch vla_insertion vla_insertion.launch.py
sim:=true` then works from any folder (`demo_models`, `prepare_demo_models`).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
import subprocess
import sys

from vla_insertion.core.config import ConfigError, VlmConfig

logger = logging.getLogger(__name__)

ROOT = Path('artifacts')
TINY_VLM = ROOT / 'models' / 'tiny-qwen2.5-vl'               # make_tiny_vlm's output
UNTRAINED_CHECKPOINT = ROOT / 'checkpoints' / 'untrained-expert'
TRAINED_CHECKPOINT = ROOT / 'checkpoints' / 'trained-expert'
BAGS = ROOT / 'bags'
EVALUATION = ROOT / 'eval'


class ArtifactError(RuntimeError):
    """A default artifact could not be prepared (the message names the step and its output)."""


def cache_root() -> Path:
    """Return the absolute home of generated models: $XDG_CACHE_HOME or ~/.cache, /vla_insertion.

    The development venv lives there too (scripts/setup.sh).
    """
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return Path(base).resolve() / 'vla_insertion'


def demo_models() -> tuple[Path, Path]:
    """Return absolute (tiny VLM folder, untrained expert checkpoint folder) of the demo.

    The working directory's `artifacts/` copies when both are there (a checkout after
    `make demo`), else the same names under `cache_root()` (they may not exist yet:
    `prepare_demo_models` writes them).
    """
    if TINY_VLM.is_dir() and UNTRAINED_CHECKPOINT.is_dir():
        return TINY_VLM.resolve(), UNTRAINED_CHECKPOINT.resolve()
    cache = cache_root()
    return cache / 'models' / TINY_VLM.name, cache / 'checkpoints' / UNTRAINED_CHECKPOINT.name


def prepare_demo_models(vlm: Path, checkpoint: Path, params_file: Path | None, *,
                        overrides: dict | None = None, bin_dir: Path | None = None) -> list[str]:
    """Write the tiny untrained VLM and a matching untrained checkpoint where missing.

    The checkpoint is rewritten when its feature contract is not the one the VLM node will
    have with `params_file` and `overrides` (e.g. the launch's `instruction:=`), so the expert
    never refuses the demo's features. The package's own programs do the writing, as child
    processes: from `bin_dir` (the installed lib/vla_insertion, same interpreter as the nodes)
    or else `python -m`. Returns the steps run (empty when both were ready); raises
    ArtifactError naming the failed step and the end of its output.
    """
    from vla_insertion.core.vlm.source import MARKER_FILE

    steps = []
    if not (Path(vlm) / MARKER_FILE).is_file():
        steps.append(run_program(bin_dir, 'make_tiny_vlm', ['--out', str(vlm)]))
    contract = demo_contract(vlm, params_file, overrides)
    if _contract_digest(checkpoint) != contract.digest:
        steps.append(run_program(bin_dir, 'make_untrained_checkpoint', [
            '--contract-json', contract.to_json(), '--out', str(checkpoint)]))
    return steps


def demo_contract(vlm: Path, params_file: Path | None, overrides: dict | None = None):
    """Return the feature contract the VLM node has with `vlm`, `params_file` and `overrides`.

    Raises ArtifactError when the params file or the model's config cannot be read.
    """
    from vla_insertion.core.params import load_config
    from vla_insertion.core.vlm.contract import feature_contract_for
    try:
        config = load_config(VlmConfig, 'vlm_node', params_file,
                             overrides={**(overrides or {}), 'model': str(vlm)})
        return feature_contract_for(config)
    except (ConfigError, OSError) as exc:
        raise ArtifactError(f'the demo VLM {vlm} with {params_file}: {exc}') from None


def _contract_digest(checkpoint: Path) -> str:
    try:
        return json.loads((Path(checkpoint) / 'config.json').read_text())['contract_digest']
    except (OSError, ValueError, KeyError, TypeError):
        return ''


def run_program(bin_dir: Path | None, program: str, args: list[str], echo=None) -> str:
    """Run one of the package's programs as a child; return its name, raise ArtifactError.

    From `bin_dir` (the installed lib/vla_insertion, the nodes' interpreter) or else
    `python -m vla_insertion.tools.<program>`; offline (HF_HUB_OFFLINE). With `echo`, each
    output line is passed to it as it comes (long steps show their progress); the error names
    the program and the end of its output.
    """
    cmd = ([str(Path(bin_dir) / program)] if bin_dir is not None
           else [sys.executable, '-m', f'vla_insertion.tools.{program}'])
    logger.info(f'running {program} {" ".join(args[:12])}{" ..." if len(args) > 12 else ""}')
    tail: list[str] = []
    with subprocess.Popen(cmd + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env={**os.environ, 'HF_HUB_OFFLINE': '1'}) as child:
        for line in child.stdout:
            tail = (tail + [line.rstrip()])[-30:]
            if echo is not None:
                echo(f'  {program}: {line.rstrip()}')
    if child.returncode != 0:
        raise ArtifactError(f'{program} failed (exit {child.returncode}): '
                            f'{chr(10).join(tail).strip()[-1500:]}')
    return program
