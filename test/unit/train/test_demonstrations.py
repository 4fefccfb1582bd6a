"""Demonstrations in-process: one bag per episode, randomised starts, the demonstrator's noise.

Mirrors core/train/demonstrations.py and the --backend sim path of tools/record_demonstrations.py.
Each episode runs the reference through the real executor on the sim cell in simulated time
(a few seconds of CPU each).
"""
from __future__ import annotations

from dataclasses import replace
import json

import numpy as np
import pytest

from vla_insertion.core import bag, topics
from vla_insertion.core.bag.recording import load_recording, RecordedInputs
from vla_insertion.core.data import RobotState
from vla_insertion.core.sim.kinematics import forward_kinematics, HOME_RAD
from vla_insertion.core.sim.reference import ReferenceObservation, ReferencePolicy
from vla_insertion.core.train.demonstrations import (
    DemoStreams, PerturbedReference, record_episodes)
from vla_insertion.tools import record_demonstrations

VIEWS = ('zed_1', 'oak')
STREAMS = DemoStreams(VIEWS, width=160, height=90, camera_fps=2.0)


@pytest.mark.slow
def test_each_episode_is_a_bag_with_the_documented_topics(tmp_path):
    manifest = record_episodes(tmp_path, 2, STREAMS, seed=3, start_range_rad=0.1,
                               keep_failures=True)
    assert [e['episode'] for e in manifest] == [0, 1]
    assert all(e['seed'] == 3 and e['reason'] == 'success' for e in manifest)
    starts = []
    for entry in manifest:
        info = bag.bag_info(tmp_path / entry['bag'])
        assert {'/' + topics.camera_topic(v) for v in VIEWS} | {
            '/' + topics.JOINT_STATES.name, '/' + topics.POSE.name,
            '/' + topics.SENSOR_WINDOW.name, '/' + topics.ACTION_CHUNK.name} <= set(info.topics)
        rec = load_recording(tmp_path / entry['bag'], views=VIEWS)
        assert abs(rec.end_s - rec.start_s - entry['duration_s']) < 0.5
        starts.append(rec.trajectory.positions[0, :6])
    # randomised starts: off home, and not the same twice
    assert all(np.abs(q - HOME_RAD).max() > 0.01 for q in starts)
    assert np.abs(starts[0] - starts[1]).max() > 0.01


def test_perturbed_reference_is_off_the_path_far_from_the_hole_and_clean_near_it():
    tip = forward_kinematics(HOME_RAD)[7, :3, 3]
    robot = RobotState(stamp_s=0.0, joint_positions_rad=HOME_RAD.copy(), tool_position_m=tip,
                       tool_orientation_xyzw=np.array([0.0, 0.0, 0.0, 1.0]), gripper=1.0)

    def largest_offset(hole_top_m: np.ndarray) -> float:
        clean, noisy = ReferencePolicy(), PerturbedReference(ReferencePolicy(), 0.05, seed=1)
        worst = 0.0
        for k in range(20):
            obs = ReferenceObservation(robot=replace(robot, stamp_s=0.1 * k),
                                       hole_top_m=hole_top_m)
            worst = max(worst, float(np.abs(noisy.infer(obs).actions
                                            - clean.infer(obs).actions).max()))
        return worst

    assert largest_offset(np.array([-0.42, -0.27, 0.05])) > 0.01     # far: pushed off the path
    # the tip already where the approach heads (above_m over the hole): no noise there
    above_m = ReferencePolicy().params.above_m
    assert largest_offset(tip - np.array([0.0, 0.0, above_m])) == 0.0
    # low over the block, 3 cm beside the hole: no noise either (it would push into the block)
    assert largest_offset(tip - np.array([0.03, 0.0, 0.005])) == 0.0


