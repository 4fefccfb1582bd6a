"""sim_cell: the robot cell's three senders, simulated, over real loopback sockets.

Cameras (ZMQ PUSH -> camera_bridge's PULL), robot state (ZMQ PUB, robot_bridge subscribes) and
the force/torque + distance sensor (UDP -> sensor_bridge), at their real rates, speaking the wire
formats of docs/wire.md with content from core.sim_scene: rendered views of a peg-in-hole scene,
an arm that approaches and inserts, forces that rise on contact. A plain process, not a ROS node.

    sim_cell                                   # defaults: 5 views x 30 FPS, 100 Hz, 650 Hz
    sim_cell --params-file config/vla_insertion.yaml --duration-s 30
    sim_cell --faults --fault-report /tmp/faults.json

With --faults each stream injects, every --fault-period-s and in a fixed cycle, one of: a
malformed packet (bad magic), a truncated one, an oversized one (one byte over the matching
bridge's default cap), one with NaN, a stale repeat of an older packet, and a sender restart
(new socket, new session id, sequence from 0). Faulty packets are extra: the good stream is
unchanged, so the bridges' counters must equal the injected counts (--fault-report).
"""
from __future__ import annotations

import argparse
from collections import Counter, deque
import json
import logging
import secrets
import signal
import socket
import sys
import threading
import time
import typing

import numpy as np
import zmq

from vla_insertion.core import params
from vla_insertion.core.config import (
    CameraBridgeConfig, ConfigError, field_docs, field_types, RobotBridgeConfig,
    SensorBridgeConfig, SimCellConfig)
from vla_insertion.core.sim_render import SceneRenderer
from vla_insertion.core.sim_scene import SimScene
from vla_insertion.core.wire import (
    CameraCodecV1, CameraMessage, RobotCodecV1, RobotMessage, SensorBatch, SensorCodecV1)

_LOG = logging.getLogger('sim_cell')
NODE_NAME = 'sim_cell'
FAULT_KINDS = ('malformed', 'truncated', 'oversized', 'nan', 'out_of_order', 'restart')
# What each injected fault is counted as by the bridges (their /diagnostics keys).
EXPECTED_CAUSE = {'malformed': 'drops.bad_magic', 'truncated': 'drops.truncated',
                  'oversized': 'drops.oversized', 'nan': 'drops.non_finite',
                  'out_of_order': 'drops.late', 'restart': 'sender_restarts'}
_RESTART_HOLDOFF_S = 1.0    # no fault right after a (re)start: subscribers are reconnecting


# --- configuration ------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """One flag per SimCellConfig field (--camera-fps ...), help text from the field comments."""
    parser = argparse.ArgumentParser(prog='sim_cell', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--params-file', help=f'ROS params YAML; reads node {NODE_NAME!r}')
    parser.add_argument('--log-level', default='INFO', choices=['DEBUG', 'INFO', 'WARNING'])
    docs = field_docs(SimCellConfig)
    defaults = SimCellConfig()
    for name, hint in field_types(SimCellConfig).items():
        flag = '--' + name.replace('_', '-')
        kwargs: dict = {'dest': name, 'default': argparse.SUPPRESS,
                        'help': f'{docs.get(name, "")} (default: {getattr(defaults, name)!r})'}
        if hint is bool:
            kwargs['action'] = argparse.BooleanOptionalAction
        elif typing.get_origin(hint) is tuple:
            kwargs.update(nargs='+', type=str)
        else:
            kwargs['type'] = hint
        parser.add_argument(flag, **kwargs)
    return parser


def load_config(argv: list[str] | None = None) -> tuple[SimCellConfig, argparse.Namespace]:
    """Defaults, then the params file, then the flags given; ConfigError if invalid."""
    args = build_parser().parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k in field_types(SimCellConfig)}
    return params.load_config(SimCellConfig, NODE_NAME, args.params_file, overrides=flags), args


# --- pacing and faults --------------------------------------------------------------------

