"""analyze_logs summarises a bag and node logs written here, with known answers."""
import json
from pathlib import Path

import numpy as np
import pytest

from vla_insertion.core import bag
from vla_insertion.core.bag import header, make_message
from vla_insertion.tools import analyze_logs

T0 = 1_700_000_000_000_000_000          # ns, a plausible wall-clock epoch
SECOND = 1_000_000_000
CHUNK_TOPIC = '/cell/vla/action_chunk'  # namespaced: the tool matches by suffix
TOPICS = {
    CHUNK_TOPIC: 'vla_insertion/msg/ActionChunk',
    'vla/features': 'vla_insertion/msg/VLFeatures',
    'vla/stats': 'vla_insertion/msg/NodeStats',
    '/diagnostics': 'diagnostic_msgs/msg/DiagnosticArray',
    'robot/joint_states': 'sensor_msgs/msg/JointState',
}
N_CHUNKS = 21
# Every value below is exact in float32, so the bag gives them back unchanged.
INFERENCE_MS = [20.0 + 0.5 * i for i in range(N_CHUNKS)]          # mean 25.0
FEATURE_AGE_S = [0.125 * (i % 4) for i in range(N_CHUNKS)]        # sum 3.75
REUSE = [i % 3 + 1 for i in range(N_CHUNKS)]                      # mean 2.0
SENSOR_AGE_S = [0.25] * N_CHUNKS
FEATURE_INFERENCE_MS = [100.0, 110.0, 120.0, 130.0]               # mean 115.0
STATS = {  # node -> (rate_hz, latency_mean_ms, latency_p99_ms, input_age_s, published, dropped)
    'action_expert': [(9.5, 30.0, 40.0, 0.5, 10, 0), (10.0, 32.0, 44.0, 0.75, 20, 1),
                      (10.5, 34.0, 48.0, 1.0, 30, 2)],
    'vlm_node': [(2.0, 400.0, 500.0, 0.25, 5, 3), (1.0, 300.0, 350.0, 0.5, 7, 4)],
}
DIAG_LEVELS = {'action_expert: actions': [0, 0, 0, 3], 'vlm_node: features': [0, 1, 1, 2]}
N_DIAG = 4


def _chunk(i: int, stamp_ns: int):
    return make_message(
        TOPICS[CHUNK_TOPIC], header=header(stamp_ns), dt_s=0.1, horizon=8, action_dim=7,
        actions=np.zeros(56, np.float32),
        sequence=i + (1 if i >= 10 else 0),  # one chunk (sequence 10) is missing
        feature_sequence=i // 3, reuse_index=REUSE[i], feature_age_s=FEATURE_AGE_S[i],
        sensor_age_s=SENSOR_AGE_S[i], inference_ms=INFERENCE_MS[i])


def _diagnostics(k: int, stamp_ns: int):
    status = [make_message('diagnostic_msgs/msg/DiagnosticStatus', name=name, level=levels[k],
                           message=f'{name} report {k}', hardware_id='cell',
                           values=[make_message('diagnostic_msgs/msg/KeyValue', key='k',
                                                value=str(k)),
                                   make_message('diagnostic_msgs/msg/KeyValue',
                                                key='drops.late', value=str(10 * k))])
              for name, levels in DIAG_LEVELS.items()]
    return make_message(TOPICS['/diagnostics'], header=header(stamp_ns), status=status)


