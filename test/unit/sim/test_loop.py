"""The whole policy in closed loop on simulated time (core/sim/loop.py).

The reference demonstrator through the real executor inserts in both schedules; the learned
pipeline (the tiny VLM, a real untrained expert, the executor) runs, counts what it refuses and
reports every metric; a slow VLM starves the sync schedule of chunks but not the async one.
"""
import dataclasses

import numpy as np
import pytest
import torch

from vla_insertion.core.config import ConfigError, ExecutorConfig, ExpertConfig, VlmConfig
from vla_insertion.core.evaluation.summary import summarize_episodes
from vla_insertion.core.executor import ChunkExecutor
from vla_insertion.core.expert.presets import make_untrained_checkpoint
from vla_insertion.core.orchestration.builders import learned_loop
from vla_insertion.core.sim.cell import CellParams, SimCell
from vla_insertion.core.sim.episode import EpisodeParams
from vla_insertion.core.sim.loop import PipelineLoop, PipelineTiming
from vla_insertion.core.sim.reference import ReferencePolicy
from vla_insertion.core.vlm import feature_contract_for

VIEWS = ('zed_1', 'oak')


def executor():
    return ChunkExecutor(ExecutorConfig(start_armed=True))


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['async', 'sync'])
def test_the_reference_inserts_through_the_executor_in_both_schedules(mode):
    loop = PipelineLoop(SimCell(CellParams(), seed=21), executor(), PipelineTiming(mode=mode),
                        reference=ReferencePolicy())
    summary = summarize_episodes(loop.run_episodes(2))
    assert summary['successes'] == 2, summary['outcomes']
    assert summary['starved'] == 0 and summary['jerk_rms_mean'] > 0
    assert 0.0 < summary['chunk_delay_s_mean'] < 0.05


class _PressBesideTheHole:
    """A policy that pushes the peg into the block top 2 cm beside the hole: over-force."""

    def __init__(self) -> None:
        self.reference = ReferencePolicy()

    def reset(self) -> None:
        self.reference.reset()

    def infer(self, obs):
        return self.reference.infer(dataclasses.replace(
            obs, hole_top_m=obs.hole_top_m + np.array([0.02, 0.0, -0.02])))


@pytest.mark.slow
def test_an_over_force_end_does_not_trip_the_next_episode():
    # the first episode ends pressed into the block; the cell then puts the arm at the next
    # start, and the next window must not carry the old contact force into the new episode
    loop = PipelineLoop(SimCell(CellParams(), seed=21), executor(), PipelineTiming(),
                        reference=_PressBesideTheHole())
    first = loop.run_episode()
    assert first.record.reason in ('over_force', 'timeout') and first.record.peak_force_n > 30
    loop.reference = ReferencePolicy()
    second = loop.run_episode()
    assert second.record.success, second.record.reason
    assert second.executor['faults_latched'] == 0


@pytest.fixture(scope='module')
def learned(tiny_vlm_dir, tmp_path_factory):
    config = VlmConfig(model=str(tiny_vlm_dir), view_names=VIEWS, image_width=112,
                       image_height=56, torch_threads=1, warmup_runs=0)
    from vla_insertion.core.vlm.extractor import build_vlm
    checkpoint = make_untrained_checkpoint(tmp_path_factory.mktemp('e') / 'c',
                                           feature_contract_for(config), preset='small')
    return config, build_vlm(config, download=False), checkpoint


def learned_pipeline(learned, mode: str, vlm_latency_s: float, timeout_s: float = 3.0):
    config, vlm, checkpoint = learned
    torch.manual_seed(0)
    cell = SimCell(dataclasses.replace(CellParams(), episode=EpisodeParams(timeout_s=timeout_s)),
                   seed=3)
    return learned_loop(cell, executor(), PipelineTiming(mode=mode, vlm_latency_s=vlm_latency_s),
                        str(checkpoint), config,
                        ExpertConfig(checkpoint=str(checkpoint), max_feature_age_s=2.0), vlm=vlm)


def test_the_learned_pipeline_runs_and_reports(learned):
    metrics = learned_pipeline(learned, 'async', 0.4).run_episode()
    row = metrics.as_dict()
    assert row['reason'] in ('success', 'timeout', 'over_force', 'dropped')
    assert metrics.vl_updates >= 2 and metrics.chunks > 0
    # the first ticks have no features yet: the runner refuses them as the node would
    assert metrics.refused.get('no_features', 0) >= 3
    ages = np.array(metrics.feature_age_s)
    assert ages.min() >= 0.4 - 1e-9 and ages.max() <= 2.0       # latency .. latency + reuse
    # an untrained expert is previewed, never armed (start_armed or not): nothing was sent
    assert metrics.executor['untrained'] == 'untrained_expert' and not metrics.executor['armed']
    assert metrics.executor['stops.untrained_expert'] == 0 and np.isnan(row['jerk_rms'])


def test_a_slow_vlm_starves_sync_of_chunks_but_not_async(learned):
    sync = learned_pipeline(learned, 'sync', 0.8).run_episode()
    asyn = learned_pipeline(learned, 'async', 0.8).run_episode()
    duration = asyn.record.duration_s
    # sync: one chunk per VLM call (~0.8 s + a tick); async: one per 0.1 s tick once started
    assert sync.chunks <= duration / 0.8 + 1
    assert asyn.chunks >= 2 * sync.chunks
    assert sync.chunks + sum(sync.refused.values()) <= sync.vl_updates <= sync.chunks + \
        sum(sync.refused.values()) + 1                      # the last may still be running


def test_timing_is_validated():
    with pytest.raises(ConfigError):
        PipelineTiming(mode='batch')
    with pytest.raises(ConfigError):
        PipelineTiming(vlm_latency_s=-0.1)
