"""Benchmark: bag_recorder keeping up with the full cell's topic load.

A publisher process plays the cell at its real rates: 5 camera views at 30 FPS with 640x360
JPEG frames, robot joint states and pose at 100 Hz, sensor windows (65 x 7) at --window-hz
(650 = one per sample, the worst case; 65 = one per 10-sample batch), VL features (40 x 2048,
the 3B model's size) at 3 Hz, action chunks at 10 Hz and diagnostics at 5 Hz. bag_recorder
runs as its own process. Reported: published vs recorded per topic, recorder CPU (% of one
core), bag size and write throughput.

    python benchmarks/bench_recorder.py --duration 600     # the 10-minute target
    python benchmarks/bench_recorder.py --duration 60      # shorter
"""
from __future__ import annotations

import argparse
import io
import json
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import print_table, ROOT, write_json  # noqa: E402

VIEWS = ('zed_1', 'zed_2', 'zed_3', 'zed_4', 'oak')


def publisher(duration_s: float, window_hz: float, counts_path: str) -> None:
    """Publish the cell's topics at their rates; write the published counts as JSON."""
    from PIL import Image, ImageDraw
    import rclpy
    from rclpy.node import Node

    from vla_insertion import conversions as conv
    from vla_insertion.core.data import ActionChunkData, SensorWindowData, VLFeatureData
    from vla_insertion.msg import ActionChunk, SensorWindow, VLFeatures
    from vla_insertion.ros.qos import (
        DIAGNOSTICS_QOS, LATEST_QOS, SENSOR_QOS, STATE_QOS, WINDOW_QOS)
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import CompressedImage, JointState

    rng = np.random.default_rng(0)
    frames = []
    for k in range(8):                        # a plausible scene: gradient, shapes, noise
        base = np.linspace(40, 200, 640)[None, :, None] * np.ones((360, 1, 3))
        img = Image.fromarray(np.clip(base + rng.normal(0, 6, (360, 640, 3)), 0, 255)
                              .astype(np.uint8))
        draw = ImageDraw.Draw(img)
        draw.rectangle([200 + 10 * k, 120, 320 + 10 * k, 240], fill=(90, 90, 160))
        draw.ellipse([400, 100 + 5 * k, 470, 170 + 5 * k], fill=(200, 60, 60))
        buf = io.BytesIO()
        img.save(buf, 'JPEG', quality=80)
        frames.append(buf.getvalue())
    rclpy.init()
    node = Node('bench_cell')
    pubs = {f'cameras/{v}/image/compressed': node.create_publisher(
        CompressedImage, f'cameras/{v}/image/compressed', SENSOR_QOS) for v in VIEWS}
    pubs['robot/joint_states'] = node.create_publisher(JointState, 'robot/joint_states',
                                                       STATE_QOS)
    pubs['robot/pose'] = node.create_publisher(PoseStamped, 'robot/pose', STATE_QOS)
    pubs['sensor/window'] = node.create_publisher(SensorWindow, 'sensor/window', WINDOW_QOS)
    pubs['vla/features'] = node.create_publisher(VLFeatures, 'vla/features', LATEST_QOS)
    pubs['vla/action_chunk'] = node.create_publisher(ActionChunk, 'vla/action_chunk',
                                                     STATE_QOS)
    pubs['/diagnostics'] = node.create_publisher(DiagnosticArray, '/diagnostics',
                                                 DIAGNOSTICS_QOS)
    images = []
    for data in frames:
        msg = CompressedImage()
        msg.format = 'jpeg'
        msg.data = data
        images.append(msg)
    joints, pose = JointState(), PoseStamped()
    joints.name = [f'joint_{j + 1}' for j in range(6)]
    joints.position = [0.1] * 6
    window = conv.sensor_window_to_msg(SensorWindowData(
        stamp_s=1.0, samples=rng.standard_normal((65, 7)).astype(np.float32),
        valid_samples=65, sample_rate_hz=650.0, channel_names=tuple('abcdefg')))
    features = conv.vl_features_to_msg(VLFeatureData(
        stamp_s=1.0, features=rng.standard_normal((40, 2048)).astype(np.float32), sequence=0,
        contract_hash='bench', model_id='bench', view_names=VIEWS,
        view_stamps_s=(1.0,) * 5))
    chunk = conv.action_chunk_to_msg(ActionChunkData(
        stamp_s=1.0, actions=rng.standard_normal((8, 7)).astype(np.float32), dt_s=0.1))
    diag = DiagnosticArray()
    schedule = [(1 / 30, [f'cameras/{v}/image/compressed' for v in VIEWS]),
                (1 / 100, ['robot/joint_states', 'robot/pose']),
                (1 / window_hz, ['sensor/window']), (1 / 3, ['vla/features']),
                (1 / 10, ['vla/action_chunk']), (1 / 5, ['/diagnostics'])]
    deadline = time.monotonic() + 60
    while not all(p.get_subscription_count() for p in pubs.values()):
        if time.monotonic() > deadline:
            raise SystemExit('recorder did not subscribe within 60 s')
        time.sleep(0.05)
    time.sleep(0.5)
    counts = dict.fromkeys(pubs, 0)
    start = time.monotonic()
    due = [start] * len(schedule)
    k = 0
    while True:
        now = time.monotonic()
        if now - start >= duration_s:
            break
        i = int(np.argmin(due))
        if due[i] > now:
            time.sleep(due[i] - now)
        period, topics = schedule[i]
        stamp = conv.time_to_msg(time.time())
        for topic in topics:
            if topic.startswith('cameras'):
                msg = images[k % len(images)]
                k += 1
            else:
                msg = {'robot/joint_states': joints, 'robot/pose': pose,
                       'sensor/window': window, 'vla/features': features,
                       'vla/action_chunk': chunk, '/diagnostics': diag}[topic]
            msg.header.stamp = stamp
            pubs[topic].publish(msg)
            counts[topic] += 1
        due[i] += period
    time.sleep(1.0)
    Path(counts_path).write_text(json.dumps(counts))
    node.destroy_node()
    rclpy.try_shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--duration', type=float, default=600.0, help='seconds of load')
    parser.add_argument('--window-hz', type=float, default=650.0,
                        help='sensor window rate (650 per sample, 65 per batch)')
    parser.add_argument('--storage', choices=['mcap', 'sqlite3'], default='mcap')
    parser.add_argument('--keep', action='store_true', help='keep the bag')
    parser.add_argument('--publisher', metavar='COUNTS_JSON', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publisher:
        publisher(args.duration, args.window_hz, args.publisher)
        return 0
    from vla_insertion.core import bag
    from vla_insertion.core.distro import localhost_discovery

    work = Path(tempfile.mkdtemp(prefix='bench_recorder_'))
    env = dict(os.environ)
    env.setdefault('ROS_DOMAIN_ID', '231')
    localhost_discovery(env)
    env['PYTHONPATH'] = f'{ROOT}{os.pathsep}{env.get("PYTHONPATH", "")}'
    topics = [f'cameras/{v}/image/compressed' for v in VIEWS] + [
        'robot/joint_states', 'robot/pose', 'sensor/window', 'vla/features',
        'vla/action_chunk', '/diagnostics']
    recorder = subprocess.Popen(
        [sys.executable, '-m', 'vla_insertion.tools.bag_recorder', '-o', str(work), '-n',
         'bench', '-s', args.storage, '-t', *topics], env=env,
        stdout=open(work / 'recorder.log', 'w'), stderr=subprocess.STDOUT)
    proc = psutil.Process(recorder.pid)
    counts_path = work / 'published.json'
    pub = subprocess.Popen([sys.executable, __file__, '--publisher', str(counts_path),
                            '--duration', str(args.duration), '--window-hz',
                            str(args.window_hz)], env=env)
    cpu, rss = [], []
    proc.cpu_percent(None)
    t_start = time.monotonic()
    while pub.poll() is None:
        time.sleep(1.0)
        cpu.append(proc.cpu_percent(None))
        rss.append(proc.memory_info().rss / 2**20)
    wall = time.monotonic() - t_start
    recorder.send_signal(signal.SIGINT)
    recorder.wait(120)
    if pub.returncode != 0:
        print((work / 'recorder.log').read_text()[-2000:])
        return 1
    published = json.loads(counts_path.read_text())
    info = bag.bag_info(work / 'bench')
    recorded = {t.lstrip('/'): s.count for t, s in info.topics.items()}
    size = sum(f.stat().st_size for f in (work / 'bench').iterdir())
    rows = []
    for topic, n in published.items():
        got = recorded.get(topic.lstrip('/'), 0)
        if topic == '/diagnostics':
            got = recorded.get('diagnostics', 0)
        rows.append({'topic': topic, 'published': n, 'recorded': got, 'lost': n - got})
    # the recorder's own /diagnostics are recorded too: count only as many as were published
    for r in rows:
        if r['topic'] == '/diagnostics':
            r['recorded'] = min(r['recorded'], r['published'])
            r['lost'] = r['published'] - r['recorded']
    cpu_steady = cpu[3:-1] or cpu
    summary = {'duration_s': args.duration, 'window_hz': args.window_hz,
               'storage': args.storage, 'messages_published': sum(published.values()),
               'messages_lost': sum(r['lost'] for r in rows), 'bag_mb': size / 2**20,
               'write_mb_s': size / 2**20 / args.duration,
               'recorder_cpu_mean_pct': float(np.mean(cpu_steady)),
               'recorder_cpu_p95_pct': float(np.percentile(cpu_steady, 95)),
               'recorder_rss_max_mb': float(max(rss)), 'split_files': len(
                   list((work / 'bench').glob('bench_*'))), 'wall_s': wall}
    print_table(f'bag_recorder, {args.duration:.0f} s of the full cell ({args.storage})', rows)
    print_table('summary', [summary])
    write_json('bench_recorder', {'summary': summary, 'topics': rows})
    if not args.keep:
        shutil.rmtree(work)
    else:
        print(f'bag kept in {work / "bench"}')
    return 0 if summary['messages_lost'] == 0 else 1


if __name__ == '__main__':
    sys.exit(main())