class Pacer:
    """Absolute-time ticks at `rate_hz`; sleeps on the stop Event, never busy-waits."""

    def __init__(self, rate_hz: float, stop: threading.Event) -> None:
        self.period = 1.0 / rate_hz
        self._stop = stop
        self._next = time.monotonic()
        self.skipped = 0

    def wait(self) -> bool:
        """Sleep until the next tick; False once stop is set."""
        self._next += self.period
        delay = self._next - time.monotonic()
        if delay < -self.period:           # fell behind (a stall): skip, don't burst
            self.skipped += int(-delay / self.period)
            self._next = time.monotonic()
            delay = 0.0
        return not self._stop.wait(max(delay, 0.0))


class FaultPlan:
    """When to inject the next fault on one stream, and which; counts what was injected."""

    def __init__(self, stream: str, enabled: bool, period_s: float) -> None:
        self.stream = stream
        self.enabled = enabled
        self.period_s = period_s
        self.injected: Counter[str] = Counter()
        self._next_kind = 0
        self._due = time.monotonic() + _RESTART_HOLDOFF_S + period_s

    def due(self, have_old_packet: bool) -> str | None:
        """Return the kind to inject now, or None."""
        now = time.monotonic()
        if not self.enabled or now < self._due:
            return None
        kind = FAULT_KINDS[self._next_kind % len(FAULT_KINDS)]
        if kind == 'out_of_order' and not have_old_packet:
            return None
        self._next_kind += 1
        self._due = now + self.period_s + (_RESTART_HOLDOFF_S if kind == 'restart' else 0.0)
        self.injected[kind] += 1
        _LOG.info(f'fault: {self.stream} {kind} #{self.injected[kind]}')
        return kind


