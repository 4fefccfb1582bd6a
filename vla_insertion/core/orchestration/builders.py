"""Builders from the params file and the configs to the running pieces: one home each.

    executor_settings(params_file)   the chunk_executor section -> ExecutorSettings -> .build()
    build_policy(vlm, expert, delay) the VLM and the expert runner, feature-age limit widened
    learned_loop(cell, ...)          the learned policy driving the sim cell (core/sim/loop.py)
    SimEvaluator().run(config, n)    one configuration on the sim cell, n episodes, summarised

Every tool and core/train/demonstrations.py build these here, so that one params file gives
the same executor (its joint limits included) and the same staleness rules wherever the policy
runs: recorded demonstrations, closed-loop evaluation, replays and the real nodes.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from vla_insertion.core.config import (
    ExecutorConfig, ExpertConfig, require, require_one_of, VlmConfig)
from vla_insertion.core.evaluation.summary import summarize_episodes
from vla_insertion.core.executor import ChunkExecutor
from vla_insertion.core.executor.limits import limits_from_params, LimitsTable
from vla_insertion.core.expert.staleness import StalenessLimits
from vla_insertion.core.params import load_config, node_params
from vla_insertion.core.sim.cell import CellParams, SimCell
from vla_insertion.core.sim.loop import (
    EpisodeMetrics, PipelineLoop, PipelineTiming, SENSOR_INPUTS)
from vla_insertion.core.sim.reference import ReferencePolicy

if TYPE_CHECKING:                      # torch is imported where a learned policy is built
    from vla_insertion.core.expert.runner import ExpertRunner

EXECUTOR_NODE = 'chunk_executor'


# --- the executor -------------------------------------------------------------------------

@dataclass(frozen=True)
class ExecutorSettings:
    """What a ChunkExecutor is built from: the node's config and its joint limits.

    Frozen and picklable, so that worker processes build the same executor.
    """

    config: ExecutorConfig
    limits: LimitsTable                # ros2_control joint_limits: the 6 joints, the gripper

    def with_config(self, **changes) -> ExecutorSettings:
        """Return these settings with config fields replaced (validated again)."""
        return replace(self, config=replace(self.config, **changes))

    def build(self) -> ChunkExecutor:
        return ChunkExecutor(self.config, self.limits)


# The executor of every run on the simulated cell, in-process or as programs: armed at its
# first chunk, as an operator would arm it, and allowed to arm on the tiny VLM's random-weight
# features (no real VLM weights exist where the sim runs; an untrained expert is still never
# armed). The sim's params only: a real cell's come from its params file alone.
SIM_EXECUTOR = {'start_armed': True, 'allow_untrained_vlm': True}


def executor_settings(params_file: str | Path | None, *, namespace: str = '',
                      overrides: dict | None = None) -> ExecutorSettings:
    """Return the chunk_executor node's config and joint limits from a params file.

    The same reading the node makes of the same file: the ExecutorConfig fields, and the
    `joint_limits.<joint>.<key>` entries over the built-in limits key by key, so that a cell
    with tighter limits has them offline too. `overrides` replace config fields (None entries
    are left out: an unset flag). No params file: the defaults. Raises ConfigError naming the
    parameter.
    """
    config = load_config(ExecutorConfig, EXECUTOR_NODE, params_file, namespace=namespace,
                         overrides=overrides)
    given = node_params(params_file, EXECUTOR_NODE, namespace) if params_file else {}
    # limits_from_params reads the joint_limits entries and leaves the config fields alone
    limits = limits_from_params({name: value for name, (value, _) in given.items()},
                                config.joint_names)
    return ExecutorSettings(config, limits)


# --- the learned policy -------------------------------------------------------------------

def widened_feature_age_s(expert: ExpertConfig, added_vlm_delay_s: float) -> float:
    """Return the expert's feature-age limit for a VLM slower by `added_vlm_delay_s` [s].

    An added delay stands in for a heavier VLM, whose features are that much older at use:
    the limit moves with it, as it would be configured for such a model, instead of refusing
    every tick. The same in the sim, on recordings and on the real nodes.
    """
    return expert.max_feature_age_s + added_vlm_delay_s


def staleness_limits(expert: ExpertConfig, added_vlm_delay_s: float = 0.0) -> StalenessLimits:
    """Return the expert's staleness rules with the feature-age limit widened by the delay."""
    return replace(StalenessLimits.from_config(expert),
                   max_feature_age_s=widened_feature_age_s(expert, added_vlm_delay_s))