def write_run(path: Path) -> None:
    """Write a 2 s run: chunks at exactly 10 Hz, features at 2 Hz, stats and diagnostics."""
    with bag.BagWriter(path, storage='mcap') as writer:
        for topic, msgtype in TOPICS.items():
            writer.add_topic(topic, msgtype)
        out = []
        for i in range(N_CHUNKS):  # header stamps exactly 10 Hz, log times jittered
            stamp_ns = T0 + i * SECOND // 10
            out.append((stamp_ns + 3_000_000 * (i % 2), CHUNK_TOPIC, _chunk(i, stamp_ns)))
        for k, ms in enumerate(FEATURE_INFERENCE_MS):
            stamp_ns = T0 + k * SECOND // 2
            out.append((stamp_ns + 1000, 'vla/features', make_message(
                TOPICS['vla/features'], header=header(stamp_ns), sequence=k,
                model_id='tiny', contract_hash=f'hash{k}', untrained=k < 3, inference_ms=ms)))
        for node, reports in STATS.items():
            for k, (rate, mean, p99, age, published, dropped) in enumerate(reports):
                stamp_ns = T0 + k * SECOND // 2 + 2000
                out.append((stamp_ns, 'vla/stats', make_message(
                    TOPICS['vla/stats'], header=header(stamp_ns), node=node, rate_hz=rate,
                    latency_mean_ms=mean, latency_p99_ms=p99, input_age_s=age,
                    published=published, dropped=dropped)))
        for k in range(N_DIAG):
            stamp_ns = T0 + k * SECOND // 2 + 3000
            out.append((stamp_ns, '/diagnostics', _diagnostics(k, stamp_ns)))
        for k in range(3):
            stamp_ns = T0 + k * SECOND // 2 + 4000
            out.append((stamp_ns, 'robot/joint_states', make_message(
                TOPICS['robot/joint_states'], header=header(stamp_ns))))
        for log_ns, topic, msg in sorted(out, key=lambda m: m[0]):
            writer.write_msg(topic, log_ns, msg)


