"""sim_cell: a simulated robot cell that obeys joint commands, over real loopback sockets.

Out, at their real rates and in the wire formats of docs/wire.md: cameras (ZMQ PUSH ->
camera_bridge's PULL, port 5555), robot state (ZMQ PUB 5556, robot_bridge subscribes: measured
joints, tool pose, gripper), the force/torque + distance sensor (UDP -> sensor_bridge, 9999) and
episode reports (`episode_v1`, ZMQ PUB 5558: start, end with the outcome, status every
`episode_period_s`; also JSON lines in `episode_log`). In: joint commands (`command_v1`, ZMQ PULL
5557, control commands only). A plain process, not a ROS node. The cell is core.sim (docs/sim.md):
a servo-driven arm, a peg-in-hole contact model with jamming, seeded episodes judged for success.

`--control` says who moves the arm:
    commands   the command_v1 stream (a chunk executor); without commands the arm holds
    reference  the closed-loop demonstrator in-process (core/sim/loop.py's PipelineLoop) through
               a chunk executor built from the params file's chunk_executor section, armed,
               as a policy's chunks go: demonstrations without the ROS nodes

    sim_cell                                   # defaults: 5 views x 30 FPS, 100 Hz, 650 Hz
    sim_cell --control reference --episode-log /tmp/episodes.jsonl
    sim_cell --params-file config/vla_insertion.yaml --duration-s 30
    sim_cell --faults --fault-report /tmp/faults.json

Commands come in through core/robot/receiver.py's CommandReceiver, robot_receiver's too: bad
ones are counted by cause (logged, throttled, and in the periodic status line), older ones of a
session (`late`) and ones from a replaced session (`stale_session`) too. The newest command of
the current session is followed from its arrival; without one for its timeout the arm holds.

With --curve-keys-dir (a folder written by cell_keys) the ZMQ links are CURVE-secured as on a
cell (core/wire/curve.py): the camera PUSH is the camera sender's client, the robot PUB and the
command PULL are the robot PC's servers, admitting only robot_bridge / cell_observer and the
chunk executor. The episode stream stays plain (a simulator's reports).

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
from vla_insertion.core.orchestration.builders import executor_settings, SIM_EXECUTOR
from vla_insertion.core.orchestration.processes import StopRequest
from vla_insertion.core.robot import CommandReceiver, ReceiverConfig, ServoBackend
from vla_insertion.core.sim.cell import CellParams, SimCell
from vla_insertion.core.sim.episode import EpisodeParams
from vla_insertion.core.sim.live import LiveCell
from vla_insertion.core.sim.loop import PipelineLoop, PipelineTiming
from vla_insertion.core.sim.reference import ReferencePolicy
from vla_insertion.core.sim.render import SceneRenderer
from vla_insertion.core.ticker import DeadlineTicker
from vla_insertion.core.wire import (
    CameraCodecV1, CameraMessage, EpisodeCodecV1, RobotCodecV1, RobotMessage, SensorBatch,
    SensorCodecV1)
from vla_insertion.core.wire.curve import CurveLink, link_keys

_LOG = logging.getLogger('sim_cell')
NODE_NAME = 'sim_cell'
FAULT_KINDS = ('malformed', 'truncated', 'oversized', 'nan', 'out_of_order', 'restart')
# What each injected fault is counted as by the bridges (their /diagnostics keys).
EXPECTED_CAUSE = {'malformed': 'drops.bad_magic', 'truncated': 'drops.truncated',
                  'oversized': 'drops.oversized', 'nan': 'drops.non_finite',
                  'out_of_order': 'drops.late', 'restart': 'sender_restarts'}
_RESTART_HOLDOFF_S = 1.0    # no fault right after a (re)start: subscribers are reconnecting
_STATUS_PERIOD_S = 5.0      # between the status lines [s]
_POLL_S = 0.1               # how often the main loop looks at the signal flag [s]


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


# --- faults --------------------------------------------------------------------------------

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
    """Base of the stream threads: clock, scene time, faults, counters."""

    stream = ''

    def __init__(self, config: SimCellConfig, cell: LiveCell, stop: threading.Event,
                 t0: float) -> None:
        super().__init__(name=f'sim_{self.stream}', daemon=True)
        self.config = config
        self.cell = cell
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
        renderer = SceneRenderer(cfg.view_names, cfg.width, cfg.height, cfg.wrist_views)
        codec = CameraCodecV1()
        cap = CameraBridgeConfig().max_message_bytes
        old: deque[tuple[int, bytes]] = deque(maxlen=len(cfg.view_names) * 5)
        sequences = [0] * len(cfg.view_names)
        context, push = self._connect()
        pacer = DeadlineTicker(cfg.camera_fps, self.stop)
        try:
            while pacer.wait():
                for i, view in enumerate(cfg.view_names):
                    capture = self.sender_time()
                    jpeg = renderer.render_jpeg(i, self.cell.state_at(self.scene_time()),
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
        CurveLink(link_keys(self.config.curve_keys_dir, 'camera', 'camera_sender')).secure(push)
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
        context, pub, curve = self._bind()
        pacer = DeadlineTicker(cfg.robot_rate_hz, self.stop)
        try:
            while pacer.wait():
                state = self.cell.state_at(self.scene_time())
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
                    curve.close()
                    context.term()
                    self.session, sequence = new_session(), 0
                    old.clear()
                    context, pub, curve = self._bind()
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
            curve.close()
            context.term()

    def _bind(self) -> tuple[zmq.Context, zmq.Socket, CurveLink]:
        context = zmq.Context(1)
        curve = CurveLink(link_keys(self.config.curve_keys_dir, 'robot'), context)
        pub = context.socket(zmq.PUB)
        curve.secure(pub)
        pub.bind(f'tcp://{self.config.robot_bind}:{self.config.robot_port}')
        return context, pub, curve


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
        pacer = DeadlineTicker(cfg.sensor_rate_hz / n, self.stop)
        try:
            while pacer.wait():
                now_sender, now_scene = self.sender_time(), self.scene_time()
                back = dt * np.arange(n - 1, -1, -1)                 # (n,) oldest first
                samples = self.cell.sensor_samples(now_scene, n, cfg.sensor_rate_hz, rng)
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


# --- commands in, episode reports out -----------------------------------------------------

def command_receiver(config: SimCellConfig, cell: LiveCell, t0: float) -> CommandReceiver:
    """Return the robot side of command_v1 in front of the cell; ConfigError if the port is busy.

    core/robot/receiver.py with the age and limit checks off: the simulated robot follows what
    the executor sends, as every closed-loop evaluation assumes (the executor limits it).
    """
    receiver_config = ReceiverConfig(bind_address=config.command_bind,
                                     port=config.command_port, max_age_s=None,
                                     name='sim_commands', curve_keys_dir=config.curve_keys_dir)
    return CommandReceiver(receiver_config, ServoBackend(cell, t0), limits=None)


class EpisodeSender(Sender):
    """episode_v1 on a PUB socket: starts, ends, status every episode_period_s; JSON lines."""

    stream = 'episode'

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.faults.enabled = False               # not a bridge stream: nothing counts faults
        self.ended: list[dict] = []               # every end report, as logged
        # opened here, not in the thread: a busy port or a bad log path is a start-up error
        cfg = self.config
        try:
            self._log = open(cfg.episode_log, 'a', encoding='utf-8') if cfg.episode_log else None
        except OSError as exc:
            raise ConfigError(f'episode log: cannot open {cfg.episode_log}: {exc}') from exc
        self._context = zmq.Context(1)
        self._pub = self._context.socket(zmq.PUB)
        try:
            self._pub.bind(f'tcp://{cfg.episode_bind}:{cfg.episode_port}')
        except zmq.ZMQError as exc:
            self._pub.close(linger=0)
            self._context.term()
            if self._log is not None:
                self._log.close()
            raise ConfigError(f'episode stream: cannot bind {cfg.episode_bind}:'
                              f'{cfg.episode_port}: {exc}') from exc

    def loop(self) -> None:
        cfg = self.config
        codec = EpisodeCodecV1()
        context, pub, log = self._context, self._pub, self._log
        sequence, next_status = 0, 0.0
        pacer = DeadlineTicker(20.0, self.stop)            # starts and ends go out within 50 ms
        try:
            while pacer.wait():
                now = self.scene_time()
                status = now >= next_status
                if status:
                    next_status = now + cfg.episode_period_s
                for report in self.cell.episode_reports(now, status):
                    msg = _replace(report, sender_time_s=self.sender_time(),
                                   session=self.session, sequence=sequence)
                    sequence = (sequence + 1) & 0xFFFFFFFF
                    pub.send(codec.encode(msg))
                    self.sent += 1
                    self._note(msg, log)
        finally:
            if log is not None:
                log.close()
            pub.close(linger=0)
            context.term()

    def _note(self, msg, log) -> None:
        if msg.event == 'status':
            return
        if msg.event == 'end':
            self.ended.append({f: getattr(msg, f) for f in ('episode', 'success', 'reason')})
            _LOG.info(f'episode {msg.episode} ended: {msg.reason} after {msg.elapsed_s:.2f} s, '
                      f'peak force {msg.peak_force_n:.1f} N, depth {msg.max_depth_m * 1e3:.1f} mm')
        if log is not None:
            record = {f: getattr(msg, f) for f in msg.__dataclass_fields__}
            record['hole_m'] = list(record['hole_m'])
            log.write(json.dumps(record) + '\n')
            log.flush()


# --- main ---------------------------------------------------------------------------------

SENDERS = {'cameras': CameraSender, 'robot': RobotSender, 'sensor': SensorSender}


def build_cell(config: SimCellConfig, params_file: str | None = None) -> LiveCell:
    """Build the cell behind the streams for the configured control mode.

    control reference: the chunk executor of `params_file`'s chunk_executor section (its
    joint limits included), armed at each episode's start as closed_loop arms it; ConfigError
    if that section is invalid.
    """
    params = CellParams(physics_rate_hz=config.physics_rate_hz, episode=EpisodeParams(
        timeout_s=config.episode_timeout_s, max_contact_force_n=config.max_contact_force_n,
        settle_s=config.settle_s))
    cell = SimCell(params, seed=config.seed)
    if config.control == 'commands':
        return LiveCell(cell, control='commands')
    executor = executor_settings(params_file, overrides=SIM_EXECUTOR).build()
    # reference_latency_s is the whole observation -> chunk delay, as the expert's would be
    timing = PipelineTiming(expert_latency_s=config.reference_latency_s, transport_s=0.0)
    loop = PipelineLoop(cell, executor, timing, reference=ReferencePolicy(), seed=config.seed)
    return LiveCell(cell, loop, control='reference')


def fault_report(senders: list[Sender]) -> dict:
    """Injected faults per stream and kind, with the bridge counter each must show up in."""
    return {'injected': {s.stream: {k: s.faults.injected[k] for k in FAULT_KINDS}
                         for s in senders},
            'expected_cause': EXPECTED_CAUSE,
            'sent': {s.stream: s.sent for s in senders}}


def check_keys(config: SimCellConfig) -> str:
    """Read every CURVE key the configured streams need (CurveError); describe the links."""
    ends = {'cameras': ('camera', 'camera_sender'), 'robot': ('robot', None)}
    links = [ends[s] for s in config.streams if s in ends]
    if config.control == 'commands':
        links.append(('command', None))
    found = [link_keys(config.curve_keys_dir, link, role) for link, role in links]
    return ('CURVE on ' + ', '.join(k.link for k in found) if found and all(found)
            else 'plain TCP')


def main(argv: list[str] | None = None) -> int:
    try:
        config, args = load_config(argv)
        security = check_keys(config)
    except (ConfigError, OSError) as exc:
        print(f'sim_cell: invalid configuration: {exc}', file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level, format='[sim_cell] %(message)s')
    stop = threading.Event()           # the senders' stop, set by this thread, never a handler
    interrupt = StopRequest()          # SIGINT/SIGTERM: a flag (Event.set there can deadlock)
    interrupt.install()
    try:
        cell = build_cell(config, args.params_file)
    except ConfigError as exc:            # the params file's chunk_executor section
        print(f'sim_cell: invalid configuration: {exc}', file=sys.stderr)
        return 2
    t0 = time.monotonic()
    receiver = None
    try:
        episodes = EpisodeSender(config, cell, stop, t0)
    except ConfigError as exc:            # the port is in use
        print(f'sim_cell: {exc}', file=sys.stderr)
        return 2
    if config.control == 'commands':
        try:
            receiver = command_receiver(config, cell, t0)
        except ConfigError as exc:
            print(f'sim_cell: {exc}', file=sys.stderr)
            episodes.stop.set()
            episodes.start()              # its thread closes the socket and returns
            episodes.join(5.0)
            return 2
        receiver.start()
    senders = [SENDERS[s](config, cell, stop, t0) for s in config.streams]
    for s in [*senders, episodes]:
        s.start()
    targets = {
        'cameras': f'cameras: {len(config.view_names)} views x {config.camera_fps:g} FPS '
                   f'{config.width}x{config.height} -> {config.camera_host}:{config.camera_port}',
        'robot': f'robot: {config.robot_rate_hz:g} Hz on {config.robot_bind}:{config.robot_port}',
        'sensor': f'sensor: {config.sensor_rate_hz:g} Hz in batches of {config.sensor_batch} -> '
                  f'{config.sensor_host}:{config.sensor_port}'}
    _LOG.info(f'{security}; control {config.control}'
              + (f', commands on {config.command_bind}:{config.command_port}' if receiver
                 else '')
              + f', episodes on {config.episode_bind}:{config.episode_port}; sending '
              + '; '.join(targets[s] for s in config.streams)
              + (f'; faults every {config.fault_period_s:g} s' if config.faults else ''))
    deadline = t0 + config.duration_s if config.duration_s > 0 else float('inf')
    next_status = t0 + _STATUS_PERIOD_S
    while not interrupt.requested and not stop.is_set():
        now = time.monotonic()
        if now >= deadline:
            break
        if now >= next_status:
            next_status = now + _STATUS_PERIOD_S
            _LOG.info('sent ' + ', '.join(f'{s.stream} {s.sent}' for s in senders)
                      + (f'; {receiver.summary()}' if receiver else ''))
        time.sleep(_POLL_S)                # polls the signal flag
    stop.set()                             # the flag stays: no signal cuts the stop short
    for s in [*senders, episodes]:
        s.join(timeout=5.0)
    if receiver is not None:
        _LOG.info(receiver.summary())
        receiver.close()
    report = fault_report(senders)
    _LOG.info(f'stopped; sent {report["sent"]}, {len(episodes.ended)} episodes ended'
              + (f'; injected {report["injected"]}' if config.faults else ''))
    if config.fault_report:
        with open(config.fault_report, 'w', encoding='utf-8') as f:
            json.dump(report, f, indent=2)
    errors = [s for s in [*senders, episodes] if s.error is not None]
    for s in errors:
        _LOG.error(f'{s.stream} sender failed: {s.error!r}')
    return 1 if errors else 0


if __name__ == '__main__':
    sys.exit(main())
