"""The demo's trained policy: built on this machine the first time, reused after.

`make demo` drives the simulated cell with a policy trained here, from nothing downloadable:

    1. record_demonstrations --backend sim   the force-guided demonstrator (core/sim/reference.py),
                                             randomised holes, starts and noise, one bag each
    2. cache_features                        the tiny VLM once over every bag
    3. train_expert --cache --targets chunks stage 1 on the demonstrator's clean chunks, the
                                             newest features per tick, the sensor as recorded
                                             (no wrench jitter: the demonstrator reacts to force)
    4. dagger --no-eval-start                DAgger rounds: the expert drives new holes, the
                                             demonstrator labels every tick, trained on again
                                             from the last checkpoint; each round ends with the
                                             closed-loop evaluation of `eval_episodes` held-out
                                             holes (`eval_seed`, in-process, faster than real
                                             time); no rounds: closed_loop evaluates instead

each step one of the package's own programs run as a child process (as `prepare_demo_models`
does), its output shown as it comes, under `<root>/` (`artifacts/demo_policy/` of the working
directory, the checkpoint in `<root>/checkpoint`, the held-out evaluation in
`<root>/evaluation.json`, which the demo's summary prints beside its live episodes). The build
times itself: each step's seconds and the whole are printed and kept in `recipe.json`, written
at the end, which marks a finished build: the recipe's fields and the VLM's feature contract
digest. A build with both unchanged is reused; anything else is rebuilt. An interrupted build
starts again where it stopped: recorded bags stay (record is skipped when all of them are
there), the cache skips cached bags, training resumes from its last saved state, a DAgger
round whose bags are recorded is not driven again.

The demonstrations use their own seed (`DemoRecipe.seed`), the DAgger rounds new holes of it
(from episode `episodes` on), the evaluation the held-out seed 7 (closed_loop's `--seed 7`),
and the demo then plays sim_cell's seed 0: none of the holes played was trained on.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
import json
from pathlib import Path
import shutil
import time

from vla_insertion.core.artifacts import ROOT, run_program
from vla_insertion.core.evaluation.summary import held_out_evaluation, success_text

DEMO_POLICY_ROOT = ROOT / 'demo_policy'
EVALUATION = 'evaluation.json'   # the held-out evaluation of the build


@dataclass(frozen=True)
class DemoRecipe:
    """What the demo's policy is trained on and how long."""

    episodes: int = 60             # demonstration episodes (each ~7 s of cell time)
    seed: int = 1000               # their holes' seed: not the demo's (sim_cell seed 0)
    start_range_rad: float = 0.15  # randomised start pose per joint [rad]
    noise_rad: float = 0.03        # the demonstrator's DART noise [rad]
    descent_noise: float = 0.15    # ... in the descent over the hole, a fraction of it [1]
    misled_fraction: float = 0.5   # episodes descending on a hole believed 1.2-3 mm off [1]
    camera_fps: float = 5.0        # recorded frames per view per second [Hz]
    preset: str = 'medium'         # expert size
    steps: int = 2500              # optimizer steps on the demonstrations
    targets: str = 'chunks'        # the demonstrator's clean chunks (train_expert --targets)
    # the demonstrator feels the block and a wedge: the expert must read the sensor as it is
    wrench_jitter_n: float = 0.0   # (train_expert --wrench-jitter) [N]
    # each tick paired with the newest VL update: with the motion since the capture as an
    # input, held-out success was 15/20 against 9/20 with ages drawn from 0.385-0.77 s
    feature_age: str = 'newest'    # (train_expert --feature-age)
    batch_size: int = 64
    dagger_rounds: int = 1         # DAgger rounds after the first training (dagger --rounds)
    dagger_episodes: int = 30      # driven, labelled episodes per round
    dagger_steps: int = 1000       # optimizer steps per round, from the last checkpoint
    eval_episodes: int = 20        # held-out closed-loop episodes ending the build
    eval_seed: int = 7             # their holes' seed (closed_loop --seed 7)
    workers: int = 2               # recording and evaluating processes
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