@pytest.fixture(scope='module')
def run_bag(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp('analyze') / 'run'
    write_run(path)
    return path


def test_bag_counts_and_duration(run_bag):
    s = analyze_logs.summarize_bag(run_bag)
    assert s['bag'] == str(run_bag)
    assert s['messages'] == {CHUNK_TOPIC: N_CHUNKS, 'vla/features': 4, 'vla/stats': 5,
                             '/diagnostics': N_DIAG, 'robot/joint_states': 3}
    # first log time T0, last T0 + 2 s + 0 ms jitter (i = 20 is even)
    assert s['duration_s'] == pytest.approx(2.0, abs=1e-6)


def test_bag_action_chunks(run_bag):
    c = analyze_logs.summarize_bag(run_bag)['action_chunks']
    rate = c['rate']
    assert rate['chunks'] == N_CHUNKS
    assert rate['span_s'] == pytest.approx(2.0, abs=1e-6)
    assert rate['rate_hz'] == pytest.approx(10.0, rel=1e-6)
    assert rate['period_ms']['mean'] == pytest.approx(100.0, abs=1e-3)
    assert rate['period_ms']['n'] == N_CHUNKS - 1
    # the header stamps are exactly 10 Hz; the 3 ms log-time jitter must not show up
    assert rate['period_error_ms']['max'] == pytest.approx(0.0, abs=1e-3)
    assert c['inference_ms']['mean'] == 25.0
    assert c['inference_ms']['max'] == 30.0
    assert c['inference_ms']['n'] == N_CHUNKS
    assert c['feature_age_s']['mean'] == pytest.approx(3.75 / N_CHUNKS)
    assert c['feature_age_s']['max'] == 0.375
    assert c['sensor_age_s']['mean'] == 0.25
    assert c['reuse_index']['mean'] == 2.0
    assert c['reuse_index']['max'] == 3.0
    assert c['distinct_features'] == 7
    assert c['sequence_gaps'] == 1


def test_bag_features(run_bag):
    f = analyze_logs.summarize_bag(run_bag)['vl_features']
    assert f['rate']['chunks'] == 4
    assert f['rate']['rate_hz'] == pytest.approx(2.0, rel=1e-6)
    assert f['inference_ms']['mean'] == 115.0
    assert f['inference_ms']['max'] == 130.0
    assert f['untrained'] is False        # the last message's flag
    assert f['contract_hash'] == 'hash3'


def test_bag_node_stats(run_bag):
    stats = analyze_logs.summarize_bag(run_bag)['node_stats']
    assert list(stats) == ['action_expert', 'vlm_node']
    expert, vlm = stats['action_expert'], stats['vlm_node']
    assert expert['reports'] == 3
    assert expert['rate_hz']['mean'] == 10.0
    assert expert['rate_hz']['max'] == 10.5
    assert expert['latency_mean_ms']['mean'] == 32.0
    assert expert['latency_p99_ms']['max'] == 48.0
    assert expert['input_age_s']['mean'] == 0.75
    assert (expert['published'], expert['dropped']) == (30, 2)
    assert vlm['reports'] == 2
    assert vlm['rate_hz']['mean'] == 1.5
    assert vlm['latency_mean_ms']['mean'] == 350.0
    assert vlm['input_age_s']['max'] == 0.5
    assert (vlm['published'], vlm['dropped']) == (7, 4)


def test_bag_diagnostics(run_bag):
    d = analyze_logs.summarize_bag(run_bag)['diagnostics']
    assert d == {
        'action_expert: actions': {
            'levels': {'OK': 3, 'STALE': 1},
            'last_message': 'action_expert: actions report 3',
            'last_values': {'k': '3', 'drops.late': '30'}},
        'vlm_node: features': {
            'levels': {'OK': 1, 'WARN': 2, 'ERROR': 1},
            'last_message': 'vlm_node: features report 3',
            'last_values': {'k': '3', 'drops.late': '30'}},
    }


def test_bag_without_chunks_or_features(tmp_path):
    with bag.BagWriter(tmp_path / 'b') as writer:
        writer.add_topic('/diagnostics', TOPICS['/diagnostics'])
        writer.write_msg('/diagnostics', T0, _diagnostics(0, T0))
    s = analyze_logs.summarize_bag(tmp_path / 'b')
    assert 'action_chunks' not in s and 'vl_features' not in s
    assert s['node_stats'] == {}
    assert s['diagnostics']['vlm_node: features']['levels'] == {'OK': 1}


EXPERT_LOG = """\
[INFO] [1795325780.245210003] [action_expert]: Action expert ready (horizon 8, dt 0.1 s)
[INFO] [1795325785.245210003] [action_expert]: Actions: 12 | rate 2.4 Hz | avg 30.1 ms \
| reuse avg 1.5 | feature age avg 0.50 s
[INFO] [1795325790.245210003] [action_expert]: Actions: 26 | rate 1.2 Hz | avg 28.7 ms \
| reuse avg 1.9 | feature age avg 0.86 s | refused features_too_old=126, no_features=297
[WARN] [1795325791.000000000] [action_expert]: refusing features 1.52 s old (max 1.0 s)
Traceback (most recent call last): not a log line | value 5
[WARN] [1795325793.000000000] [action_expert]: refusing features 2.04 s old (max 1.0 s)
[WARN] [1795325794.000000000] [action_expert]: chunk late by 120ms
[WARN] [1795325794.500000000] [action_expert]: chunk late by 95ms
[INFO] [1795325795.245210003] [action_expert]: Actions: 41 | rate 3.0 Hz | avg 27.3 ms \
| reuse avg 2.3 | feature age avg 0.74 s | refused features_too_old=130, no_features=297
"""
VLM_LOG = """\
[INFO] [1795325785.100000000] [vlm_node]: VL updates: 3 | VL avg: 120ms | VL rate: 0.83 Hz \
| feature age avg: 450ms | frames: zed_1=10 zed_2=9 | skipped missing_views=2 | untrained
[WARN] [1795325786.100000000] [vlm_node]: VL set skipped: missing views: zed_2
[WARN] [1795325788.100000000] [vlm_node]: VL set skipped: missing views: zed_2
[WARN] [1795325789.100000000] [vlm_node]: VL set skipped: missing views: zed_3
[ERROR] [1795325789.500000000] [vlm_node]: inference failed after 3 retries
[INFO] [1795325790.100000000] [vlm_node]: VL updates: 7 | VL avg: 110ms | VL rate: 1.00 Hz \
| feature age avg: 430ms | frames: zed_1=30 zed_2=26 | skipped missing_views=5 | untrained
"""


def _field(n, mean, lo, hi, last) -> dict:
    return {'n': n, 'mean': pytest.approx(mean), 'min': lo, 'max': hi, 'last': last}


def test_log_status_fields():
    s = analyze_logs.summarize_log((EXPERT_LOG + VLM_LOG).splitlines())
    assert set(s['nodes']) == {'action_expert', 'vlm_node'}
    assert s['nodes']['action_expert'] == {
        'actions': _field(3, 79 / 3, 12.0, 41.0, 41.0),
        'rate_Hz': _field(3, 2.2, 1.2, 3.0, 3.0),
        'avg_ms': _field(3, 28.7, 27.3, 30.1, 27.3),
        'reuse_avg': _field(3, 1.9, 1.5, 2.3, 2.3),
        'feature_age_avg_s': _field(3, 0.7, 0.5, 0.86, 0.74),
        'features_too_old': _field(2, 128.0, 126.0, 130.0, 130.0),
        'no_features': _field(2, 297.0, 297.0, 297.0, 297.0),
    }
    assert s['nodes']['vlm_node'] == {
        'vl_updates': _field(2, 5.0, 3.0, 7.0, 7.0),
        'vl_avg_ms': _field(2, 115.0, 110.0, 120.0, 110.0),
        'vl_rate_Hz': _field(2, 0.915, 0.83, 1.0, 1.0),
        'feature_age_avg_ms': _field(2, 440.0, 430.0, 450.0, 430.0),
        'zed_1': _field(2, 20.0, 10.0, 30.0, 30.0),
        'zed_2': _field(2, 17.5, 9.0, 26.0, 26.0),
        'missing_views': _field(2, 3.5, 2.0, 5.0, 5.0),
    }


def test_log_warnings_grouped_by_message():
    problems = analyze_logs.summarize_log((EXPERT_LOG + VLM_LOG).splitlines())['problems']
    assert problems == {
        # lines that differ only in their numbers are one group
        'action_expert': {'WARN: refusing features # s old (max # s)': 2,
                          'WARN: chunk late by #ms': 2},
        # a view name is not a number: zed_2 and zed_3 stay apart
        'vlm_node': {'WARN: VL set skipped: missing views: zed_2': 2,
                     'WARN: VL set skipped: missing views: zed_3': 1,
                     'ERROR: inference failed after # retries': 1},
    }


def test_log_without_status_lines():
    s = analyze_logs.summarize_log(['no log line here', '', '[INFO] [1.0] [n]: started'])
    assert s == {'nodes': {}, 'problems': {}}


def test_cli_bag_to_json(run_bag, tmp_path, capsys):
    out = tmp_path / 'summary.json'
    assert analyze_logs.main([str(run_bag), '--json', str(out)]) == 0
    printed = capsys.readouterr().out
    assert 'action_chunks:' in printed and 'vlm_node: features:' in printed
    result = json.loads(out.read_text())
    assert list(result) == [str(run_bag)]
    s = result[str(run_bag)]
    assert s == json.loads(json.dumps(analyze_logs.summarize_bag(run_bag)))
    assert s['messages'][CHUNK_TOPIC] == N_CHUNKS
    assert s['action_chunks']['rate']['rate_hz'] == pytest.approx(10.0, rel=1e-6)
    assert s['action_chunks']['inference_ms']['mean'] == 25.0
    assert s['node_stats']['action_expert']['published'] == 30
    assert s['diagnostics']['vlm_node: features']['levels'] == {'OK': 1, 'WARN': 2,
                                                                'ERROR': 1}


def test_cli_bag_and_logs(run_bag, tmp_path, capsys):
    (tmp_path / 'action_expert.log').write_text(EXPERT_LOG)
    (tmp_path / 'vlm_node.log').write_text(VLM_LOG)
    out = tmp_path / 'summary.json'
    argv = [str(tmp_path / 'action_expert.log'), str(run_bag), str(tmp_path / 'vlm_node.log'),
            '--json', str(out)]
    assert analyze_logs.main(argv) == 0
    capsys.readouterr()
    result = json.loads(out.read_text())
    assert set(result) == {str(run_bag), 'logs'}
    logs = result['logs']
    assert logs['nodes']['action_expert']['actions'] == {'n': 3, 'mean': pytest.approx(79 / 3),
                                                         'min': 12.0, 'max': 41.0,
                                                         'last': 41.0}
    assert logs['nodes']['vlm_node']['missing_views']['last'] == 5.0
    assert logs['problems']['vlm_node']['WARN: VL set skipped: missing views: zed_2'] == 2


def test_cli_missing_path(tmp_path, capsys):
    missing = tmp_path / 'no_such_run'
    out = tmp_path / 'summary.json'
    assert analyze_logs.main([str(missing), '--json', str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith('analyze_logs: ') and str(missing) in err
    assert not out.exists()


def test_cli_folder_that_is_not_a_bag(tmp_path, capsys):
    (tmp_path / 'empty').mkdir()
    assert analyze_logs.main([str(tmp_path / 'empty')]) == 2
    assert 'metadata.yaml' in capsys.readouterr().err
