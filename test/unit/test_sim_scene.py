"""The scripted cell: kinematics, trajectory, contact forces, rendering, config, faults."""
import dataclasses
import io

import numpy as np
from PIL import Image
import pytest

from vla_insertion.core import wire
from vla_insertion.core.config import ConfigError
from vla_insertion.core.sim import SimCell
from vla_insertion.core.sim.geometry import INSERT_DEPTH_M
from vla_insertion.core.sim.kinematics import DOWN, forward_kinematics, HOME_RAD, solve_ik
from vla_insertion.core.sim.render import SceneRenderer
from vla_insertion.core.sim.scripted import RELEASE_AT, ScriptedCell, SimScene
from vla_insertion.tools import sim_cell


@pytest.fixture(scope='module')
def scene():
    return SimScene(episode_s=10.0, seed=3)


def test_joints_reach_the_commanded_tip_pose(scene):
    times = np.arange(0.0, 40.0, 0.05)                  # four episodes, every variant
    for t in times:
        state = scene.state_at(t)
        tip = forward_kinematics(state.joints_rad)[7]
        np.testing.assert_allclose(tip[:3, 3], state.tip_m, atol=1e-5)
        np.testing.assert_allclose(tip[:3, :3], DOWN, atol=1e-5)   # tool points down


def test_trajectory_is_smooth_and_repeats(scene):
    joints = np.array([scene.state_at(t).joints_rad for t in np.arange(0.0, 10.0, 0.01)])
    assert np.abs(np.diff(joints, axis=0)).max() < np.radians(1.0)   # < 100 deg/s
    np.testing.assert_allclose(scene.state_at(0.5).joints_rad, scene.state_at(40.5).joints_rad)


def test_insertion_reaches_depth_and_force_rises_on_contact(scene):
    rng = np.random.default_rng(0)
    states = [scene.state_at(t) for t in np.arange(0.0, 10.0, 0.01)]
    depths = np.array([s.depth_m for s in states])
    readings = np.array([scene.sensor_sample(s, rng) for s in states])   # (T, 7)
    assert depths.max() == pytest.approx(INSERT_DEPTH_M, abs=1e-4)
    free = depths == 0.0
    assert np.abs(readings[free, 2]).max() < 0.5                 # noise only in free air
    deep = [i for i, s in enumerate(states) if s.depth_m > 0.02 and not s.peg_in_hole]
    assert readings[deep, 2].min() > 8.0                         # [N], pushing into the hole
    approach = [i for i, s in enumerate(states) if 0.1 < s.phase < 0.6]
    distance = readings[approach, 6]
    assert distance[0] > 0.15 and distance[-1] < 0.02             # [m], falling
    assert states[-1].gripper == 0.0 and states[int(RELEASE_AT * 900)].gripper == 1.0


def test_views_differ_and_follow_the_robot(scene):
    renderer = SceneRenderer(('a', 'b', 'c'), 160, 90)
    early = [np.asarray(renderer.render(v, scene.state_at(0.5)), np.int16) for v in range(3)]
    late = np.asarray(renderer.render(0, scene.state_at(6.0)), np.int16)
    assert early[0].shape == (90, 160, 3)
    assert np.abs(early[0] - early[1]).mean() > 5 and np.abs(early[1] - early[2]).mean() > 5
    assert np.abs(early[0] - late).mean() > 1                     # the arm moved
    jpeg = renderer.render_jpeg(1, scene.state_at(1.0), quality=70)
    assert Image.open(io.BytesIO(jpeg)).size == (160, 90)


def test_renderer_draws_the_live_cell_and_its_hole():
    renderer = SceneRenderer(('a',), 160, 90)
    first = SimCell(seed=0).state()
    other = SimCell(seed=0, first_episode=5).state()                 # another hole position
    assert not np.allclose(first.hole_top_m, other.hole_top_m)
    a = np.asarray(renderer.render(0, first), np.int16)
    b = np.asarray(renderer.render(0, other), np.int16)
    assert np.abs(a - b).mean() > 0.2                                # the block moved


def _tip_over_hole(state, dx_m, dy_m, height_m):
    """Return the cell's state with the arm moved to put the tip at hole + (dx, dy, height)."""
    tip = state.hole_top_m + np.array([dx_m, dy_m, height_m])
    return dataclasses.replace(state, joints_rad=solve_ik(tip[None], HOME_RAD)[0], tip_m=tip)


def _hole_pixels(image: Image.Image) -> np.ndarray:
    """(N, 2) x y of the pixels in the hole's colour."""
    rgb = np.asarray(image, np.int16)
    ys, xs = np.nonzero(np.abs(rgb - [25, 25, 30]).max(axis=2) <= 6)
    return np.stack([xs, ys], axis=1)


