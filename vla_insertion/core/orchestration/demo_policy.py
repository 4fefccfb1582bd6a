"""The demo's trained policy: built on this machine the first time, reused after.

`make demo` drives the simulated cell with a policy trained here, from nothing downloadable:

    1. record_demonstrations --backend sim   the scripted demonstrator, randomised holes,
                                             starts and noise, one bag per episode
    2. cache_features                        the tiny VLM once over every bag
    3. train_expert --cache --targets chunks stage 1 on the demonstrator's clean chunks,
                                             wrench jitter, the newest features per tick

each step one of the package's own programs run as a child process (as `prepare_demo_models`
does), its output shown as it comes, under `<root>/` (`artifacts/demo_policy/` of the working
directory, the checkpoint in `<root>/checkpoint`). `recipe.json` written at the end marks a
finished build: the recipe's fields and the VLM's feature contract digest. A build with both
unchanged is reused; anything else is rebuilt. An interrupted build starts again where it
stopped: recorded bags stay (record is skipped when all of them are there), the cache skips
cached bags, training resumes from its last saved state.

The demonstrations use their own seed (`DemoRecipe.seed`), so the holes the demo then plays
(sim_cell's seed, 0 by default) are not the ones trained on.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
import json
from pathlib import Path
import time

from vla_insertion.core.artifacts import ROOT, run_program

DEMO_POLICY_ROOT = ROOT / 'demo_policy'


@dataclass(frozen=True)
class DemoRecipe:
    """What the demo's policy is trained on and how long."""

    episodes: int = 160            # demonstration episodes (each ~6 s of cell time)
    seed: int = 1000               # their holes' seed: not the demo's (sim_cell seed 0)
    start_range_rad: float = 0.15  # randomised start pose per joint [rad]
    noise_rad: float = 0.03        # the demonstrator's DART noise [rad]
    descent_noise: float = 0.15    # ... in the descent over the hole, a fraction of it [1]
    camera_fps: float = 5.0        # recorded frames per view per second [Hz]
    preset: str = 'medium'         # expert size
    steps: int = 6000              # optimizer steps
    targets: str = 'chunks'        # the demonstrator's clean chunks (train_expert --targets)
    wrench_jitter_n: float = 20.0  # the demonstrator ignores force (train_expert --wrench-jitter)
    # each tick paired with the newest VL update: with the motion since the capture as an
    # input, held-out success was 15/20 against 9/20 with ages drawn from 0.385-0.77 s
    feature_age: str = 'newest'    # (train_expert --feature-age)
    batch_size: int = 64
    workers: int = 2               # recording processes
    threads: int = 2               # torch threads of the cache and the training

    def as_dict(self) -> dict:
        return asdict(self)


def demo_policy_checkpoint(root: Path = DEMO_POLICY_ROOT) -> Path:
    """Where the demo's trained checkpoint is (or will be) written."""
    return Path(root) / 'checkpoint'


def ready(root: Path, recipe: DemoRecipe, contract_digest: str) -> bool:
    """Return True if `root` holds a finished build of `recipe` for `contract_digest`."""
    try:
        done = json.loads((Path(root) / 'recipe.json').read_text())
    except (OSError, ValueError):
        return False
    return (done.get('recipe') == recipe.as_dict()
            and done.get('contract_digest') == contract_digest
            and (demo_policy_checkpoint(root) / 'config.json').is_file())


