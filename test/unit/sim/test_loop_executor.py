"""The scripted reference policy inserts through the real chunk executor in the closed loop.

sim cell (servo, contact, episodes) <- ChunkExecutor (merge, limiter, gate) <- chunks of the
reference demonstrator (core/sim/loop.py's PipelineLoop), 100 ms from observation to chunk and
5 ms of command delay.
"""
import numpy as np
import pytest

from vla_insertion.core.config import ExecutorConfig
from vla_insertion.core.executor import ChunkExecutor
from vla_insertion.core.sim.cell import CellParams, SimCell
from vla_insertion.core.sim.episode import EpisodeParams, SUCCESS
from vla_insertion.core.sim.geometry import INSERT_DEPTH_M
from vla_insertion.core.sim.loop import PipelineLoop, PipelineTiming
from vla_insertion.core.sim.reference import ReferencePolicy

pytestmark = pytest.mark.slow         # sim episodes
TIMING = PipelineTiming(expert_latency_s=0.1, transport_s=0.0, command_delay_s=0.005)


def run(merge: str, episodes: int, seed: int = 11):
    executor = ChunkExecutor(ExecutorConfig(start_armed=True, merge=merge))
    loop = PipelineLoop(SimCell(CellParams(), seed=seed), executor, TIMING,
                        reference=ReferencePolicy(), seed=3)
    return [m.record for m in loop.run_episodes(episodes)], executor


def test_reference_through_the_executor_succeeds_in_at_least_95_percent_of_20_episodes():
    records, executor = run('blend', 20)
    assert len(records) == 20 and len({r.hole_top_m for r in records}) == 20   # randomised
    successes = [r for r in records if r.success]
    assert len(successes) >= 19, [(r.index, r.reason) for r in records]
    limit = EpisodeParams().max_contact_force_n
    for r in successes:
        assert r.reason == SUCCESS and r.max_depth_m >= INSERT_DEPTH_M - 0.001
        assert 0.0 < r.mean_force_n <= r.peak_force_n <= limit
        assert 2.0 < r.time_to_insert_s < EpisodeParams().timeout_s
    # the loop resets the executor as each episode starts; the new one is re-armed
    assert executor.stats()['fault'] == ''


@pytest.mark.parametrize('merge', ['latest', 'temporal_ensemble', 'prefix'])
def test_every_merge_strategy_inserts(merge):
    records, executor = run(merge, 3, seed=5)
    assert [r.reason for r in records] == [SUCCESS] * 3
    assert np.isfinite(executor.stats()['jerk.rms'])
