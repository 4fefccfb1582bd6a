"""Feature delivery and age across the link between a GPU host and a robot host.

Two network namespaces joined by a veth on this machine (core/orchestration/two_hosts.py, no
root); `link_probe send` on the GPU host publishes VLFeatures of the real 3B size (41 x 2048
float32 = 336 KB) at its 2.6 Hz, `link_probe listen` on the robot host and one on the GPU host
note each arrival. Every configuration runs the same timeline in fresh namespaces:

    clean      --clean-s     no loss
    loss       --loss-s      --loss of the UDP datagrams dropped, each way
    partition  3 s           every UDP datagram dropped, then the link returns
    after      --after-s     no loss

Per phase, of the feature sets published in it (by the sender's own list): delivered, in time
(the link added at most link_budget_s: the expert's max_feature_age_s less the 3B VLM's own
0.4 s), the link's delay (arrival on the robot host less arrival on the GPU host) and the age
on the robot host (arrival less the stamp, taken at publish(): it includes serialising and
deserialising 336 KB in Python), and the datagrams dropped. After the partition: how long
until a set published after it arrives, and the oldest arrival.

Configurations: the Fast DDS defaults and config/fastdds_two_hosts.xml, the features' QoS as
the topic table has it (reliable, keep last 1); with --best-effort also the profile with
best-effort features.

    python benchmarks/bench_two_hosts.py                 # about 3 minutes
    python benchmarks/bench_two_hosts.py --loss-s 30 --best-effort
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

from report import print_table, ROOT, write_json

from vla_insertion.core.config import ExpertConfig
from vla_insertion.core.evaluation.link import feature_delivery, link_budget_s, link_delays
from vla_insertion.core.orchestration.launch_table import (
    dds_environment, DDS_PROFILE_VARIABLE, DDS_PROFILE_VARIABLE_FASTDDS2, DDS_PROFILES,
    installed_paths)
from vla_insertion.core.orchestration.two_hosts import (
    env_for_hosts, GPU, Probe, ROBOT, TwoHosts, unavailable_reason)
from vla_insertion.core.params import load_config

PARTITION_S = 3.0
DISCOVERY_TIMEOUT_S = 60.0


def _wait(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def run_timeline(profile: str, reliability: str, args, budget_s: float, domain: int) -> dict:
    """Run one configuration's timeline in fresh namespaces; return its per-phase figures."""
    lib_dir, shipped = installed_paths()
    env = env_for_hosts(dict(os.environ), domain)
    for name in (DDS_PROFILE_VARIABLE, DDS_PROFILE_VARIABLE_FASTDDS2):
        env.pop(name, None)                # the defaults: no profile file at all
    env.update(dds_environment({'dds_profile': profile}, shipped.parent))
    probe, qos = lib_dir / 'link_probe', ['--reliability', reliability]
    marks: dict[str, tuple[float, float]] = {}     # phase -> its change began, took effect
    with TwoHosts() as net:
        with Probe(net, ROBOT, [probe, 'listen', *qos], env) as listener, \
                Probe(net, GPU, [probe, 'listen', *qos], env) as local, \
                Probe(net, GPU, [probe, 'send', *qos], env) as sender:
            if not _wait(lambda: listener.records('vla/features')      # both ends matched
                         and local.records('vla/features'), DISCOVERY_TIMEOUT_S):
                raise RuntimeError(f'{profile or "defaults"}: no feature crossed in '
                                   f'{DISCOVERY_TIMEOUT_S:.0f} s')
            bytes0 = net.sent_bytes()[GPU]
            for phase, seconds, loss in (('clean', args.clean_s, 0.0),
                                         ('loss', args.loss_s, args.loss),
                                         ('partition', PARTITION_S, 1.0),
                                         ('after', args.after_s, 0.0)):
                began = time.time()
                net.set_loss(loss)         # a few tc calls: sets sent meanwhile count nowhere
                marks[phase] = (began, time.time())
                time.sleep(seconds)        # the phase's length: this is the experiment
            marks['end'] = (time.time(), time.time())
            dropped, sent_bytes = net.dropped(), net.sent_bytes()[GPU] - bytes0
        sent, arrived = sender.records('sent'), listener.records('vla/features')
        here = local.records('vla/features')
    return _figures(sent, here, arrived, marks, budget_s) | {
        'datagrams_dropped': dropped, 'mb_sent_gpu_to_robot': sent_bytes / 1e6}