def prepare_demo_policy(vlm: Path, params_file: Path, contract_digest: str, *,
                        root: Path = DEMO_POLICY_ROOT, recipe: DemoRecipe = DemoRecipe(),
                        bin_dir: Path | None = None, echo=print) -> list[str]:
    """Build the demo's trained policy under `root` unless a finished build is there.

    `vlm`: the tiny VLM folder the demo runs; `contract_digest`: its feature contract with
    `params_file` (the checkpoint must match it). `echo(line)` shows the children's output.
    Returns the steps run (empty when reused); raises ArtifactError naming a failed step.
    """
    root = Path(root)
    if ready(root, recipe, contract_digest):
        return []
    stale = root / 'recipe.json'
    if stale.exists() or _built_for_other(root, recipe, contract_digest):
        echo(f'[demo policy] {root} was built with another recipe or VLM: building it again')
        for part in ('demos', 'cache', 'checkpoint'):
            _remove(root / part)
        stale.unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    (root / 'building.json').write_text(json.dumps(
        {'recipe': recipe.as_dict(), 'contract_digest': contract_digest}, indent=2))
    demos, cache, checkpoint = root / 'demos', root / 'cache', demo_policy_checkpoint(root)
    steps = []
    t0 = time.monotonic()
    echo(f'[demo policy] building a trained policy in {root} (first run only; '
         f'{recipe.episodes} demonstrations, {recipe.steps} training steps)')
    if not _recorded(demos, recipe):
        _remove(demos)
        steps.append(_run(bin_dir, 'record_demonstrations', [
            '--backend', 'sim', '--episodes', str(recipe.episodes), '--seed', str(recipe.seed),
            '--start-range-rad', str(recipe.start_range_rad),
            '--noise-rad', str(recipe.noise_rad), '--descent-noise', str(recipe.descent_noise),
            '--camera-fps', str(recipe.camera_fps),
            '--workers', str(recipe.workers), '--params-file', str(params_file),
            '-o', str(demos)], echo))
    bags = [str(demos / e['bag']) for e in json.loads(
        (demos / 'episodes.json').read_text())['episodes']]
    steps.append(_run(bin_dir, 'cache_features', [
        *bags, '--cache', str(cache), '--params-file', str(params_file),
        '--vlm-model', str(vlm), '--threads', str(recipe.threads), '--no-progress'], echo))
    resume = ['--resume'] if (checkpoint / 'last').is_dir() else []
    steps.append(_run(bin_dir, 'train_expert', [
        *bags, '--cache', str(cache), '--params-file', str(params_file),
        '--vlm-model', str(vlm), '--preset', recipe.preset, '--steps', str(recipe.steps),
        '--targets', recipe.targets, '--wrench-jitter', str(recipe.wrench_jitter_n),
        '--feature-age', recipe.feature_age,
        '--batch-size', str(recipe.batch_size), '--threads', str(recipe.threads),
        '--seed', str(recipe.seed), '--no-progress', '--out', str(checkpoint), *resume], echo))
    (root / 'recipe.json').write_text(json.dumps(
        {'recipe': recipe.as_dict(), 'contract_digest': contract_digest,
         'build_s': round(time.monotonic() - t0, 1)}, indent=2))
    (root / 'building.json').unlink(missing_ok=True)
    echo(f'[demo policy] ready after {time.monotonic() - t0:.0f} s: {checkpoint}')
    return steps


def _built_for_other(root: Path, recipe: DemoRecipe, contract_digest: str) -> bool:
    """Return True if an unfinished build in `root` began with another recipe or contract."""
    try:
        started = json.loads((root / 'building.json').read_text())
    except (OSError, ValueError):
        return False
    return (started.get('recipe') != recipe.as_dict()
            or started.get('contract_digest') != contract_digest)


def _recorded(demos: Path, recipe: DemoRecipe) -> bool:
    try:
        manifest = json.loads((demos / 'episodes.json').read_text())
    except (OSError, ValueError):
        return False
    # recorded as this recipe says: the same holes, starts, noise and frame rate
    wanted = {'recorded': recipe.episodes, 'seed': recipe.seed,
              'start_range_rad': recipe.start_range_rad, 'noise_rad': recipe.noise_rad,
              'descent_noise': recipe.descent_noise, 'camera_fps': recipe.camera_fps}
    return (all(manifest.get(k) == v for k, v in wanted.items())
            and all((demos / e['bag']).is_dir() for e in manifest['episodes']))


def _remove(path: Path) -> None:
    import shutil
    shutil.rmtree(path, ignore_errors=True)


def _run(bin_dir: Path | None, program: str, args: list[str], echo) -> str:
    echo(f'[demo policy] {program} ...')
    t0 = time.monotonic()
    run_program(bin_dir, program, args, echo)
    echo(f'[demo policy] {program} done in {time.monotonic() - t0:.0f} s')
    return program
