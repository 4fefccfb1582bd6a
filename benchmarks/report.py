"""Shared output of the benchmark scripts: a printed table and a JSON file."""
from __future__ import annotations

import json
import os
from pathlib import Path
import platform
import time

import psutil

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = Path(os.environ.get('VLA_BENCH_DIR', ROOT / 'artifacts' / 'benchmarks'))


def machine() -> dict:
    return {'cpu_count': os.cpu_count(), 'memory_gib': round(psutil.virtual_memory().total
                                                             / 2**30, 1),
            'python': platform.python_version(), 'platform': platform.platform()}


def print_table(title: str, rows: list[dict]) -> None:
    """Print rows (dicts with the same keys) as an aligned text table."""
    print(f'\n{title}')
    if not rows:
        print('(no rows)')
        return
    keys = list(rows[0])
    cells = [[_fmt(r.get(k)) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    print('  '.join(k.ljust(w) for k, w in zip(keys, widths)))
    print('  '.join('-' * w for w in widths))
    for c in cells:
        print('  '.join(v.ljust(w) for v, w in zip(c, widths)))


def write_json(name: str, results: dict) -> Path:
    """Write results with the machine description to artifacts/benchmarks/<name>.json."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f'{name}.json'
    payload = {'benchmark': name, 'time': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
               'machine': machine(), **results}
    path.write_text(json.dumps(payload, indent=2, default=float))
    print(f'\nwrote {path}')
    return path


def _fmt(value) -> str:
    if isinstance(value, float):
        return f'{value:.3f}' if abs(value) < 1000 else f'{value:.0f}'
    return str(value)
