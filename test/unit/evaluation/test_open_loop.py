"""Open-loop evaluation on a recorded session with known answers.

The recorded arm holds a known pose; the expert is a real checkpoint whose action head was set
to output its action mean (a known constant), so every error is known in advance. A gap in the
sensor stream makes the runner refuse exactly the ticks the robot would refuse.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vla_insertion.core.bag.recording import load_recording, RecordedInputs, tick_times
from vla_insertion.core.config import VlmConfig
from vla_insertion.core.evaluation.open_loop import recorded_chunks, run_open_loop, score
from vla_insertion.core.expert.checkpoint import CheckpointMeta, save_checkpoint
from vla_insertion.core.expert.model import ActionExpert
from vla_insertion.core.expert.policy import ExpertPolicy
from vla_insertion.core.expert.presets import model_config
from vla_insertion.core.expert.runner import ExpertRunner
from vla_insertion.core.expert.staleness import StalenessLimits
from vla_insertion.core.vlm import feature_contract_for

VIEWS = ('zed_1', 'oak')
POSE = 0.05 * np.arange(6)                   # the recorded joints [rad], held
ACTION = np.r_[np.full(6, 0.1), 0.5]         # what the expert always says
GAP = (1.0, 1.5)                             # no sensor window in between [s]


@pytest.fixture(scope='module')
def vlm_config(tiny_vlm_dir) -> VlmConfig:
    return VlmConfig(model=str(tiny_vlm_dir), view_names=VIEWS, image_width=112,
                     image_height=56, torch_threads=1, warmup_runs=0)


@pytest.fixture(scope='module')
def constant_expert(vlm_config, tmp_path_factory):
    """Write a real checkpoint whose head outputs 0 (normalised): the action mean, ACTION.

    Absolute frame: in the delta frame the mean would be added to the measured joints.
    """
    contract = feature_contract_for(vlm_config)
    torch.manual_seed(0)
    model = ActionExpert(model_config('small', contract, action_frame='absolute'))
    torch.nn.init.zeros_(model.head.out.weight)
    torch.nn.init.zeros_(model.head.out.bias)
    model.set_normalization({'action_mean': ACTION})
    return save_checkpoint(tmp_path_factory.mktemp('expert') / 'constant', model,
                           CheckpointMeta(model=model.cfg, contract=contract, untrained=True))


@pytest.fixture(scope='module')
def recording(tmp_path_factory, cell_bag_writer):
    path = tmp_path_factory.mktemp('bags') / 'held'
    cell_bag_writer(path, 3.0, VIEWS, joints=lambda t: POSE, gripper=lambda t: 0.7,
                    sensor_gap=GAP)
    return load_recording(path, views=VIEWS)


def test_open_loop_refuses_the_sensor_gap_and_scores_known_errors(
        vlm_config, constant_expert, recording):
    from vla_insertion.core.vlm.extractor import build_vlm
    runner = ExpertRunner(ExpertPolicy(constant_expert), StalenessLimits())
    result = run_open_loop(recording, build_vlm(vlm_config, download=False), runner, VIEWS,
                           progress=False)

    # the ticks the robot would refuse: newest window older than max_sensor_age_s (0.1 s)
    inputs = RecordedInputs(recording, VIEWS)
    ticks = tick_times(inputs)
    window_age = np.array([t - inputs.window(t).stamp_s for t in ticks])
    expected_refused = int((window_age > 0.1).sum())
    assert expected_refused >= 3
    assert result.refused == {'sensor_too_old': expected_refused}
    assert result.ticks == len(ticks) and len(result.chunks) == len(ticks) - expected_refused
    published = ticks[window_age <= 0.1]
    np.testing.assert_allclose([c.stamp_s for c in result.chunks], published)
    for chunk in result.chunks:
        np.testing.assert_allclose(chunk.actions, np.tile(ACTION, (8, 1)), atol=1e-6)

    metrics = score(recording, result)
    for j, entry in enumerate(metrics['executed']['per_joint'].values()):
        assert entry['mae_rad'] == pytest.approx(abs(0.1 - POSE[j]), abs=1e-6)
        assert entry['rmse_rad'] == pytest.approx(abs(0.1 - POSE[j]), abs=1e-6)
    assert metrics['all_steps']['mae_rad'] == pytest.approx(np.abs(0.1 - POSE).mean(), abs=1e-6)
    assert metrics['run']['refused'] == {'sensor_too_old': expected_refused}


def test_recorded_gripper_and_missing_chunks(recording):
    inputs = RecordedInputs(recording, VIEWS)
    assert inputs.robot(recording.start_s + 1.0).gripper == pytest.approx(0.7)
    np.testing.assert_allclose(inputs.robot(recording.start_s + 1.0).joint_positions_rad, POSE)
    with pytest.raises(Exception, match='no vla/action_chunk'):
        recorded_chunks(recording)
