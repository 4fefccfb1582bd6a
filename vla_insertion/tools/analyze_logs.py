"""analyze_logs: summary statistics of a run, from its bag or from a node log file.

    analyze_logs artifacts/bags/vla_20250101_120000      # a bag folder
    analyze_logs log/action_expert.log vlm_node.log      # node log files (status lines)
    analyze_logs BAG --json summary.json

From a bag: action chunks (count, rate, inference ms, feature age and reuse), VL features
(count, rate, inference ms), vla/stats per node (rate, latency, input age, drops) and
/diagnostics (status counts by level, last message and values per status).
From a log: every `key value unit` / `key=value` field of the ` | `-separated status lines per
node (count, mean, min, max, last) and the WARN/ERROR lines grouped by message.
"""
from __future__ import annotations

import argparse
from collections import Counter, defaultdict
import json
from pathlib import Path
import re
import sys

import numpy as np

from vla_insertion.core import bag

from vla_insertion.core.evaluation import metrics

_LEVELS = {0: 'OK', 1: 'WARN', 2: 'ERROR', 3: 'STALE'}
_LINE = re.compile(r'^\[(?P<level>[A-Z]+)\]\s*\[[\d.]+\]\s*\[(?P<node>[^\]]+)\]:\s*(?P<text>.*)$')
_FIELD = re.compile(r'^(?P<key>[A-Za-z][A-Za-z _]*?)\s*:?\s+(?P<value>-?\d+(?:\.\d+)?)\s*'
                    r'(?P<unit>[A-Za-z%/]*)')
_PAIR = re.compile(r'(?P<key>[A-Za-z_][\w.]*)=(?P<value>-?\d+(?:\.\d+)?)')
_NUMBER = re.compile(r'(?<![\w.])-?\d+(?:\.\d+)?')


def _stamp_s(msg) -> float:
    return bag.header_stamp_ns(msg) * 1e-9


def summarize_bag(path: str | Path) -> dict:
    """Return chunk, feature, stats and diagnostics statistics of a recorded run."""
    info = bag.bag_info(path)
    chunks, features, stats, diags = [], [], defaultdict(list), defaultdict(list)
    for topic, _log_ns, msg in bag.read_messages(path):
        name = topic.lstrip('/')
        if name.endswith('vla/action_chunk'):
            chunks.append(msg)
        elif name.endswith('vla/features'):
            features.append(msg)
        elif name.endswith('vla/stats'):
            stats[msg.node].append(msg)
        elif name.endswith('diagnostics'):
            for status in msg.status:
                diags[status.name].append(status)
    out: dict = {'bag': str(path), 'duration_s': info.duration_s,
                 'messages': {t: s.count for t, s in info.topics.items()}}
    if chunks:
        out['action_chunks'] = {
            'rate': metrics.action_rate(np.array(sorted(_stamp_s(c) for c in chunks)), 0.1),
            'inference_ms': metrics.summary([c.inference_ms for c in chunks]),
            'feature_age_s': metrics.summary([c.feature_age_s for c in chunks]),
            'sensor_age_s': metrics.summary([c.sensor_age_s for c in chunks]),
            'reuse_index': metrics.summary([c.reuse_index for c in chunks]),
            'distinct_features': len({c.feature_sequence for c in chunks}),
            'sequence_gaps': int(sum(max(0, b.sequence - a.sequence - 1)
                                     for a, b in zip(chunks, chunks[1:]))),
        }
    if features:
        stamps = np.array(sorted(_stamp_s(f) for f in features))
        out['vl_features'] = {'rate': metrics.action_rate(stamps),
                              'inference_ms': metrics.summary([f.inference_ms for f in features]),
                              'untrained': bool(features[-1].untrained),
                              'contract_hash': features[-1].contract_hash}
    out['node_stats'] = {
        node: {'reports': len(ms), 'rate_hz': metrics.summary([m.rate_hz for m in ms]),
               'latency_mean_ms': metrics.summary([m.latency_mean_ms for m in ms]),
               'latency_p99_ms': metrics.summary([m.latency_p99_ms for m in ms]),
               'input_age_s': metrics.summary([m.input_age_s for m in ms]),
               'published': int(ms[-1].published), 'dropped': int(ms[-1].dropped)}
        for node, ms in sorted(stats.items())}
    out['diagnostics'] = {
        name: {'levels': dict(Counter(_LEVELS.get(int(s.level), str(s.level)) for s in ss)),
               'last_message': ss[-1].message,
               'last_values': {kv.key: kv.value for kv in ss[-1].values}}
        for name, ss in sorted(diags.items())}
    return out


def summarize_log(lines) -> dict:
    """Return per-node statistics of the numeric status-line fields and the warnings."""
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    problems: dict[str, Counter] = defaultdict(Counter)
    for line in lines:
        m = _LINE.match(line.strip())
        if not m:
            continue
        node, text = m['node'], m['text']
        if m['level'] in ('WARN', 'ERROR', 'FATAL'):
            # group messages that differ only in their numbers (not digits in names: zed_2)
            problems[node][f'{m["level"]}: {_NUMBER.sub("#", text)}'] += 1
        if ' | ' not in text:
            continue
        for part in text.split(' | '):
            part = part.strip()
            pairs = _PAIR.findall(part)
            for key, value in pairs:
                values[node][key].append(float(value))
            f = _FIELD.match(part)
            if f and not pairs:
                key = f['key'].strip().lower().replace(' ', '_')
                values[node][key + (f'_{f["unit"]}' if f['unit'] else '')].append(
                    float(f['value']))
    return {'nodes': {node: {key: {'n': len(v), 'mean': float(np.mean(v)),
                                   'min': float(np.min(v)), 'max': float(np.max(v)),
                                   'last': v[-1]} for key, v in fields.items()}
                      for node, fields in values.items()},
            'problems': {node: dict(c.most_common(20)) for node, c in problems.items()}}


def _print(summary: dict, indent: int = 0) -> None:
    pad = '  ' * indent
    for key, value in summary.items():
        if isinstance(value, dict) and value and not ({'mean', 'p50'} & set(value)):
            print(f'{pad}{key}:')
            _print(value, indent + 1)
        elif isinstance(value, dict) and 'mean' in value:
            print(f'{pad}{key}: ' + ', '.join(
                f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}'
                for k, v in value.items()))
        else:
            print(f'{pad}{key}: {value:.4g}' if isinstance(value, float)
                  else f'{pad}{key}: {value}')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='analyze_logs', description=__doc__.split('\n\n')[0])
    parser.add_argument('inputs', nargs='+', help='bag folders and/or node log files')
    parser.add_argument('--json', help='also write the summary to this JSON file')
    args = parser.parse_args(argv)
    result = {}
    log_lines: list[str] = []
    try:
        for item in args.inputs:
            path = Path(item)
            if path.is_dir():
                result[str(path)] = summarize_bag(path)
            else:
                log_lines += path.read_text(errors='replace').splitlines()
    except (bag.BagError, OSError) as exc:
        print(f'analyze_logs: {exc}', file=sys.stderr)
        return 2
    if log_lines:
        result['logs'] = summarize_log(log_lines)
    _print(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=float))
    return 0


if __name__ == '__main__':
    sys.exit(main())
