"""The robot state at the capture of the VL features, and the expert's VL inputs.

The history, the recorded lookup, the runner handing the state to the policy, the network's
motion input, token pooling and feature standardisation.
"""
from dataclasses import replace
import threading

import numpy as np
import pytest
import torch

from vla_insertion.core.data import RobotState, SensorWindowData, VLFeatureData
from vla_insertion.core.expert.capture import recorded_captures, RobotHistory
from vla_insertion.core.expert.model import ActionExpert, ExpertModelConfig
from vla_insertion.core.expert.policy import ExpertPolicy, ObservationError, robot_state_vector
from vla_insertion.core.expert.presets import make_untrained_checkpoint, PRESETS
from vla_insertion.core.expert.runner import ExpertRunner
from vla_insertion.core.expert.staleness import BAD_OBSERVATION, StalenessLimits
from vla_insertion.core.feature_contract import FeatureContract
from vla_insertion.core.interfaces import ExpertObservation

CONTRACT = FeatureContract(model_id='tiny-test-vlm', reduction='image_token_grid_pool',
                           num_tokens=6, feature_dim=32, image_width=64, image_height=36,
                           view_names=('zed_1', 'oak'), prompt='insert')
NOW = 100.0


def robot(stamp: float, joint0: float = 0.0) -> RobotState:
    return RobotState(stamp_s=stamp, joint_positions_rad=np.r_[joint0, np.zeros(5)],
                      tool_position_m=np.zeros(3), tool_orientation_xyzw=np.array([0, 0, 0, 1.]))


def test_the_history_answers_the_newest_state_at_or_before_the_capture():
    history = RobotHistory(span_s=1.0)
    assert history.at(NOW) is None
    for k in range(30):                                  # 10 ms apart, joint 0 = stamp
        history.add(robot(NOW + 0.01 * k, joint0=0.01 * k))
    assert history.at(NOW + 0.105).stamp_s == pytest.approx(NOW + 0.10)
    assert history.at(NOW + 0.10).stamp_s == pytest.approx(NOW + 0.10)   # at: itself
    assert history.at(NOW + 5.0).stamp_s == pytest.approx(NOW + 0.29)    # the newest
    assert history.at(NOW - 1.0).stamp_s == NOW          # before everything: the oldest


def test_the_history_keeps_its_span_and_restarts_on_a_clock_jump_back():
    history = RobotHistory(span_s=0.5)
    for k in range(200):
        history.add(robot(NOW + 0.01 * k))
    assert len(history) == 51                            # 0.5 s at 100 Hz, both ends
    history.add(robot(NOW))                              # the sender's clock went back
    assert len(history) == 1 and history.restarts == 1
    history.add(robot(float('nan')))
    assert len(history) == 1 and history.rejected == 1


def test_the_history_takes_states_from_another_thread_while_looked_up():
    history = RobotHistory()
    stop = threading.Event()

    def feed():
        k = 0
        while not stop.is_set():
            history.add(robot(NOW + 1e-3 * k))
            k += 1
    thread = threading.Thread(target=feed)
    thread.start()
    try:
        found = [history.at(NOW + 0.5) for _ in range(2000)]   # never raises mid-append
    finally:
        stop.set()
        thread.join()
    assert all(f is None or isinstance(f, RobotState) for f in found)
    stamps = [history.at(NOW + 1e-3 * k).stamp_s for k in range(0, len(history), 97)]
    assert stamps == sorted(stamps)


def test_recorded_captures_use_the_same_rule():
    states = {NOW + 0.1 * k: robot(NOW + 0.1 * k, joint0=k) for k in range(5)}

    def robot_at(t):
        known = [s for s in states if s <= t + 1e-12]
        return states[max(known)] if known else None
    out = recorded_captures(np.array([NOW - 1.0, NOW + 0.15, NOW + 0.4]), robot_at,
                            robot_state_vector)
    assert out.shape == (3, 14) and out.dtype == np.float32
    assert out[:, 0].tolist() == [1.0, 1.0, 4.0]         # before the first: the earliest found
    with pytest.raises(ValueError, match='no robot state'):
        recorded_captures(np.array([NOW - 5.0]), robot_at, robot_state_vector)


def _model(**overrides) -> ActionExpert:
    cfg = ExpertModelConfig(**{**PRESETS['small'], 'feature_tokens': 6, 'feature_dim': 32,
                               **overrides})
    torch.manual_seed(0)
    return ActionExpert(cfg).eval()