def _figures(sent: list[dict], here: list[dict], arrived: list[dict], marks: dict,
             budget_s: float) -> dict:
    phases = ('clean', 'loss', 'partition', 'after')
    edges = [marks[p] for p in phases] + [marks['end']]
    out = {}
    for phase, (_, start), (end, _) in zip(phases, edges, edges[1:]):
        published = [r['sequence'] for r in sent if start <= r['stamp_s'] < end]
        delays = link_delays([(r['sequence'], r['t_s']) for r in here],
                             [(r['sequence'], r['t_s']) for r in arrived])
        link = feature_delivery(delays, budget_s, published)
        age = feature_delivery([(r['sequence'], r['age_s']) for r in arrived], budget_s,
                               published)
        out[phase] = {**link, 'age_at_arrival_s_p50': age['age_s_p50'],
                      'age_at_arrival_s_p99': age['age_s_p99'],
                      'age_at_arrival_s_max': age['age_s_max']}
    heal = marks['after'][1]
    fresh = [r['t_s'] - heal for r in arrived if r['stamp_s'] >= heal]
    late = [r['age_s'] for r in arrived if r['t_s'] >= heal and r['stamp_s'] < heal]
    out['resume_s'] = min(fresh) if fresh else math.nan
    out['queued_after_partition'] = len(late)
    out['oldest_after_partition_s'] = max(late) if late else math.nan
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--clean-s', type=float, default=10.0)
    parser.add_argument('--loss-s', type=float, default=20.0)
    parser.add_argument('--after-s', type=float, default=10.0)
    parser.add_argument('--loss', type=float, default=0.01, help='fraction of UDP datagrams')
    parser.add_argument('--best-effort', action='store_true',
                        help='also the profile with best-effort features')
    parser.add_argument('--domain', type=int, default=int(os.environ.get('ROS_DOMAIN_ID', 0)),
                        help='ROS domain inside the namespaces (they see no other host)')
    args = parser.parse_args(argv)
    reason = unavailable_reason()
    if reason:
        print(f'cannot make two hosts here: {reason}', file=sys.stderr)
        return 1
    expert = load_config(ExpertConfig, 'action_expert', ROOT / 'config' / 'vla_insertion.yaml')
    budget_s = link_budget_s(expert.max_feature_age_s)
    configurations = [('', 'table'), ('two_hosts', 'table')]
    if args.best_effort:
        configurations.append(('two_hosts', 'best_effort'))
    results, rows = {}, []
    for profile, reliability in configurations:
        name = f'{profile or "defaults"}/{"reliable" if reliability == "table" else reliability}'
        print(f'== {name}', flush=True)
        figures = run_timeline(profile, reliability, args, budget_s, args.domain)
        results[name] = figures
        for phase in ('clean', 'loss', 'partition', 'after'):
            f = figures[phase]
            rows.append({'config': name, 'phase': phase, 'published': f['published'],
                         'delivered': f['delivered'], 'in_time': f['in_time'],
                         'link_ms_p50': f['age_s_p50'] * 1e3,
                         'link_ms_p99': f['age_s_p99'] * 1e3,
                         'link_ms_max': f['age_s_max'] * 1e3,
                         'age_ms_p50': f['age_at_arrival_s_p50'] * 1e3,
                         'age_ms_max': f['age_at_arrival_s_max'] * 1e3})
        rows.append({'config': name, 'phase': 'after heal',
                     'published': f'resume {figures["resume_s"]:.2f} s',
                     'delivered': f'{figures["queued_after_partition"]} older',
                     'in_time': f'oldest {figures["oldest_after_partition_s"]:.2f} s',
                     'link_ms_p50': '', 'link_ms_p99': '', 'link_ms_max': '',
                     'age_ms_p50': f'{figures["mb_sent_gpu_to_robot"]:.0f} MB',
                     'age_ms_max': f'drops {sum(figures["datagrams_dropped"].values())}'})
    print_table(f'Features of 336 KB at 2.6 Hz across a veth (loss {args.loss:.0%} each way, '
                f'{PARTITION_S:.0f} s partition); in time: the link adds <= '
                f'{budget_s * 1e3:.0f} ms', rows)
    write_json('bench_two_hosts', {
        'settings': {**vars(args), 'partition_s': PARTITION_S, 'link_budget_s': budget_s,
                     'profile_file': DDS_PROFILES['two_hosts'],
                     'load_avg': os.getloadavg()}, 'results': results})
    return 0


if __name__ == '__main__':
    sys.exit(main())
