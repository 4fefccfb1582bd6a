"""The action expert's int8 and fp16 precisions: what is converted, how close the actions stay.

Default-size models (19.4M parameters regression, more with the flow head): the small preset
has no layer large enough to be converted. Tolerances, in units of the checkpoint's action std,
on inputs drawn like real ones (`validation_inputs`: VL features with large-activation channels):

- int8: per-tensor activations at 7 bits (fbgemm's reduce_range) quantise each layer's input to
  ~1/64 of its range; over five int8 layers that adds up to a few percent of the output's
  spread. Measured: max 0.044, mean 0.011 (regression, 256 inputs, docs/benchmarks.md). Allowed:
  max 0.1, mean 0.02, about twice the measurement, so other seeds and BLAS builds pass while a
  broken conversion (a lost bias or scale gives errors of order 1) fails;
- fp16: weights rounded to 11 significant bits: measured max 8e-4; allowed 5e-3.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from vla_insertion.core.config import ConfigError, ExpertConfig
from vla_insertion.core.data import RobotState, SensorWindowData, VLFeatureData
from vla_insertion.core.expert.checkpoint import CheckpointMeta, ExpertCheckpoint
from vla_insertion.core.expert.model import ActionExpert, ExpertModelConfig
from vla_insertion.core.expert.policy import ExpertPolicy
from vla_insertion.core.expert.quantize import (
    action_difference, FP16_IN_INT8, quantizable_layers, quantize_expert, validation_inputs)
from vla_insertion.core.feature_contract import FeatureContract
from vla_insertion.core.interfaces import ExpertObservation

torch.set_num_threads(1)
CONTRACT = FeatureContract(model_id='Qwen/Qwen2.5-VL-3B-Instruct',
                           reduction='image_grid_pool+instruction_mean:2x4', num_tokens=41,
                           feature_dim=2048, image_width=640, image_height=360,
                           view_names=('zed_1', 'zed_2', 'zed_3', 'zed_4', 'oak'),
                           prompt='test')
ACTION_STD = [0.3, 0.3, 0.3, 0.5, 0.5, 0.5, 0.4]   # rad, and the gripper [0..1]


def expert(head: str) -> ActionExpert:
    torch.manual_seed(0)
    model = ActionExpert(ExpertModelConfig(feature_tokens=41, feature_dim=2048, head=head))
    model.set_normalization({'sensor_std': [5.0, 5.0, 5.0, 0.5, 0.5, 0.5, 0.01],
                             'action_mean': [0.1, -0.5, 1.0, 0.0, 0.2, 0.0, 0.5],
                             'action_std': ACTION_STD})
    return model.eval()


@pytest.fixture(scope='module')
def regression() -> ActionExpert:
    return expert('regression')


@pytest.fixture(scope='module')
def inputs(regression):
    return validation_inputs(regression, 32)


def test_int8_converts_the_large_layers_and_keeps_the_rest(regression):
    large = quantizable_layers(regression)
    assert {'vl_pooling.token_proj', 'vl_pooling.flat_proj', 'fusion.proj',
            'trunk.linears.0'} <= set(large)
    assert 'head.out' not in large and 'state_encoder.net.0' not in large
    bytes_large = sum(regression.get_submodule(n).weight.numel() for n in large) * 4
    assert bytes_large > 0.9 * sum(p.numel() for p in regression.parameters()) * 4
    converted = quantize_expert(regression, 'int8')
    kinds = {n: type(converted.get_submodule(n)).__name__ for n in large}
    for name, kind in kinds.items():
        assert kind == 'Linear' and type(converted.get_submodule(name)).__module__.startswith(
            'torch.ao.nn.quantized.dynamic'), (name, kind)
    weights = {n: converted.get_submodule(n)._packed_params.dtype for n in large}
    assert all(weights[n] == (torch.float16 if n in FP16_IN_INT8 else torch.qint8)
               for n in large), weights
    assert type(converted.head.out) is torch.nn.Linear
    # the loaded model is left as it was: the checkpoint's weights are not touched
    assert type(regression.fusion.proj) is torch.nn.Linear


@pytest.mark.parametrize('precision,max_std,mean_std', [('int8', 0.1, 0.02),
                                                        ('fp16', 5e-3, 1e-3)])
def test_converted_actions_stay_close_to_fp32(regression, inputs, precision, max_std, mean_std):
    diff = action_difference(regression, quantize_expert(regression, precision), inputs)
    assert diff['max_over_std'] <= max_std, diff
    assert diff['mean_abs'] <= mean_std * min(ACTION_STD), diff
    assert diff['max_abs'] > 0.0   # something was converted


def test_the_flow_head_runs_in_int8_and_stays_close():
    flow = expert('flow')
    assert 'head.context_proj' in quantizable_layers(flow)
    diff = action_difference(flow, quantize_expert(flow, 'int8'), validation_inputs(flow, 8),
                             steps=5)
    assert 0.0 < diff['max_over_std'] <= 0.1, diff


def test_the_comparison_sees_a_broken_conversion(regression, inputs):
    broken = quantize_expert(regression, 'fp16')
    broken.action_mean += 0.5                              # a lost offset, say
    assert action_difference(regression, broken, inputs[:4])['max_over_std'] > 0.5


def observation() -> ExpertObservation:
    rng = np.random.default_rng(0)
    obs = ExpertObservation(
        features=VLFeatureData(stamp_s=9.7, sequence=1, contract_hash=CONTRACT.digest,
                               model_id=CONTRACT.model_id,
                               features=rng.standard_normal((41, 2048)).astype(np.float32)),
        window=SensorWindowData(stamp_s=10.0, valid_samples=65, sample_rate_hz=650.0,
                                samples=rng.standard_normal((65, 7)).astype(np.float32)),
        robot=RobotState(stamp_s=10.0, joint_positions_rad=rng.uniform(-1, 1, 6),
                         tool_position_m=np.array([0.4, 0.0, 0.3]),
                         tool_orientation_xyzw=np.array([0.0, 0.0, 0.0, 1.0])),
        now_s=10.0)
    return replace(obs, capture_robot=obs.robot)  # the views were taken at this state


def test_the_policy_takes_a_precision_and_keeps_the_checkpoint(regression):
    checkpoint = ExpertCheckpoint(model=regression,
                                  meta=CheckpointMeta(model=regression.cfg, contract=CONTRACT))
    fp32 = ExpertPolicy(checkpoint)
    int8 = ExpertPolicy(checkpoint, precision='int8')
    assert (fp32.precision, int8.precision) == ('fp32', 'int8')
    assert type(checkpoint.model.fusion.proj) is torch.nn.Linear
    a, b = fp32.infer(observation()).actions, int8.infer(observation()).actions
    assert a.shape == b.shape == (8, 7) and b.dtype == np.float32
    assert np.abs(a - b).max() > 0.0
    assert (np.abs(a - b) <= 0.1 * np.asarray(ACTION_STD, np.float32)).all()
    with pytest.raises(ValueError, match='precision'):
        ExpertPolicy(checkpoint, precision='int4')


@pytest.mark.parametrize('values,match', [({'precision': 'bf16'}, 'precision'),
                                          ({'precision': 'int8', 'device': 'cuda'}, 'CPU')])
def test_the_config_refuses_unknown_or_gpu_precisions(values, match):
    with pytest.raises(ConfigError, match=match):
        ExpertConfig(**values)
    assert ExpertConfig(precision='int8').precision == 'int8'