def corrupt(kind: str, good: bytes, cap: int) -> bytes:
    """Return a damaged copy of a good packet: malformed, truncated or oversized."""
    if kind == 'malformed':
        return b'JUNK' + good[4:]
    if kind == 'truncated':
        return good[:len(good) // 2]
    if kind == 'oversized':
        return good + bytes(cap + 1 - len(good))
    raise ValueError(f'not a byte-level fault: {kind}')


def new_session() -> int:
    return secrets.randbits(32)


# --- senders ------------------------------------------------------------------------------

class Sender(threading.Thread):
    """Base of the three stream threads: clock, scene time, faults, counters."""

    stream = ''

    def __init__(self, config: SimCellConfig, scene: SimScene, stop: threading.Event,
                 t0: float) -> None:
        super().__init__(name=f'sim_{self.stream}', daemon=True)
        self.config = config
        self.scene = scene
        self.stop = stop
        self._t0 = t0
        self.faults = FaultPlan(self.stream, config.faults, config.fault_period_s)
        self.sent = 0
        self.session = new_session()
        self.error: BaseException | None = None

    def sender_time(self) -> float:
        """Return the sender clock: wall time plus the configured offset [s]."""
        return time.time() + self.config.clock_offset_s

    def scene_time(self) -> float:
        return time.monotonic() - self._t0

    def run(self) -> None:
        try:
            self.loop()
        except BaseException as exc:    # reported by main(), which exits non-zero
            self.error = exc
            self.stop.set()
            raise


class CameraSender(Sender):
    stream = 'cameras'

    def loop(self) -> None:
        cfg = self.config
        renderer = SceneRenderer(self.scene, cfg.view_names, cfg.width, cfg.height)
        codec = CameraCodecV1()
        cap = CameraBridgeConfig().max_message_bytes
        old: deque[tuple[int, bytes]] = deque(maxlen=len(cfg.view_names) * 5)
        sequences = [0] * len(cfg.view_names)
        context, push = self._connect()
        pacer = Pacer(cfg.camera_fps, self.stop)
        try:
            while pacer.wait():
                for i, view in enumerate(cfg.view_names):
                    capture = self.sender_time()
                    jpeg = renderer.render_jpeg(i, self.scene.state_at(self.scene_time()),
                                                cfg.jpeg_quality)
                    msg = CameraMessage(view=view, capture_time_s=capture, width=cfg.width,
                                        height=cfg.height, data=jpeg, session=self.session,
                                        sequence=sequences[i])
                    sequences[i] = (sequences[i] + 1) & 0xFFFFFFFF
                    packet = codec.encode(msg)
                    kind = self.faults.due(have_old_packet=len(old) == old.maxlen)
                    if kind == 'restart':
                        push.close(linger=2000)
                        context.term()          # waits until the old socket's queue is sent
                        self.session, sequences = new_session(), [0] * len(cfg.view_names)
                        old.clear()
                        context, push = self._connect()
                        continue
                    if kind == 'nan':
                        push.send(codec.encode(_replace(msg, capture_time_s=float('nan'))))
                    elif kind == 'out_of_order':
                        push.send(old[0][1])
                    elif kind is not None:
                        push.send(corrupt(kind, packet, cap))
                    push.send(packet, copy=False)
                    old.append((i, packet))
                    self.sent += 1
        finally:
            push.close(linger=0)
            context.term()

    def _connect(self) -> tuple[zmq.Context, zmq.Socket]:
        context = zmq.Context(1)
        push = context.socket(zmq.PUSH)
        push.setsockopt(zmq.SNDHWM, 100)
        push.connect(f'tcp://{self.config.camera_host}:{self.config.camera_port}')
        return context, push


class RobotSender(Sender):
    stream = 'robot'

    def loop(self) -> None:
        cfg = self.config
        codec = RobotCodecV1()
        cap = RobotBridgeConfig().max_message_bytes
        rng = np.random.default_rng(cfg.seed + 1)
        old: deque[bytes] = deque(maxlen=5)
        sequence = 0
        context, pub = self._bind()
        pacer = Pacer(cfg.robot_rate_hz, self.stop)
        try:
            while pacer.wait():
                state = self.scene.state_at(self.scene_time())
                joints = np.degrees(state.joints_rad) + rng.normal(0.0, 0.002, 6)  # encoder noise
                msg = RobotMessage(
                    sender_time_s=self.sender_time(), joints_deg=tuple(joints.tolist()),
                    position_mm=tuple((state.tip_m * 1e3).tolist()),
                    rotation_deg=tuple(state.rotation_deg.tolist()), gripper=state.gripper,
                    session=self.session, sequence=sequence)
                sequence = (sequence + 1) & 0xFFFFFFFF
                packet = codec.encode(msg)
                kind = self.faults.due(have_old_packet=len(old) == old.maxlen)
                if kind == 'restart':
                    pub.close(linger=0)
                    context.term()
                    self.session, sequence = new_session(), 0
                    old.clear()
                    context, pub = self._bind()
                    continue
                if kind == 'nan':
                    pub.send(codec.encode(_replace(msg, joints_deg=(float('nan'),) * 6)))
                elif kind == 'out_of_order':
                    pub.send(old[0])
                elif kind is not None:
                    pub.send(corrupt(kind, packet, cap))
                pub.send(packet)
                old.append(packet)
                self.sent += 1
        finally:
            pub.close(linger=0)
            context.term()

    def _bind(self) -> tuple[zmq.Context, zmq.Socket]:
        context = zmq.Context(1)
        pub = context.socket(zmq.PUB)
        pub.bind(f'tcp://{self.config.robot_bind}:{self.config.robot_port}')
        return context, pub


class SensorSender(Sender):
    stream = 'sensor'

    def loop(self) -> None:
        cfg = self.config
        codec = SensorCodecV1()
        cap = SensorBridgeConfig().max_datagram_bytes
        rng = np.random.default_rng(cfg.seed + 2)
        address = (cfg.sensor_host, cfg.sensor_port)
        old: deque[bytes] = deque(maxlen=5)
        sequence, n = 0, cfg.sensor_batch
        dt = 1.0 / cfg.sensor_rate_hz
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        pacer = Pacer(cfg.sensor_rate_hz / n, self.stop)
        try:
            while pacer.wait():
                now_sender, now_scene = self.sender_time(), self.scene_time()
                back = dt * np.arange(n - 1, -1, -1)                 # (n,) oldest first
                samples = np.stack([self.scene.sensor_sample(self.scene.state_at(now_scene - b),
                                                             rng) for b in back])
                batch = SensorBatch(sequence=sequence, times_s=now_sender - back,
                                    samples=samples, session=self.session)
                sequence = (sequence + n) & 0xFFFFFFFF
                packet = codec.encode(batch)
                kind = self.faults.due(have_old_packet=len(old) == old.maxlen)
                if kind == 'restart':
                    sock.close()
                    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    self.session, sequence = new_session(), 0
                    old.clear()
                    continue
                if kind == 'nan':
                    bad = samples.copy()
                    bad[0, 0] = np.nan
                    self._send(sock, codec.encode(_replace(batch, samples=bad)), address)
                elif kind == 'out_of_order':
                    self._send(sock, old[0], address)
                elif kind is not None:
                    self._send(sock, corrupt(kind, packet, cap), address)
                self._send(sock, packet, address)
                old.append(packet)
                self.sent += 1
        finally:
            sock.close()

    @staticmethod
    def _send(sock: socket.socket, packet: bytes, address: tuple[str, int]) -> None:
        try:
            sock.sendto(packet, address)
        except OSError as exc:   # e.g. ECONNREFUSED reported for an earlier datagram
            _LOG.debug(f'sensor send failed: {exc}')


def _replace(record, **changes):
    values = {f: getattr(record, f) for f in record.__dataclass_fields__}
    values.update(changes)
    return type(record)(**values)


# --- main ---------------------------------------------------------------------------------

SENDERS = {'cameras': CameraSender, 'robot': RobotSender, 'sensor': SensorSender}


def fault_report(senders: list[Sender]) -> dict:
    """Injected faults per stream and kind, with the bridge counter each must show up in."""
    return {'injected': {s.stream: {k: s.faults.injected[k] for k in FAULT_KINDS}
                         for s in senders},
            'expected_cause': EXPECTED_CAUSE,
            'sent': {s.stream: s.sent for s in senders}}


def main(argv: list[str] | None = None) -> int:
    try:
        config, args = load_config(argv)
    except (ConfigError, OSError) as exc:
        print(f'sim_cell: invalid configuration: {exc}', file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level, format='[sim_cell] %(message)s')
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    scene = SimScene(episode_s=config.episode_s, seed=config.seed)
    t0 = time.monotonic()
    senders = [SENDERS[s](config, scene, stop, t0) for s in config.streams]
    for s in senders:
        s.start()
    targets = {
        'cameras': f'cameras: {len(config.view_names)} views x {config.camera_fps:g} FPS '
                   f'{config.width}x{config.height} -> {config.camera_host}:{config.camera_port}',
        'robot': f'robot: {config.robot_rate_hz:g} Hz on {config.robot_bind}:{config.robot_port}',
        'sensor': f'sensor: {config.sensor_rate_hz:g} Hz in batches of {config.sensor_batch} -> '
                  f'{config.sensor_host}:{config.sensor_port}'}
    _LOG.info('sending ' + '; '.join(targets[s] for s in config.streams)
              + (f'; faults every {config.fault_period_s:g} s' if config.faults else ''))
    deadline = t0 + config.duration_s if config.duration_s > 0 else float('inf')
    while not stop.wait(min(5.0, max(0.0, deadline - time.monotonic()))):
        if time.monotonic() >= deadline:
            break
        _LOG.info('sent ' + ', '.join(f'{s.stream} {s.sent}' for s in senders))
    stop.set()
    for s in senders:
        s.join(timeout=5.0)
    report = fault_report(senders)
    _LOG.info(f'stopped; sent {report["sent"]}'
              + (f'; injected {report["injected"]}' if config.faults else ''))
    if config.fault_report:
        with open(config.fault_report, 'w', encoding='utf-8') as f:
            json.dump(report, f, indent=2)
    errors = [s for s in senders if s.error is not None]
    for s in errors:
        _LOG.error(f'{s.stream} sender failed: {s.error!r}')
    return 1 if errors else 0


if __name__ == '__main__':
    sys.exit(main())
