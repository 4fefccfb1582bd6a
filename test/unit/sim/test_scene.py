"""The scene: IK, rendering, and sim_cell's config, control modes and faults."""
import dataclasses
import io

import numpy as np
from PIL import Image
import pytest

from vla_insertion.core import wire
from vla_insertion.core.config import ConfigError
from vla_insertion.core.sim import SimCell
from vla_insertion.core.sim.episode import SUCCESS
from vla_insertion.core.sim.kinematics import DOWN, forward_kinematics, HOME_RAD, solve_ik
from vla_insertion.core.sim.render import SceneRenderer
from vla_insertion.tools import sim_cell


def test_joints_reach_the_commanded_tip_pose():
    # tips over the block where holes are placed, from high over it down into a hole
    rng = np.random.default_rng(0)
    tips = np.c_[rng.uniform([-0.46, -0.31], [-0.38, -0.23], (200, 2)),
                 rng.uniform(0.025, 0.3, 200)]                       # (200, 3) [m]
    joints = solve_ik(tips, HOME_RAD)                                # (200, 6)
    frames = forward_kinematics(joints)[:, 7]                        # (200, 4, 4)
    np.testing.assert_allclose(frames[:, :3, 3], tips, atol=1e-5)
    np.testing.assert_allclose(frames[:, :3, :3], np.broadcast_to(DOWN, (200, 3, 3)),
                               atol=1e-5)                            # the tool points down


def test_views_differ_and_follow_the_robot():
    renderer = SceneRenderer(('a', 'b', 'c'), 160, 90)
    home = SimCell(seed=3).state()
    early = [np.asarray(renderer.render(v, home), np.int16) for v in range(3)]
    late = np.asarray(renderer.render(0, _tip_over_hole(home, 0.0, 0.0, 0.02)), np.int16)
    assert early[0].shape == (90, 160, 3)
    assert np.abs(early[0] - early[1]).mean() > 5 and np.abs(early[1] - early[2]).mean() > 5
    assert np.abs(early[0] - late).mean() > 1                     # the arm moved
    jpeg = renderer.render_jpeg(1, home, quality=70)
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
    for control in ('commands', 'reference'):
        config, _ = sim_cell.load_config(['--control', control])
        cell = sim_cell.build_cell(config)
        assert cell.control == control
        state = cell.state_at(0.3)
        assert state.joints_rad.shape == (6,) and state.tip_m.shape == (3,)
    with pytest.raises(ConfigError, match='control'):
        sim_cell.load_config(['--control', 'scripted'])         # the old playback is gone


@pytest.mark.slow
def test_sim_cell_reference_inserts_through_the_executor_of_the_params_file(tmp_path):
    # the streams' view of control reference, asked for on cell time instead of the wall clock
    params = tmp_path / 'p.yaml'
    params.write_text('chunk_executor:\n  ros__parameters:\n    merge: latest\n')
    config, _ = sim_cell.load_config(['--control', 'reference', '--seed', '3'])
    cell = sim_cell.build_cell(config, str(params))
    assert cell.driver.executor.config.merge == 'latest'
    assert cell.driver.executor.config.start_armed
    ends, t = [], 0.0
    while not ends and t < 20.0:
        t += 0.5
        ends = [m for m in cell.episode_reports(t, status=False) if m.event == 'end']
    assert [(m.episode, m.reason, m.control) for m in ends] == [(0, SUCCESS, 'reference')]
    samples = cell.sensor_samples(t, 10, config.sensor_rate_hz, np.random.default_rng(0))
    assert samples.shape == (10, 7) and samples.dtype == np.float32
    assert (samples[:, 6] >= 0.0).all()                         # a laser's distance
    bad = tmp_path / 'bad.yaml'
    bad.write_text('chunk_executor:\n  ros__parameters:\n    merge: sideways\n')
    with pytest.raises(ConfigError, match='merge'):
        sim_cell.build_cell(config, str(bad))


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