@dataclass
class LearnedPolicy:
    """The learned policy's two halves, as the vlm_node and the action_expert run them."""

    vlm: object                        # infer(VlmObservation) -> VLFeatureData, reset()
    runner: ExpertRunner               # the expert behind the staleness rules


def build_runner(expert: ExpertConfig, added_vlm_delay_s: float = 0.0, *,
                 seed: int = 0) -> ExpertRunner:
    """Return the runner of `expert.checkpoint` for a tool (core.expert.live.load_runner).

    `seed` seeds a flow head's noise; the feature-age limit is widened by the added delay.
    """
    from vla_insertion.core.expert.live import load_runner
    return load_runner(replace(expert, seed=seed), staleness_limits(expert, added_vlm_delay_s),
                       live=False)


def build_policy(vlm_cfg: VlmConfig, expert_cfg: ExpertConfig, added_vlm_delay_s: float = 0.0,
                 *, vlm=None, seed: int = 0) -> LearnedPolicy:
    """Return the VLM of `vlm_cfg` (or `vlm`, already built) and the runner of `expert_cfg`.

    `added_vlm_delay_s`: how much slower than `expert_cfg` was set for the features arrive
    (the VLM's artificial delay, or the modelled one in the sim); the runner's feature-age
    limit moves with it. Torch is seeded with `seed` first, so that every tool builds the
    same models for a seed.
    """
    import torch
    torch.manual_seed(seed)
    if vlm is None:
        from vla_insertion.core.vlm.extractor import build_vlm
        vlm = build_vlm(vlm_cfg, download=False)
    return LearnedPolicy(vlm, build_runner(expert_cfg, added_vlm_delay_s, seed=seed))


def learned_loop(cell: SimCell, executor: ChunkExecutor, timing: PipelineTiming,
                 checkpoint: str | Path, vlm_cfg: VlmConfig, expert_cfg: ExpertConfig, *,
                 vlm=None, seed: int = 0, **kwargs) -> PipelineLoop:
    """Return the loop of the learned policy driving `cell` (the tools' one builder of it).

    The policy of build_policy on `checkpoint` (in place of expert_cfg's) with the feature-age
    limit widened by the timing's added VLM delay, and the renderer of `vlm_cfg`'s views.
    `vlm`: one already built (one per process). `kwargs`: PipelineLoop's.
    """
    from vla_insertion.core.sim.render import SceneRenderer
    policy = build_policy(vlm_cfg, replace(expert_cfg, checkpoint=str(checkpoint)),
                          timing.vlm_delay_s, vlm=vlm, seed=seed)
    renderer = SceneRenderer(vlm_cfg.view_names, vlm_cfg.image_width, vlm_cfg.image_height)
    return PipelineLoop(cell, executor, timing, vlm=policy.vlm, runner=policy.runner,
                        renderer=renderer, views=vlm_cfg.view_names, seed=seed, **kwargs)


# --- a configuration on the simulated cell ------------------------------------------------