def held_out(root: Path = DEMO_POLICY_ROOT) -> dict | None:
    """Return the build's held-out evaluation (summary.held_out_evaluation), None if absent."""
    try:
        return json.loads((Path(root) / EVALUATION).read_text())
    except (OSError, ValueError):
        return None


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
        for part in ('demos', 'cache', 'expert0', 'dagger', 'eval', 'checkpoint'):
            _remove(root / part)
        (root / EVALUATION).unlink(missing_ok=True)
        stale.unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    (root / 'building.json').write_text(json.dumps(
        {'recipe': recipe.as_dict(), 'contract_digest': contract_digest}, indent=2))
    demos, cache = root / 'demos', root / 'cache'
    first, checkpoint = root / 'expert0', demo_policy_checkpoint(root)
    common = ['--params-file', str(params_file), '--vlm-model', str(vlm)]
    steps: list[str] = []
    seconds: dict[str, float] = {}
    t0, cpu0 = time.monotonic(), _children_cpu_s()
    echo(f'[demo policy] building a trained policy in {root} (first run only; '
         f'{recipe.episodes} demonstrations, {recipe.steps} training steps, '
         f'{recipe.dagger_rounds} DAgger round(s) of {recipe.dagger_episodes} episodes, '
         f'{recipe.eval_episodes} held-out episodes)')
    if not _recorded(demos, recipe):
        _remove(demos)
        _run(bin_dir, 'record_demonstrations', [
            '--backend', 'sim', '--episodes', str(recipe.episodes), '--seed', str(recipe.seed),
            '--start-range-rad', str(recipe.start_range_rad),
            '--noise-rad', str(recipe.noise_rad), '--descent-noise', str(recipe.descent_noise),
            '--misled-fraction', str(recipe.misled_fraction),
            '--camera-fps', str(recipe.camera_fps),
            '--workers', str(recipe.workers), '--params-file', str(params_file),
            '-o', str(demos)], echo, steps, seconds)
    bags = [str(demos / e['bag']) for e in json.loads(
        (demos / 'episodes.json').read_text())['episodes']]
    _run(bin_dir, 'cache_features', [
        *bags, '--cache', str(cache), *common, '--threads', str(recipe.threads),
        '--no-progress'], echo, steps, seconds)
    resume = ['--resume'] if (first / 'last').is_dir() else []
    _run(bin_dir, 'train_expert', [
        *bags, '--cache', str(cache), *common, '--preset', recipe.preset,
        '--steps', str(recipe.steps), '--targets', recipe.targets,
        '--wrench-jitter', str(recipe.wrench_jitter_n), '--feature-age', recipe.feature_age,
        '--batch-size', str(recipe.batch_size), '--threads', str(recipe.threads),
        '--seed', str(recipe.seed), '--no-progress', '--out', str(first), *resume],
        echo, steps, seconds)
    if recipe.dagger_rounds > 0:
        rounds = root / 'dagger'
        _run(bin_dir, 'dagger', [
            *bags, '--checkpoint', str(first), '--cache', str(cache), *common,
            '--rounds', str(recipe.dagger_rounds), '--episodes', str(recipe.dagger_episodes),
            '--seed', str(recipe.seed), '--first-episode', str(recipe.episodes),
            '--eval-episodes', str(recipe.eval_episodes), '--eval-seed', str(recipe.eval_seed),
            '--no-eval-start', '--steps', str(recipe.dagger_steps),
            '--feature-age', recipe.feature_age, '--workers', str(recipe.workers),
            '--camera-fps', str(recipe.camera_fps), '--threads', str(recipe.threads),
            '-o', str(rounds)], echo, steps, seconds)
        best = _best_round(rounds)
        final, summary = rounds / 'checkpoint', best['held_out']
    else:
        evaluation = root / 'eval'
        _run(bin_dir, 'closed_loop', [
            '--checkpoint', str(first), *common, '--episodes', str(recipe.eval_episodes),
            '--seed', str(recipe.eval_seed), '--workers', str(recipe.workers),
            '-o', str(evaluation)], echo, steps, seconds)
        final = first
        summary = next(iter(json.loads(
            (evaluation / 'closed_loop.json').read_text())['results'].values()))
    _remove(checkpoint)
    shutil.copytree(final, checkpoint, ignore=shutil.ignore_patterns('last'))
    held = held_out_evaluation(summary, seed=recipe.eval_seed,
                               where='in-process, when the policy was built')
    (root / EVALUATION).write_text(json.dumps(held, indent=2))
    build_s = time.monotonic() - t0
    cpu_s = _children_cpu_s() - cpu0
    (root / 'recipe.json').write_text(json.dumps(
        {'recipe': recipe.as_dict(), 'contract_digest': contract_digest,
         'build_s': round(build_s, 1), 'steps_s': seconds, 'cpu_s': round(cpu_s, 1)},
        indent=2))
    (root / 'building.json').unlink(missing_ok=True)
    echo(f'[demo policy] ready after {build_s:.0f} s ('
         + ', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())
         + f'; CPU {cpu_s:.0f} s): {checkpoint}')
    echo(f'[demo policy] held-out holes (seed {recipe.eval_seed}, in-process): '
         f'{success_text(held)} inserted')
    return steps


def _best_round(rounds: Path) -> dict:
    """Return the row of the best DAgger round (rounds.json; core/train/dagger.py)."""
    from vla_insertion.core.train.dagger import best_round
    return best_round(json.loads((rounds / 'rounds.json').read_text())['rounds'])


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
              'descent_noise': recipe.descent_noise, 'misled_fraction': recipe.misled_fraction,
              'camera_fps': recipe.camera_fps}
    return (all(manifest.get(k) == v for k, v in wanted.items())
            and all((demos / e['bag']).is_dir() for e in manifest['episodes']))


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _run(bin_dir: Path | None, program: str, args: list[str], echo, steps: list[str],
         seconds: dict[str, float]) -> None:
    """Run one step; append its name to `steps` and its wall time [s] to `seconds`.

    Its CPU time (the child's and its workers', user + system) is printed too: on a busy
    machine the wall time says little, the CPU time what a quiet one would need.
    """
    echo(f'[demo policy] {program} ...')
    t0, cpu0 = time.monotonic(), _children_cpu_s()
    run_program(bin_dir, program, args, echo)
    seconds[program] = round(time.monotonic() - t0, 1)
    steps.append(program)
    echo(f'[demo policy] {program} done in {seconds[program]:.0f} s (CPU '
         f'{_children_cpu_s() - cpu0:.0f} s)')


def _children_cpu_s() -> float:
    """Return the user + system CPU time [s] of this process's finished children."""
    import resource
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
