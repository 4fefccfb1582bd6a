"""Data-parallel training: 2 CPU processes under torchrun give the loss curve of 1 process.

Both runs use the same global batch (16): every process draws the whole batch from the same
seeded generator and takes its half; DDP averages the gradients. The expected difference is only
the order of float sums (gloo's all-reduce, two half-batch means instead of one mean), so the
curves agree to rtol 1e-4 over 20 steps. The processes talk over loopback on a free port
(torchrun --standalone); every wait is bounded by a subprocess timeout.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
import subprocess
import sys

import numpy as np

from vla_insertion.core.expert.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[3]


def train(cached_bags, out: Path, processes: int) -> list[dict]:
    args = [*cached_bags['bags'], '--cache', cached_bags['cache'], '--steps', '20',
            '--batch-size', '16', '--warmup-steps', '3', '--val-fraction', '0.34',
            '--val-every', '5', '--head', 'flow', '--prefix-conditioning', '--out', str(out),
            '--no-progress', '--threads', '1']
    launcher = [sys.executable, '-m', 'torch.distributed.run', '--standalone',
                f'--nproc_per_node={processes}'] if processes > 1 else [sys.executable]
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'GLOO_SOCKET_IFNAME': 'lo',
           'HF_HUB_OFFLINE': '1'}
    result = subprocess.run(launcher + ['-m', 'vla_insertion.tools.train_expert', *args],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-4000:])
    with open(out / 'metrics.csv', newline='') as f:
        return list(csv.DictReader(f))


def test_two_processes_follow_the_loss_curve_of_one(cached_bags, tmp_path):
    one = train(cached_bags, tmp_path / 'one', 1)
    two = train(cached_bags, tmp_path / 'two', 2)
    assert [r['step'] for r in two] == [str(s) for s in range(1, 21)]
    for column in ('loss', 'val_loss', 'lr', 'feature_age_s'):
        np.testing.assert_allclose([float(r[column]) for r in two],
                                   [float(r[column]) for r in one], rtol=1e-4, atol=1e-7,
                                   err_msg=column)
    a = load_checkpoint(tmp_path / 'one' / 'last').model.state_dict()
    b = load_checkpoint(tmp_path / 'two' / 'last').model.state_dict()
    # The attention-score bias of VLPooling shifts every token's score of a query equally, so
    # the softmax ignores it: its gradient is rounding noise, which Adam scales to full steps.
    # It is the one weight whose value the order of float sums decides.
    for name in (n for n in a if n != 'vl_pooling.score.bias'):
        np.testing.assert_allclose(b[name].numpy(), a[name].numpy(), rtol=1e-3, atol=1e-5,
                                   err_msg=name)
