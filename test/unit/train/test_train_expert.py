"""train_expert on a small recorded session with known answers.

The recorded arm holds a known pose with the gripper at 0.7, and a sensor gap makes some ticks
ones the robot would refuse. The tool must take exactly the other ticks as samples, with the
recorded gripper as target, and the trained checkpoint must then say what the robot did.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from vla_insertion.core.bag.recording import load_recording, RecordedInputs, tick_times
from vla_insertion.core.config import VlmConfig
from vla_insertion.core.evaluation.open_loop import run_open_loop
from vla_insertion.core.expert.policy import ExpertPolicy
from vla_insertion.core.expert.runner import ExpertRunner
from vla_insertion.core.expert.staleness import StalenessLimits
from vla_insertion.tools import train_expert

VIEWS = ('zed_1', 'oak')
POSE = 0.05 * np.arange(6)
GRIPPER = 0.7
HORIZON, DT = 8, 0.1


@pytest.fixture(scope='module')
def session(tmp_path_factory, cell_bag_writer, tiny_vlm_dir):
    folder = tmp_path_factory.mktemp('train')
    cell_bag_writer(folder / 'bag', 3.0, VIEWS, joints=lambda t: POSE,
                    gripper=lambda t: GRIPPER, sensor_gap=(1.0, 1.5))
    params = folder / 'params.yaml'
    params.write_text(f'/**/vlm_node:\n  ros__parameters:\n    model: {tiny_vlm_dir}\n'
                      f'    view_names: [{", ".join(VIEWS)}]\n    image_width: 112\n'
                      '    image_height: 56\n    torch_threads: 1\n')
    return folder, params, tiny_vlm_dir


def test_samples_targets_and_a_checkpoint_that_learned_them(session, capsys):
    folder, params, tiny_vlm = session
    out = folder / 'trained'
    assert train_expert.main([str(folder / 'bag'), '--params-file', str(params), '--preset',
                              'small', '--steps', '300', '--lr', '3e-3', '--batch-size', '16',
                              '--out', str(out), '--no-progress']) == 0
    printed = capsys.readouterr().out
    rec = load_recording(folder / 'bag', views=VIEWS)
    inputs = RecordedInputs(rec, VIEWS)
    ticks = tick_times(inputs)
    # a sample per tick whose chunk lies in the recording and that the robot would not refuse
    complete = ticks[ticks + (HORIZON - 1) * DT <= rec.end_s + 1e-9]
    refused = sum(t - inputs.window(t).stamp_s > 0.1 for t in complete)
    assert refused >= 3 and 'sensor_too_old' in printed
    meta = json.loads((out / 'config.json').read_text())
    assert meta['untrained'] is False
    assert meta['extra']['samples'] == len(complete) - refused
    assert meta['extra']['final_loss'] < meta['extra']['start_loss']

    vlm_cfg = VlmConfig(model=str(tiny_vlm), view_names=VIEWS, image_width=112,
                        image_height=56, torch_threads=1)
    from vla_insertion.core.vlm.extractor import build_vlm
    result = run_open_loop(rec, build_vlm(vlm_cfg, download=False),
                           ExpertRunner(ExpertPolicy(out), StalenessLimits()), VIEWS,
                           progress=False)
    actions = np.stack([c.actions for c in result.chunks])         # (N, H, 7)
    np.testing.assert_allclose(actions[..., :6], np.broadcast_to(POSE, actions[..., :6].shape),
                               atol=0.02)
    np.testing.assert_allclose(actions[..., 6], GRIPPER, atol=0.02)