@dataclass(frozen=True)
class SimConfiguration:
    """One configuration of the policy on the simulated cell, run in-process."""

    executor: ExecutorSettings         # the cell's executor (armed at each episode's start)
    timing: PipelineTiming             # schedule, expert rate, modelled VLM latency and delay
    vlm: VlmConfig | None = None       # the learned policy: its VLM and its expert (with the
    expert: ExpertConfig | None = None  # checkpoint); both None: the scripted demonstrator
    seed: int = 0                      # seed of the episodes' hole positions
    first_episode: int = 0             # index of the first episode (another range, same seed)
    noise_seed: int = 0                # sensor noise, a flow head's noise, torch
    sensor_input: str = 'recorded'     # the learned policy's sensor window: or 'zeroed'

    def __post_init__(self) -> None:
        require((self.vlm is None) == (self.expert is None),
                'give the vlm and the expert config (the learned policy) or neither (the '
                f'reference), got vlm {self.vlm is not None}, expert {self.expert is not None}')
        require_one_of('sensor_input', self.sensor_input, SENSOR_INPUTS)

    @property
    def learned(self) -> bool:
        return self.expert is not None


class SimEvaluator:
    """Run configurations on the simulated cell in-process; summarise each one's episodes.

    The VLM is slow to build and the same in every configuration (an added delay is the
    timing's, not the model's): it is built at the first learned run and kept for the next
    ones with the same VLM config, whatever their checkpoint.
    """

    def __init__(self) -> None:
        self._vlm: tuple[VlmConfig, object] | None = None     # (its config, the model)

    def loop(self, config: SimConfiguration) -> PipelineLoop:
        """Return the loop of one configuration: a fresh cell, executor and runner."""
        cell = SimCell(CellParams(), seed=config.seed, first_episode=config.first_episode)
        executor = config.executor.build()
        if not config.learned:
            return PipelineLoop(cell, executor, config.timing, reference=ReferencePolicy(),
                                seed=config.noise_seed)
        shared = self._vlm[1] if self._vlm is not None and self._vlm[0] == config.vlm else None
        loop = learned_loop(cell, executor, config.timing, config.expert.checkpoint,
                            config.vlm, config.expert, vlm=shared, seed=config.noise_seed,
                            sensor_input=config.sensor_input)
        self._vlm = (config.vlm, loop.vlm)
        return loop

    def run(self, config: SimConfiguration, episodes: int,
            on_episode: Callable[[EpisodeMetrics], None] | None = None,
            workers: int = 1) -> dict:
        """Run `episodes` episodes of `config`; return summarize_episodes() of them.

        `workers` > 1: disjoint ranges of the episodes in that many spawned processes (each
        builds its own VLM); the same episodes as one process runs, since every episode is
        seeded by its index (PipelineLoop._begin). `on_episode` then sees each range's
        episodes when the range is done.
        """
        return summarize_episodes(self.episodes(config, episodes, on_episode, workers))

    def episodes(self, config: SimConfiguration, episodes: int,
                 on_episode: Callable[[EpisodeMetrics], None] | None = None,
                 workers: int = 1) -> list[EpisodeMetrics]:
        """Run `episodes` episodes of `config`; return each one's metrics, in order."""
        workers = max(1, min(workers, episodes))
        if workers == 1:
            return self.loop(config).run_episodes(episodes, on_episode=on_episode)
        import multiprocessing
        from concurrent.futures import as_completed, ProcessPoolExecutor
        bounds = [episodes * k // workers for k in range(workers + 1)]
        jobs = [(replace(config, first_episode=config.first_episode + lo), hi - lo)
                for lo, hi in zip(bounds, bounds[1:])]
        out: list[EpisodeMetrics] = []
        with ProcessPoolExecutor(workers,
                                 mp_context=multiprocessing.get_context('spawn')) as pool:
            for done in as_completed([pool.submit(_run_range, job) for job in jobs]):
                part = done.result()
                out += part
                for metrics in part if on_episode is not None else ():
                    on_episode(metrics)
        return sorted(out, key=lambda m: m.record.index)


def _run_range(job: tuple[SimConfiguration, int]) -> list[EpisodeMetrics]:
    """One worker process of SimEvaluator.episodes: `count` episodes of a configuration."""
    import torch
    torch.set_num_threads(1)                 # the workers share the cores
    config, count = job
    return SimEvaluator().loop(config).run_episodes(count)