def test_a_misled_descent_drives_until_the_sensor_feels_the_block_and_labels_stay_true():
    from vla_insertion.core.data import SensorWindowData
    tip = forward_kinematics(HOME_RAD)[7, :3, 3]
    robot = RobotState(stamp_s=0.0, joint_positions_rad=HOME_RAD.copy(), tool_position_m=tip,
                       tool_orientation_xyzw=np.array([0.0, 0.0, 0.0, 1.0]), gripper=1.0)
    hole = tip - np.array([0.0, 0.0, 0.004])            # 4 mm over the hole, on its axis

    def window(fz: float) -> SensorWindowData:
        samples = np.zeros((65, 7), np.float32)
        samples[:, 2] = fz
        return SensorWindowData(stamp_s=0.0, samples=samples, valid_samples=65,
                                sample_rate_hz=650.0,
                                channel_names=('fx', 'fy', 'fz', 'tx', 'ty', 'tz', 'distance'))

    noisy = PerturbedReference(ReferencePolicy(), 0.0, misled_fraction=1.0, seed=2)
    noisy.reset()
    assert noisy.misled
    obs = ReferenceObservation(robot=robot, hole_top_m=hole, window=window(0.0))
    driven = noisy.infer(obs)
    label = noisy.clean(driven)
    np.testing.assert_array_equal(label.actions, ReferencePolicy().infer(obs).actions)
    tips = forward_kinematics(driven.actions[:, :6].astype(np.float64))[:, 7, :3, 3]
    off = np.hypot(*(tips[-1, :2] - hole[:2]))
    assert 0.0005 < off < 0.0035                 # heading for a hole 1.2-3 mm off
    pressed = ReferenceObservation(robot=robot, hole_top_m=hole, window=window(6.0))
    driven = noisy.infer(pressed)                # it felt the block: the demonstrator drives
    assert not noisy.misled
    np.testing.assert_array_equal(driven.actions, noisy.clean(driven).actions)
    assert PerturbedReference(ReferencePolicy(), 0.0, seed=2).misled is False


def test_perturbed_reference_pushes_the_descent_off_the_axis_until_a_few_mm_over_the_block():
    """Demonstrations must show the funnel pulling a low, slightly-off peg back over the hole.

    A policy arrives there a millimetre or two off. The noise fades out 4 mm over the block,
    where the demonstrator has to align to 0.5 mm (with it on to the rim: 2 of 30 succeed).
    """
    tip = forward_kinematics(HOME_RAD)[7, :3, 3]
    robot = RobotState(stamp_s=0.0, joint_positions_rad=HOME_RAD.copy(), tool_position_m=tip,
                       tool_orientation_xyzw=np.array([0.0, 0.0, 0.0, 1.0]), gripper=1.0)

    def largest_offset(height_m: float, fraction: float) -> float:
        hole = tip - np.array([0.001, 0.0, height_m])       # 1 mm off the axis: the descent
        clean = ReferencePolicy()
        noisy = PerturbedReference(ReferencePolicy(), 0.05, descent_fraction=fraction, seed=1)
        worst = 0.0
        for k in range(20):
            obs = ReferenceObservation(robot=replace(robot, stamp_s=0.1 * k), hole_top_m=hole)
            worst = max(worst, float(np.abs(noisy.infer(obs).actions
                                            - clean.infer(obs).actions).max()))
            assert noisy.reference.phase == 'descend'
        return worst

    assert largest_offset(0.015, 0.0) == 0.0                   # off by default
    full = largest_offset(0.03, 0.5)
    assert 0.0 < full < 0.1                                     # ~3 sigma of 0.5 x 0.05 rad
    assert 0.0 < largest_offset(0.010, 0.5) < full              # fading with the height
    assert largest_offset(0.003, 0.5) == 0.0                    # none near the rim


