"""The scripted demonstrator served over each protocol drives the sim cell through policy_client.

serve_policy (openpi websocket or GR00T ZMQ) -> policy_client -> chunk_executor (armed) ->
command_v1 -> sim_cell, as real processes on free loopback ports (CellRun.simulated, as
`closed_loop --backend ros --policy openpi|gr00t` runs them). The arm moves and an episode is
decided; then the server is stopped: policy_client refuses (server_unreachable) and the
executor's watchdog holds the arm (counted even while a fault the episode latched holds it).
Whether episodes succeed depends on how busy the machine is
(CPU starvation makes the executor hold), so the test checks the path, not the success rate
(docs/benchmarks.md reports that).
"""
from __future__ import annotations

import time

import pytest

from vla_insertion.core import bag, topics
from vla_insertion.core.orchestration.cell_run import CellRun
from vla_insertion.ros.executor_operator import ExecutorOperator

pytestmark = pytest.mark.slow


def stamp(msg) -> float:
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9


@pytest.mark.parametrize('protocol', ['openpi', 'gr00t'])
def test_served_reference_drives_the_cell_and_a_dead_server_holds_the_arm(
        protocol, tmp_path, ros_env, monkeypatch):
    out = tmp_path / protocol
    for name in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE', 'ROS_LOCALHOST_ONLY'):
        if name in ros_env:              # the operator's node joins the run's domain
            monkeypatch.setenv(name, ros_env[name])
    # the sim's operator, as closed_loop --backend ros has it: every stop disarms (a late robot
    # state under load), and without it nothing moved again
    with ExecutorOperator() as operator, CellRun.simulated(
            out, policy=protocol, merge='prefix' if protocol == 'gr00t' else '', env=ros_env,
            operator=operator, recorder_topics=(
                topics.COMMAND.name, topics.ACTION_CHUNK.name,
                topics.DIAGNOSTICS.name)) as run:
        assert run.wait_ready(180.0), 'the arm never moved'
        assert run.wait_episodes(1), 'no episode was decided'
        server = run.process('serve_policy')
        executor_log = out / 'logs' / 'chunk_executor.log'
        client_log = out / 'logs' / 'policy_client.log'
        seen = len(executor_log.read_bytes()), len(client_log.read_bytes())
        killed_at = time.time()
        server.popen.terminate()
        assert run.wait_for(lambda: b'server_unreachable' in client_log.read_bytes()[seen[1]:],
                            60.0, ignore=(server,)), 'policy_client did not refuse'
        # two of the executor's 5 s status lines: what it commanded since is in the bag
        assert run.wait_for(lambda: executor_log.read_bytes()[seen[0]:].count(b'Commands:') >= 2,
                            60.0, ignore=(server,))
    chunks = [m for _t, _n, m in bag.read_messages(run.bag_path, [topics.ACTION_CHUNK.name])]
    assert len(chunks) > 20 and not any(m.untrained for m in chunks)
    assert all(stamp(m) < killed_at for m in chunks), 'a chunk came from a dead server'
    commands = [m for _t, _n, m in bag.read_messages(run.bag_path, [topics.COMMAND.name])]
    before = [m for m in commands if stamp(m) < killed_at]
    assert any(m.sent and not m.hold and m.chunk_sequence > 0 for m in before)
    after = [m for m in commands if stamp(m) > killed_at + 1.0]
    assert after and all(m.hold for m in after[-10:])
    assert any('watchdog' in m.interventions for m in after)
    diagnostics = [s for _t, _n, m in bag.read_messages(run.bag_path, [topics.DIAGNOSTICS.name])
                   for s in m.status if s.name == 'policy_client']
    newest = {kv.key: kv.value for kv in diagnostics[-1].values}
    assert newest['protocol'] == protocol and int(newest['drops.server_unreachable']) >= 1
    assert newest['untrained'] == 'False'
