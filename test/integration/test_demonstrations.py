"""Demonstrations recorded through the whole ROS pipeline, one bag per episode.

reference_policy -> chunk_executor (armed) -> command_v1 -> sim_cell, recorded by bag_recorder.
Real processes on free loopback ports, in real time (about 40 s). The demonstrator's success
depends on how busy the machine is (CPU starvation makes the executor hold), so the test keeps
failed episodes too and checks the command path and the recording, not the success rate
(docs/benchmarks.md measures that on a quiet machine).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vla_insertion.core import bag, topics
from vla_insertion.core.bag.recording import load_recording, RecordedInputs
from vla_insertion.core.orchestration.cell_run import diagnostics_summary
from vla_insertion.tools import record_demonstrations

ROOT = Path(__file__).resolve().parents[2]


def test_one_demonstration_episode_recorded_through_the_executor(
        tmp_path, ros_env, monkeypatch):
    for key, value in ros_env.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / 'demos'
    code = record_demonstrations.main(['--episodes', '1', '--seed', '5', '--keep-failures',
                                       '--keep-recording', '--params-file',
                                       str(ROOT / 'config' / 'vla_insertion.yaml'),
                                       '-o', str(out)])
    assert code == 0
    manifest = json.loads((out / 'episodes.json').read_text())
    assert manifest['recorded'] == 1 and len(manifest['episodes']) == 1
    episode = manifest['episodes'][0]
    assert episode['seed'] == 5
    assert episode['reason'] in ('success', 'timeout', 'over_force', 'dropped')
    path = out / episode['bag']
    info = bag.bag_info(path)
    recorded = {topics.find(t) for t in info.topics}
    assert {topics.CAMERAS, topics.JOINT_STATES, topics.POSE, topics.SENSOR_WINDOW,
            topics.ACTION_CHUNK, topics.COMMAND} <= recorded
    assert abs(info.duration_s - episode['duration_s']) < 1.0
    # the arm moved in the episode, commanded by the armed executor
    rec = load_recording(path, views=())
    q = rec.trajectory.positions
    # (how far, the load decides: on a loaded host late states stop it, and every stop waits
    # for the run's operator to arm again; 0.01 rad is far above the 1e-4 rad of a still arm)
    assert np.abs(q - q[0]).max() > 0.01
    assert RecordedInputs(rec).robot(rec.start_s + 0.5).gripper > 0.5     # holding the peg
    sent = [m for _t, _n, m in bag.read_messages(path, [topics.COMMAND.name]) if m.sent]
    # armed, or the HOLD of a stop (a stop disarms; the run's operator arms again): how many
    # of each, the load decides, not the code
    assert sent and any(m.armed for m in sent) and all(m.armed or m.hold for m in sent)
    summary = diagnostics_summary(out / 'recording' / 'bag')
    assert summary['chunk_delay_s_mean'] is not None and summary['chunk_delay_s_mean'] < 1.0