@pytest.mark.slow
def test_tool_records_disjoint_ranges_in_workers(tmp_path):
    out = tmp_path / 'demos'
    code = record_demonstrations.main([
        '--backend', 'sim', '--episodes', '2', '--workers', '2', '--first-episode', '4',
        '--seed', '2', '--camera-fps', '2', '--params-file', 'config/vla_insertion.yaml',
        '-o', str(out)])
    assert code == 0
    manifest = json.loads((out / 'episodes.json').read_text())
    assert sorted(e['episode'] for e in manifest['episodes']) == [4, 5]
    assert manifest['noise_rad'] == pytest.approx(0.03)
    assert manifest['descent_noise'] == pytest.approx(0.15)
    assert all((out / e['bag']).is_dir() for e in manifest['episodes'])


@pytest.mark.parametrize('flag,value', [('--episodes', '0'), ('--workers', '0'),
                                        ('--noise-rad', '-1'), ('--start-range-rad', '2'),
                                        ('--descent-noise', '1.5')])
def test_tool_refuses_bad_settings(flag, value, tmp_path):
    with pytest.raises(SystemExit) as exc:
        record_demonstrations.main(['--backend', 'sim', flag, value, '-o', str(tmp_path)])
    assert exc.value.code == 2


@pytest.mark.slow
def test_recorded_chunks_are_the_clean_labels_and_the_chunk_targets(tmp_path):
    """The bag's chunks are the demonstrator's before the noise; they are the chunk targets.

    With noise on, each recorded chunk is what the clean demonstrator says to the recorded
    observation; training with targets 'chunks' makes one sample per recorded chunk, that chunk
    its target.
    """
    from vla_insertion.core.expert.runner import ExpertRunner
    from vla_insertion.core.expert.staleness import StalenessLimits
    from vla_insertion.core.feature_contract import FeatureContract
    from vla_insertion.core.sim.episode import episode_spec
    from vla_insertion.core.train.dataset import collect_ticks
    from vla_insertion.core.train.feature_cache import CachedBag, VlUpdate
    from vla_insertion.core.train.split import bag_episodes
    manifest = record_episodes(tmp_path, 1, STREAMS, seed=5, noise_rad=0.05, keep_failures=True)
    path = tmp_path / manifest[0]['bag']
    rec = load_recording(path, views=())
    assert len(rec.chunks) > 20
    spec = episode_spec(5, manifest[0]['episode'])
    clean, noisy = ReferencePolicy(), PerturbedReference(ReferencePolicy(), 0.05, seed=5)
    gap_clean, gap_noisy = 0.0, 0.0
    inputs = RecordedInputs(rec)           # the recorded window: what the sensor felt then
    for chunk in rec.chunks:
        obs = ReferenceObservation(robot=rec.robot(chunk.stamp_s), hole_top_m=spec.hole_top_m,
                                   approach_offset_m=spec.approach_offset_m,
                                   window=inputs.window(chunk.stamp_s))
        gap_clean = max(gap_clean, np.abs(clean.infer(obs).actions - chunk.actions).max())
        gap_noisy = max(gap_noisy, np.abs(noisy.infer(obs).actions - chunk.actions).max())
    assert gap_clean < 1e-4 and gap_noisy > 0.01, (gap_clean, gap_noisy)

    contract = FeatureContract(model_id='t', reduction='r', num_tokens=2, feature_dim=4,
                               image_width=160, image_height=90, view_names=VIEWS, prompt='p')
    stamps = np.arange(rec.start_s + 0.2, rec.end_s, 0.4)                 # a VLM every 0.4 s
    cached = CachedBag(str(path), [VlUpdate(float(t), float(t), (float(t),) * 2) for t in stamps],
                       np.zeros((stamps.size, 2, 4), np.float32))
    runner = ExpertRunner(None, StalenessLimits(max_feature_age_s=1.0),
                          contract_digest=contract.digest, feature_shape=(2, 4))
    episode = bag_episodes(str(path))[0]
    out = collect_ticks(rec, episode, cached, runner, contract, 8, 0.1, 10.0, targets='chunks')
    by_stamp = {round(c.stamp_s, 6): c.actions for c in rec.chunks}
    assert len(out['tick_s']) > 10
    for t, actions in zip(out['tick_s'], out['actions']):
        np.testing.assert_array_equal(actions, by_stamp[round(t, 6)])
    with pytest.raises(ValueError, match='training wants 4'):
        collect_ticks(rec, episode, cached, runner, contract, 4, 0.1, 10.0, targets='chunks')


