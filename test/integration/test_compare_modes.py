"""The comparison command runs end to end on a short bag written here."""
import io
import json
import os
from pathlib import Path
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from vla_insertion.core import bag
from vla_insertion.core.config import DEFAULT_SENSOR_CHANNELS

ROOT = Path(__file__).resolve().parents[2]
VIEWS = ('zed_1', 'oak')
T0 = 1_700_000_000_000_000_000
DURATION_S = 3.0


def write_cell_bag(path: Path, duration_s: float = DURATION_S) -> None:
    """Cameras at 10 FPS, robot at 100 Hz, sensor windows at 65 Hz, as the bridges publish."""
    rng = np.random.default_rng(0)
    events = []
    for k in range(int(duration_s * 100)):
        events.append((k * 10_000_000, 'robot', k))
    for k in range(int(duration_s * 65)):
        events.append((k * 15_384_615, 'sensor', k))
    for k in range(int(duration_s * 10)):
        for v in VIEWS:
            events.append((k * 100_000_000 + 3_000_000, v, k))
    events.sort()
    jpegs = []
    for k in range(4):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (36, 64, 3), dtype=np.uint8)).save(buf, 'JPEG')
        jpegs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
    with bag.BagWriter(path) as w:
        for v in VIEWS:
            w.add_topic(f'/cameras/{v}/image/compressed', 'sensor_msgs/msg/CompressedImage')
        w.add_topic('/robot/joint_states', 'sensor_msgs/msg/JointState')
        w.add_topic('/robot/pose', 'geometry_msgs/msg/PoseStamped')
        w.add_topic('/sensor/window', 'vla_insertion/msg/SensorWindow')
        for offset, kind, k in events:
            t = T0 + offset
            h = bag.header(t)
            if kind == 'robot':
                q = 0.3 * np.sin(2 * np.pi * 0.5 * offset * 1e-9 + np.arange(6))
                w.write_msg('/robot/joint_states', t + 500_000, bag.make_message(
                    'sensor_msgs/msg/JointState', header=h,
                    name=[f'joint_{j + 1}' for j in range(6)], position=q))
                pose = bag.make_message('geometry_msgs/msg/Pose')
                pose.orientation.w = 1.0
                w.write_msg('/robot/pose', t + 500_000, bag.make_message(
                    'geometry_msgs/msg/PoseStamped', header=h, pose=pose))
            elif kind == 'sensor':
                w.write_msg('/sensor/window', t + 200_000, bag.make_message(
                    'vla_insertion/msg/SensorWindow', header=h, sample_rate_hz=650.0,
                    num_samples=65, num_channels=7, channel_names=list(DEFAULT_SENSOR_CHANNELS),
                    data=rng.standard_normal(65 * 7).astype(np.float32), valid_samples=65,
                    clock_calibrated=True))
            else:
                w.write_msg(f'/cameras/{kind}/image/compressed', t + 2_000_000,
                            bag.make_message('sensor_msgs/msg/CompressedImage', header=h,
                                             format='jpeg', data=jpegs[k % 4]))


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    """Write a tiny untrained VLM on 2 small views and an untrained expert matching it."""
    folder = tmp_path_factory.mktemp('models')
    params = folder / 'params.yaml'
    params.write_text(f"""vlm_node:
  ros__parameters:
    model: {folder / 'vlm'}
    view_names: [{', '.join(VIEWS)}]
    image_width: 112
    image_height: 56
    torch_threads: 1
    warmup_runs: 0
    max_view_age_s: 1.0
action_expert:
  ros__parameters:
    checkpoint: {folder / 'expert'}
    max_sensor_age_s: 0.5
    max_robot_age_s: 0.5
""")
    py = [sys.executable, '-m']
    subprocess.run(py + ['vla_insertion.tools.make_tiny_vlm', '--out', str(folder / 'vlm')],
                   check=True, cwd=ROOT, capture_output=True, timeout=300)
    subprocess.run(py + ['vla_insertion.tools.make_untrained_checkpoint', '--output',
                         str(folder / 'expert'), '--vlm-params', str(params), '--preset',
                         'small'], check=True, cwd=ROOT, capture_output=True, timeout=300)
    return params, folder / 'expert'


def test_compare_modes_end_to_end(tmp_path, models, ros_env):
    params, checkpoint = models
    write_cell_bag(tmp_path / 'cell')
    out = tmp_path / 'out'
    env = {**ros_env, 'PYTHONPATH': f'{ROOT}{os.pathsep}{ros_env.get("PYTHONPATH", "")}'}
    proc = subprocess.run(
        [sys.executable, '-m', 'vla_insertion.tools.compare_modes', str(tmp_path / 'cell'),
         '-o', str(out), '--vlm-params', str(params), '--checkpoint', str(checkpoint),
         '--vlm-delay', '0.3'], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / 'comparison.json').read_text())
    modes = result['modes']
    assert set(modes) == {'sync', 'threaded', 'ros'}
    for mode, r in modes.items():
        assert r['chunks'] > 0, mode
        joints = r['executed']['per_joint']
        assert len(joints) == 6 and all(j['mae_rad'] is not None for j in joints.values())
    # the blocking loop produces at most one chunk per 0.3 s VLM call; the threaded loop keeps
    # ticking at 10 Hz with reused features
    assert modes['sync']['chunks'] <= DURATION_S / 0.3 + 1
    assert modes['threaded']['chunks'] > 2 * modes['sync']['chunks']
    assert modes['threaded']['features']['reuse_index']['max'] >= 2
    for name in ('comparison_joints.png', 'comparison_errors.png', 'comparison.md'):
        assert (out / name).stat().st_size > 0
