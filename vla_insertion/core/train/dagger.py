"""DAgger in one call: drive with the policy, label, cache, retrain, evaluate, repeat.

    checkpoint_0 (trained on the demonstrations)
      round k = 1, 2, ...:
        drive     the checkpoint of round k-1 drives `episodes` new holes (seed, a range of
                  its own), the demonstrator labels every tick (record_episodes(driver=...))
        cache     the VLM's features of the new bags, into the demonstrations' cache
        retrain   on the demonstrations and every round's bags: warm (from round k-1's
                  checkpoint, its normalisation kept) or from scratch
        evaluate  closed loop on `eval_episodes` held-out holes (`eval_seed`), in-process
      until the stopping rule: the held-out success reached `target`, or it did not improve on
      the best so far for `patience` rounds, or the round budget is spent.

Each round is a row of the rounds table (`rounds.json`, `rounds.md` under `out`): the driver's
own success on the driven holes (new holes it was never trained on), the labels, the training
samples and validation loss, the held-out success and outcomes (`held_out`: the whole episode
summary, core/evaluation/summary.py), seconds per stage. The best
round by held-out success (the later of equals: it saw more data) is the result. ROS-free;
`tools/dagger.py` is the command, the demo's build runs it for its rounds.

Files under `out`:

    round_<k>/bags/episode_*     the driven episodes (episodes.json as record_demonstrations)
    round_<k>/checkpoint         the retrained expert
    rounds.json, rounds.md       the table, rewritten after every round

A round whose bags are all there is not recorded again; cached bags are not computed again; a
round's training resumes from its last saved state.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
import json
import math
from pathlib import Path
import time

from vla_insertion.core.config import require, require_positive

ROUNDS_FILE = 'rounds.json'
TABLE_COLUMNS = ('round', 'driven', 'driven_success', 'labels', 'jammed_ticks', 'samples',
                 'val_loss', 'held_out_success', 'outcomes', 'record_s', 'cache_s', 'train_s',
                 'eval_s')


@dataclass(frozen=True)
class DaggerConfig:
    """Rounds, holes and budgets of one DAgger run."""

    out: str                       # root folder of the rounds
    rounds: int = 3                # round budget [rounds]
    episodes: int = 40             # driven, labelled episodes per round [episodes]
    seed: int = 0                  # seed of the driven holes
    first_episode: int = 100_000   # round k drives episodes first + (k - 1) * episodes ...
    eval_episodes: int = 20        # held-out closed-loop episodes per round [episodes]
    eval_seed: int = 7             # seed of the held-out holes (never driven, never recorded)
    patience: int = 1              # stop after this many rounds without a better success
    target: float = 1.0            # stop once the held-out success reaches this [1]
    warm: bool = True              # retrain from the last checkpoint; False: from scratch
    steps: int = 2000              # optimizer steps of each round's training [steps]
    evaluate_start: bool = True    # evaluate the starting checkpoint as round 0
    workers: int = 2               # processes recording and evaluating [processes]
    camera_fps: float = 5.0        # recorded frames per view per second [Hz]

    def __post_init__(self) -> None:
        for name in ('rounds', 'episodes', 'eval_episodes', 'patience', 'steps', 'workers'):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 1, f'{name} must be >= 1, got {value!r}')
        require(isinstance(self.first_episode, int) and self.first_episode >= 0,
                f'first_episode must be >= 0, got {self.first_episode!r}')
        require(0.0 < self.target <= 1.0, f'target must be in (0, 1], got {self.target!r}')
        require_positive('camera_fps', self.camera_fps)


def stopping_reason(rows: list[dict], config: DaggerConfig) -> str | None:
    """Return why DAgger stops after the rounds in `rows`, or None to go on.

    `rows`: the rounds table so far (round 0, the start, first when it was evaluated), each
    with `held_out_success` (a rate, None when not evaluated).
    """
    done = [r for r in rows if r['round'] >= 1]
    rates = [(r['round'], r['held_out_success']) for r in rows
             if r.get('held_out_success') is not None]
    if rates and rates[-1][1] >= config.target:
        return f'held-out success {rates[-1][1]:.2f} reached the target {config.target:.2f}'
    if len(rates) > config.patience:
        best_before = max(rate for _, rate in rates[:-config.patience])
        if all(rate <= best_before for _, rate in rates[-config.patience:]):
            return (f'held-out success did not improve on {best_before:.2f} in '
                    f'{config.patience} round(s)')
    if done and done[-1]['round'] >= config.rounds:
        return f'round budget of {config.rounds} spent'
    return None


def best_round(rows: list[dict]) -> dict:
    """Return the round with the best held-out success (the later of equals; else the last)."""
    rated = [r for r in rows if r.get('held_out_success') is not None]
    if not rated:
        return rows[-1]
    best = max(r['held_out_success'] for r in rated)
    return [r for r in rated if r['held_out_success'] == best][-1]


def markdown(rows: list[dict]) -> str:
    """Return the rounds table in markdown."""
    def cell(row: dict, key: str) -> str:
        value = row.get(key)
        if key == 'outcomes':
            return ', '.join(f'{k}={v}' for k, v in sorted((value or {}).items())) or '-'
        if key in ('driven_success', 'held_out_success') and value is not None:
            total = row.get('driven' if key == 'driven_success' else 'held_out_episodes')
            return f'{value:.2f} ({round(value * total)}/{total})'
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return '-'
        return f'{value:.4g}' if isinstance(value, float) else str(value)
    lines = ['| ' + ' | '.join(TABLE_COLUMNS) + ' |', '|' + '---|' * len(TABLE_COLUMNS)]
    lines += ['| ' + ' | '.join(cell(r, c) for c in TABLE_COLUMNS) + ' |' for r in rows]
    return '\n'.join(lines) + '\n'


@dataclass
class DaggerResult:
    """What a DAgger run did."""

    rows: list[dict]               # the rounds table
    checkpoint: Path               # the best round's checkpoint
    best: dict                     # its row
    stopped: str                   # why it stopped


def run_dagger(config: DaggerConfig, start: str | Path, fit_config, *, vlm, expert, executor,
               timing=None, say: Callable[[str], None] = print) -> DaggerResult:
    """Run DAgger from the checkpoint `start`; see the module docstring.

    `fit_config`: a core.train.fit.FitConfig of the demonstrations (their bags, the cache the
    rounds' features join, the preset, targets and the TrainConfig; `steps`, `out`,
    `init_checkpoint` and `resume` are set per round). `vlm`, `expert`: the VlmConfig and
    ExpertConfig the policy runs with (the expert's checkpoint is replaced by each round's);
    `executor`: builders.ExecutorSettings of the cell; `timing`: the evaluation's
    PipelineTiming (default: async, the reference VLM). Raises what fit, the cache and the
    loop raise (ConfigError, FeatureCacheError, CheckpointError, ValueError, OSError).
    """
    from vla_insertion.core.expert.staleness import StalenessLimits
    from vla_insertion.core.orchestration.builders import SimConfiguration, SimEvaluator
    from vla_insertion.core.sim.loop import PipelineTiming
    from vla_insertion.core.train.demonstrations import (
        DemoStreams, LearnedDriver, record_parallel)
    from vla_insertion.core.train.feature_cache import build_cache
    from vla_insertion.core.train.fit import fit
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    timing = timing if timing is not None else PipelineTiming(rate_hz=expert.rate_hz)
    streams = DemoStreams(vlm.view_names, width=vlm.image_width, height=vlm.image_height,
                          camera_fps=config.camera_fps)
    limits = StalenessLimits.from_config(expert)
    evaluator = SimEvaluator()

    def evaluate(checkpoint: Path) -> dict:
        return evaluator.run(SimConfiguration(
            executor, timing, vlm, replace(expert, checkpoint=str(checkpoint)),
            seed=config.eval_seed, noise_seed=config.eval_seed), config.eval_episodes,
            workers=config.workers, on_episode=lambda m: say(
                f'[dagger]   held-out episode {m.record.index}: {m.record.reason} in '
                f'{m.record.duration_s:.1f} s'))

    def held_out(row: dict, summary: dict) -> None:
        row.update(held_out_episodes=summary['episodes'],
                   held_out_success=summary['success_rate'], outcomes=summary['outcomes'],
                   held_out={k: v for k, v in summary.items() if k != 'per_episode'})

    rows: list[dict] = []
    current = Path(start)
    if config.evaluate_start:
        t0 = time.monotonic()
        say(f'[dagger] round 0: evaluating {current} on {config.eval_episodes} held-out '
            f'holes (seed {config.eval_seed})')
        row = {'round': 0, 'checkpoint': str(current)}
        held_out(row, evaluate(current))
        row['eval_s'] = round(time.monotonic() - t0, 1)
        rows.append(row)
        _write(out, rows, config, None)
        say(markdown(rows))
    bags = list(fit_config.bags)
    stopped = stopping_reason(rows, config) if rows else None
    k = 0
    while stopped is None:
        k += 1
        folder = out / f'round_{k}'
        row = {'round': k, 'driver': str(current)}
        # 1. drive and label
        t0 = time.monotonic()
        first = config.first_episode + (k - 1) * config.episodes
        manifest = _recorded(folder / 'bags', config, first)
        if manifest is None:
            say(f'[dagger] round {k}: {current} drives {config.episodes} episodes (seed '
                f'{config.seed}, {first}..{first + config.episodes - 1}), the demonstrator '
                'labels')
            manifest = record_parallel(
                folder / 'bags', config.episodes, streams, workers=config.workers,
                first_episode=first, seed=config.seed, log_prefix=f'[dagger] round {k}: ',
                driver=LearnedDriver(
                    vlm, replace(expert, checkpoint=str(current))), executor=executor)
            (folder / 'bags' / 'episodes.json').write_text(json.dumps(
                {'seed': config.seed, 'backend': 'sim', 'recorded': config.episodes,
                 'kept': len(manifest), 'first_episode': first, 'camera_fps': config.camera_fps,
                 'driver': str(current), 'labels': 'demonstrator, learned policy driving',
                 'episodes': manifest}, indent=2))
        new = [str(folder / 'bags' / e['bag']) for e in manifest]
        row.update(driven=len(manifest),
                   driven_success=sum(e['success'] for e in manifest) / len(manifest),
                   labels=sum(e.get('labels', 0) for e in manifest),
                   jammed_ticks=sum(e.get('jammed_ticks', 0) for e in manifest),
                   record_s=round(time.monotonic() - t0, 1))
        say(f'[dagger] round {k}: the driver inserted {row["driven_success"]:.0%} of '
            f'{len(manifest)} new holes; {row["jammed_ticks"]} wedged ticks labelled')
        # 2. their features
        t0 = time.monotonic()
        build_cache(new, vlm, fit_config.cache, fit_config.vl_period_s,
                    report=lambda line: None)
        row['cache_s'] = round(time.monotonic() - t0, 1)
        # 3. retrain on everything
        t0 = time.monotonic()
        bags += new
        checkpoint = folder / 'checkpoint'
        train = replace(fit_config.train, steps=config.steps)
        result = fit(replace(fit_config, bags=tuple(bags), out=str(checkpoint), train=train,
                             init_checkpoint=str(current) if config.warm else '',
                             resume=(checkpoint / 'last').is_dir()),
                     vlm_config=vlm, limits=limits, progress_bar=False,
                     report=lambda line: say(f'[dagger]   {line}'))
        row.update(samples=result.samples, val_loss=result.train.best_val,
                   checkpoint=str(checkpoint), train_s=round(time.monotonic() - t0, 1))
        # 4. held-out evaluation
        t0 = time.monotonic()
        held_out(row, evaluate(checkpoint))
        row['eval_s'] = round(time.monotonic() - t0, 1)
        rows.append(row)
        current = checkpoint
        stopped = stopping_reason(rows, config)
        _write(out, rows, config, stopped)
        say(markdown(rows))
    best = best_round(rows)
    say(f'[dagger] stopped: {stopped}; best: round {best["round"]} ({best["checkpoint"]}), '
        f'held-out success {best.get("held_out_success")}')
    return DaggerResult(rows, Path(best['checkpoint']), best, stopped)


def _recorded(folder: Path, config: DaggerConfig, first: int) -> list[dict] | None:
    """Return the manifest of a round already recorded as `config` says, else None."""
    try:
        done = json.loads((folder / 'episodes.json').read_text())
    except (OSError, ValueError):
        return None
    if (done.get('first_episode') != first or done.get('recorded') != config.episodes
            or done.get('seed') != config.seed
            or not all((folder / e['bag']).is_dir() for e in done['episodes'])):
        return None
    return done['episodes']


def _write(out: Path, rows: list[dict], config: DaggerConfig, stopped: str | None) -> None:
    (out / ROUNDS_FILE).write_text(json.dumps(
        {'config': asdict(config), 'stopped': stopped, 'rounds': rows}, indent=2,
        default=float))
    (out / 'rounds.md').write_text(markdown(rows))
