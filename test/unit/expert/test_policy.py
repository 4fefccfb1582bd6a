"""The policy around a checkpoint: the gripper command stays within 0 (open) .. 1 (closed)."""
import numpy as np
import pytest
import torch

from vla_insertion.core.expert.checkpoint import CheckpointMeta, save_checkpoint
from vla_insertion.core.expert.model import ActionExpert
from vla_insertion.core.expert.policy import ExpertPolicy
from vla_insertion.core.expert.presets import model_config
from vla_insertion.core.feature_contract import FeatureContract

CONTRACT = FeatureContract(model_id='test', reduction='r', num_tokens=6, feature_dim=32,
                           image_width=64, image_height=36, view_names=('a',), prompt='p')


@pytest.mark.parametrize('gripper, expected', [(1.02, 1.0), (-0.03, 0.0), (0.4, 0.4)])
def test_the_gripper_command_is_clipped_to_its_range(tmp_path, gripper, expected,
                                                     expert_observation):
    # a head that outputs 0 (normalised) says the action mean; joints stay untouched
    torch.manual_seed(0)
    model = ActionExpert(model_config('small', CONTRACT, action_frame='absolute'))
    torch.nn.init.zeros_(model.head.out.weight)
    torch.nn.init.zeros_(model.head.out.bias)
    mean = np.r_[np.full(6, 2.5), gripper]            # joints beyond 0..1 on purpose
    model.set_normalization({'action_mean': mean})
    folder = save_checkpoint(tmp_path / 'c', model, CheckpointMeta(model=model.cfg,
                                                                   contract=CONTRACT))
    obs = expert_observation(CONTRACT, 1.0, np.random.default_rng(0), feature_age_s=0.1)
    actions = ExpertPolicy(folder).infer(obs).actions
    np.testing.assert_allclose(actions[:, 6], expected, atol=1e-6)
    np.testing.assert_allclose(actions[:, :6], 2.5, atol=1e-5)