def test_wrist_view_follows_the_arm_and_resolves_millimetres():
    renderer = SceneRenderer(('ring', 'wrist'), 640, 360, wrist_views=('wrist',))
    home = SimCell(seed=0).state()
    above = _tip_over_hole(home, 0.0, 0.0, 0.02)
    moved = np.abs(np.asarray(renderer.render(1, home), np.int16)
                   - np.asarray(renderer.render(1, above), np.int16)).mean()
    assert moved > 10                                      # the whole picture moved with the arm
    # 2 mm of tip-to-hole offset moves the hole in the wrist view by pixels, in a ring view not
    shifts = {}
    for view in (0, 1):
        left = _hole_pixels(renderer.render(view, _tip_over_hole(home, -0.002, 0.0, 0.02)))
        right = _hole_pixels(renderer.render(view, _tip_over_hole(home, 0.002, 0.0, 0.02)))
        assert len(left) > 10 and len(right) > 10           # the hole is in sight
        shifts[view] = float(np.linalg.norm(left.mean(0) - right.mean(0)))
    assert shifts[1] > 8.0 and shifts[0] < 1.0


def test_wrist_views_must_be_views():
    with pytest.raises(ConfigError, match='wrist_views'):
        sim_cell.SimCellConfig(view_names=('a', 'b'), wrist_views=('oak',))


def test_scripted_cell_reports_episodes(scene):
    cell = ScriptedCell(scene, seed=3)
    first = cell.episode_reports(0.5, status=True)
    assert [m.event for m in first] == ['start', 'status']
    assert first[0].control == 'scripted' and first[0].episode == 0
    np.testing.assert_allclose(first[0].hole_m, scene.holes[0])
    assert cell.episode_reports(5.0, status=False) == []
    later = cell.episode_reports(10.5, status=False)
    assert [(m.event, m.episode, m.reason, m.success) for m in later] == [
        ('end', 0, 'scripted', None), ('start', 1, None, None)]
    samples = cell.sensor_samples(np.array([6.0, 6.01]), np.random.default_rng(0))
    assert samples.shape == (2, 7) and samples.dtype == np.float32


def test_sim_cell_config_layers(tmp_path):
    params = tmp_path / 'p.yaml'
    params.write_text('sim_cell:\n  ros__parameters:\n    camera_fps: 5\n    seed: 9\n'
                      '    view_names: [left, right]\n    wrist_views: []\n')
    config, _ = sim_cell.load_config(['--params-file', str(params), '--seed', '4', '--faults'])
    assert (config.camera_fps, config.seed, config.view_names, config.wrist_views,
            config.faults) == (5.0, 4, ('left', 'right'), (), True)
    with pytest.raises(ConfigError):
        sim_cell.load_config(['--jpeg-quality', '0'])


@pytest.mark.parametrize('flag,value', [('--control', 'teleop'), ('--command-port', '0'),
                                        ('--episode-port', '70000'),
                                        ('--episode-timeout-s', '0'),
                                        ('--max-contact-force-n', '-1'),
                                        ('--physics-rate-hz', '50'),
                                        ('--reference-latency-s', '2')])
def test_sim_cell_refuses_bad_control_settings(flag, value):
    with pytest.raises(ConfigError):
        sim_cell.load_config([flag, value])


def test_sim_cell_control_modes_build_their_cells():
    for control in ('commands', 'reference', 'scripted'):
        config, _ = sim_cell.load_config(['--control', control])
        cell = sim_cell.build_cell(config)
        assert cell.control == control
        state = cell.state_at(0.3)
        assert state.joints_rad.shape == (6,) and state.tip_m.shape == (3,)


@pytest.mark.parametrize('kind,cause', [('malformed', wire.BAD_MAGIC),
                                        ('truncated', wire.TRUNCATED),
                                        ('oversized', wire.OVERSIZED)])
@pytest.mark.parametrize('name,record', [
    ('camera_v1', wire.CameraMessage('v', 1.0, 4, 4, b'\xff\xd8\xff\xd9')),
    ('robot_v1', wire.RobotMessage(1.0, (0.0,) * 6, (0.0,) * 3, (0.0,) * 3)),
    ('sensor_v1', wire.SensorBatch(0, np.ones(10), np.zeros((10, 7), np.float32)))])
def test_injected_faults_decode_to_their_documented_cause(kind, cause, name, record):
    codec = wire.make_codec(name)
    bad = sim_cell.corrupt(kind, codec.encode(record), codec.max_bytes)
    with pytest.raises(wire.WireError) as info:
        codec.decode(bad)
    assert info.value.cause == cause
    assert sim_cell.EXPECTED_CAUSE[kind] == f'drops.{cause}'


def test_fault_plan_cycles_through_every_kind(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(sim_cell.time, 'monotonic', lambda: now[0])
    plan = sim_cell.FaultPlan('sensor', True, period_s=0.1)
    kinds = []
    for _ in range(200):
        now[0] += 0.05
        kind = plan.due(have_old_packet=True)
        if kind:
            kinds.append(kind)
    assert set(kinds) == set(sim_cell.FAULT_KINDS)
    assert sum(plan.injected.values()) == len(kinds)
