"""The scripted reference policy inserts through the real chunk executor in the closed loop.

sim cell (servo, contact, episodes) <- ChunkExecutor (merge, limiter, gate) <- chunks of the
reference demonstrator, with 50-150 ms from observation to chunk and 5 ms of command delay.
"""
import numpy as np
import pytest

from vla_insertion.core.config import ExecutorConfig
from vla_insertion.core.executor import ChunkExecutor
from vla_insertion.core.sim.cell import CellParams, SimCell
from vla_insertion.core.sim.closed_loop import ClosedLoop, LoopParams
from vla_insertion.core.sim.episode import EpisodeParams, SUCCESS
from vla_insertion.core.sim.reference import ReferencePolicy

LOOP = LoopParams(latency_s=0.1, latency_jitter_s=0.05, command_delay_s=0.005, seed=3)


def run(merge: str, episodes: int, seed: int = 11):
    executor = ChunkExecutor(ExecutorConfig(start_armed=True, merge=merge))
    loop = ClosedLoop(SimCell(CellParams(), seed=seed), ReferencePolicy(), executor, LOOP)
    return loop.run_episodes(episodes), executor


def test_reference_through_the_executor_succeeds_in_at_least_95_percent_of_20_episodes():
    records, executor = run('blend', 20)
    assert len(records) == 20 and len({r.hole_top_m for r in records}) == 20
    successes = [r for r in records if r.success]
    assert len(successes) >= 19, [(r.index, r.reason) for r in records]
    assert all(r.reason == SUCCESS and r.peak_force_n <= EpisodeParams().max_contact_force_n
               for r in successes)
    # the loop resets the executor as each episode starts; the new one is re-armed
    assert executor.stats()['fault'] == ''


@pytest.mark.parametrize('merge', ['latest', 'temporal_ensemble', 'prefix'])
def test_every_merge_strategy_inserts(merge):
    records, executor = run(merge, 3, seed=5)
    assert [r.reason for r in records] == [SUCCESS] * 3
    assert np.isfinite(executor.stats()['jerk.rms'])