def test_dagger_the_learned_policy_drives_and_the_demonstrator_labels_every_tick(
        tmp_path, tiny_vlm_dir):
    """With a driver the bag's chunks are the demonstrator's answers to what the policy met.

    An untrained expert drives (the executor never arms on it: the arm stays where it starts
    until the timeout; the episode is kept all the same); every tick of it, those refused for
    want of features included, has the demonstrator's chunk for the recorded observation as
    its label.
    """
    from vla_insertion.core.config import ExpertConfig, VlmConfig
    from vla_insertion.core.expert.presets import make_untrained_checkpoint
    from vla_insertion.core.sim.episode import episode_spec
    from vla_insertion.core.train.demonstrations import LearnedDriver
    from vla_insertion.core.vlm import feature_contract_for
    vlm = VlmConfig(model=str(tiny_vlm_dir), view_names=VIEWS, image_width=112,
                    image_height=56, torch_threads=1, warmup_runs=0)
    checkpoint = make_untrained_checkpoint(tmp_path / 'expert', feature_contract_for(vlm),
                                           preset='small')
    driver = LearnedDriver(vlm, ExpertConfig(checkpoint=str(checkpoint)))
    streams = DemoStreams(VIEWS, width=112, height=56, camera_fps=2.0)
    manifest = record_episodes(tmp_path / 'dagger', 1, streams, seed=5, driver=driver)
    entry = manifest[0]                              # kept, though the policy did not insert
    # an untrained expert is never armed: the arm holds until the timeout, never in the rim
    assert not entry['success'] and entry['reason'] == 'timeout'
    assert entry['jammed_ticks'] == 0
    rec = load_recording(tmp_path / 'dagger' / entry['bag'], views=())
    # so a label at every 10 Hz expert tick, from the episode's start to its end
    stamps = np.array([c.stamp_s for c in rec.chunks])
    assert abs(stamps[0] - rec.start_s) < 1e-6 and rec.end_s - stamps[-1] < 0.1
    np.testing.assert_allclose(np.diff(stamps), 0.1, atol=1e-6)
    spec = episode_spec(5, entry['episode'])
    reference, gap = ReferencePolicy(), 0.0
    inputs = RecordedInputs(rec)
    for chunk in rec.chunks:
        obs = ReferenceObservation(robot=rec.robot(chunk.stamp_s), hole_top_m=spec.hole_top_m,
                                   approach_offset_m=spec.approach_offset_m,
                                   window=inputs.window(chunk.stamp_s))
        gap = max(gap, np.abs(reference.infer(obs).actions - chunk.actions).max())
    assert gap < 1e-4
    # the labels drove nothing: the demonstrator's first answer heads for the hole, while the
    # arm, waiting for the policy's first features, held still
    first = rec.chunks[0]
    horizon_s = (first.actions.shape[0] - 1) * first.dt_s
    arm = rec.robot(first.stamp_s + horizon_s).joint_positions_rad
    assert np.abs(arm - first.actions[-1, :6]).max() > 0.01


def test_tool_refuses_a_driver_that_is_no_checkpoint_or_not_in_process(tmp_path, capsys):
    code = record_demonstrations.main(['--backend', 'sim', '--driver', str(tmp_path),
                                       '--params-file', 'config/vla_insertion.yaml',
                                       '-o', str(tmp_path / 'out')])
    assert code == 2 and 'not an expert checkpoint' in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        record_demonstrations.main(['--backend', 'ros', '--driver', str(tmp_path),
                                    '-o', str(tmp_path / 'out')])
    assert exc.value.code == 2
