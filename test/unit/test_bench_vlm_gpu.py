"""benchmarks/bench_vlm_gpu.py on the CPU: the smoke mode runs every case's code, the budget holds.

The GPU run itself cannot happen here; these runs make sure that the one command prepared for a
GPU machine gets past everything that does not need the GPU: model build, the fast and stock
preprocessing, the compiled path (dynamo with the 'eager' backend), the table and the JSON.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow         # the benchmark script runs as a program

SCRIPT = Path(__file__).resolve().parents[2] / 'benchmarks' / 'bench_vlm_gpu.py'


def run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    env = {**os.environ, 'VLA_BENCH_DIR': str(tmp_path), 'HF_HUB_OFFLINE': '1'}
    result = subprocess.run([sys.executable, str(SCRIPT), '--smoke-cpu', '--views', '1',
                             '--width', '56', '--height', '56', *args],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result, json.loads((tmp_path / 'vlm_gpu_smoke.json').read_text())['smoke']


def test_the_smoke_run_times_eager_stock_and_compiled_cases(tmp_path):
    result, report = run(tmp_path, '--runs', '1', '--warmup', '0')
    rows = {row['case']: row for row in report['results']}
    assert set(rows) == {'eager', 'eager-stock', 'compile', 'cudagraphs'}
    for case in ('eager', 'eager-stock', 'compile'):
        assert rows[case]['note'] == '', rows[case]
        assert rows[case]['forward_p50_ms'] > 0 and rows[case]['first_call_s'] > 0
    assert rows['eager']['preprocessing'] == 'fast'
    assert rows['eager-stock']['preprocessing'] == 'processor'
    assert rows['cudagraphs']['note'].startswith('skipped')
    assert report['compile_backend'] == 'eager'
    assert 'forward_p50_ms' in result.stdout


def test_a_spent_budget_skips_the_cases_and_still_reports(tmp_path):
    result, report = run(tmp_path, '--budget-s', '0', '--cases', 'eager', 'compile')
    assert [row['note'] for row in report['results']] == ['skipped: budget spent'] * 2
    assert 'skipped: budget spent' in result.stdout