def test_the_network_sees_the_motion_since_the_capture():
    model = _model()
    g = torch.Generator().manual_seed(1)
    features, window = torch.randn(2, 6, 32, generator=g), torch.randn(2, 65, 7, generator=g)
    state = torch.randn(2, 14, generator=g)
    with torch.inference_mode():
        still = model(features, window, state, state)
        default = model(features, window, state)          # None: taken at this state
        moved = model(features, window, state, state - 0.05)
    assert torch.equal(still, default)
    assert not torch.allclose(still, moved)
    blind = _model(capture_motion=False)                 # a legacy model ignores it
    with torch.inference_mode():
        assert torch.equal(blind(features, window, state, state - 0.05),
                           blind(features, window, state))


def test_token_pooling_knows_which_token_said_what_and_attention_pooling_does_not():
    g = torch.Generator().manual_seed(2)
    features = torch.randn(1, 6, 32, generator=g)
    swapped = features[:, [1, 0, 2, 3, 4, 5]]
    window, state = torch.zeros(1, 65, 7), torch.zeros(1, 14)
    for pooling, changes in (('tokens', True), ('attention', False)):
        model = _model(vl_pooling=pooling)
        with torch.inference_mode():
            a, b = model(features, window, state), model(swapped, window, state)
        assert (not torch.allclose(a, b, atol=1e-6)) == changes, pooling


def test_features_are_standardised_per_token_and_dimension():
    model = _model()
    mean, std = torch.randn(6, 32), torch.rand(6, 32) + 0.5
    model.set_normalization({'feature_mean': mean.numpy(), 'feature_std': std.numpy()})
    g = torch.Generator().manual_seed(3)
    z = torch.randn(1, 6, 32, generator=g)
    window, state = torch.zeros(1, 65, 7), torch.zeros(1, 14)
    reference = _model()                                 # same weights, no statistics
    with torch.inference_mode():
        assert torch.allclose(model(mean + std * z, window, state), reference(z, window, state),
                              atol=1e-5)


@pytest.fixture(scope='module')
def policy(tmp_path_factory):
    return ExpertPolicy(make_untrained_checkpoint(tmp_path_factory.mktemp('c') / 'c', CONTRACT,
                                                  preset='small'))


def _tick_inputs():
    features = VLFeatureData(stamp_s=NOW - 0.3, features=np.ones((6, 32), np.float32),
                             sequence=1, contract_hash=CONTRACT.digest, model_id='m')
    window = SensorWindowData(stamp_s=NOW - 0.01, samples=np.zeros((65, 7), np.float32),
                              valid_samples=65, sample_rate_hz=650.0)
    return features, window


def test_the_runner_hands_the_policy_the_state_at_the_capture(policy):
    seen = []

    class Spy:
        meta = policy.meta

        def infer(self, obs):
            seen.append(obs.capture_robot)
            return policy.infer(obs)

        def reset(self):
            pass
    runner = ExpertRunner(Spy(), StalenessLimits())
    for k in range(40):                                  # states the runner was given
        runner.robots.add(robot(NOW - 0.4 + 0.01 * k, joint0=k))
    features, window = _tick_inputs()
    assert runner.tick(features, window, robot(NOW, joint0=99), NOW).published
    assert seen[-1].stamp_s == pytest.approx(NOW - 0.3)  # not the tick's state
    given = robot(NOW - 0.3, joint0=7)
    assert runner.tick(features, window, robot(NOW), NOW, capture_robot=given).published
    assert seen[-1] is given                             # a recording knows it exactly
    runner.reset()
    assert len(runner.robots) == 0


def test_a_policy_with_the_motion_input_refuses_an_observation_without_the_capture(policy):
    features, window = _tick_inputs()
    obs = ExpertObservation(features, window, robot(NOW), NOW)
    with pytest.raises(ObservationError, match='capture'):
        policy.infer(obs)
    assert policy.infer(replace(obs, capture_robot=robot(NOW - 0.3))).actions.shape == (8, 7)
    runner = ExpertRunner(policy, StalenessLimits())
    runner.robots.add = lambda r: None                   # a runner that was never told any
    result = runner.tick(features, window, robot(NOW), NOW)
    assert not result.published and result.decision.reason == BAD_OBSERVATION
