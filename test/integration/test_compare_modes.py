"""The comparison command runs end to end on a short bag written here."""
import json
import os
from pathlib import Path
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[2]
VIEWS = ('zed_1', 'oak')
DURATION_S = 3.0


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    """Write a tiny untrained VLM on 2 small views and an untrained expert matching it."""
    folder = tmp_path_factory.mktemp('models')
    params = folder / 'params.yaml'
    params.write_text(f"""/**/vlm_node:
  ros__parameters:
    model: {folder / 'vlm'}
    view_names: [{', '.join(VIEWS)}]
    image_width: 112
    image_height: 56
    torch_threads: 1
    warmup_runs: 0
    max_view_age_s: 1.0
/**/action_expert:
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


def test_compare_modes_end_to_end(tmp_path, models, ros_env, cell_bag_writer):
    params, checkpoint = models
    cell_bag_writer(tmp_path / 'cell', DURATION_S, VIEWS)
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
