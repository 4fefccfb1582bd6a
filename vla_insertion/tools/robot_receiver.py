"""robot_receiver: the reference robot side of command_v1; needs pyzmq and numpy, not ROS.

Binds the robot PC's PULL socket (port 5557; the chunk executor PUSHes one command per control
period), decodes every command with CommandCodecV1, refuses what is out of order, stale or
outside the joint limits (each counted by cause, logged), holds the arm when no command comes
for its timeout_s, and hands the rest to a backend (core/robot/, docs/wire.md "A reference
robot side"):

    sim       the simulated cell's joint servo alone (core/sim/servo.py), from the home pose
    dry-run   moves nothing; logs what it would command (every command with --log-level DEBUG)

The limits are the chunk_executor section's joint_limits and control rate (the params file the
executor reads; none: the built-in defaults), each overridable by a flag: one value for the six
joints, six, or seven with the gripper.

    robot_receiver --backend dry-run
    robot_receiver --params-file config/vla_insertion.yaml --bind-address 192.168.10.2
    robot_receiver --curve-keys-dir /etc/vla_insertion/keys   # CURVE: the executor's key only
    robot_receiver --max-velocity-rad-s 0.5 --clock-offset-s 0 --max-age-s 0.02

Exits 0 after SIGINT / SIGTERM or --duration-s, 2 on a bad configuration or a busy port, 1 if
the backend failed.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import numpy as np

from vla_insertion.core.config import ConfigError
from vla_insertion.core.data import NUM_JOINTS
from vla_insertion.core.orchestration.builders import executor_settings
from vla_insertion.core.orchestration.processes import StopRequest
from vla_insertion.core.robot import (
    CommandLimits, CommandReceiver, DryRunBackend, ReceiverConfig, ServoBackend)
from vla_insertion.core.robot.backends import Backend
from vla_insertion.core.sim.live import LiveServo

_LOG = logging.getLogger('robot_receiver')
BACKENDS = ('sim', 'dry-run')
_POLL_S = 0.05      # how often the main thread looks at the stop flag [s]


def build_parser() -> argparse.ArgumentParser:
    defaults = ReceiverConfig()
    parser = argparse.ArgumentParser(prog='robot_receiver', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--bind-address', default=defaults.bind_address,
                        help='interface the PULL socket binds (default: %(default)s)')
    parser.add_argument('--port', type=int,
                        help="TCP port (default: the params file's chunk_executor command_port, "
                             f'else {defaults.port})')
    parser.add_argument('--curve-keys-dir', default='',
                        help='CURVE keys folder (cell_keys): robot_pc.key_secret and the '
                             "executor's chunk_executor.key; default: plain TCP")
    parser.add_argument('--backend', choices=BACKENDS, default='sim',
                        help='what the accepted commands drive (default: %(default)s)')
    parser.add_argument('--params-file',
                        help="ROS params YAML: the chunk_executor section's joint_limits, "
                             'control_rate_hz, max_distance_from_measured_rad, command_port')
    parser.add_argument('--namespace', default='', help="the executor's namespace in the file")
    age = parser.add_mutually_exclusive_group()
    age.add_argument('--max-age-s', type=float, default=defaults.max_age_s,
                     help='refuse commands older than this on arrival [s] (default: %(default)s)')
    age.add_argument('--no-age-check', action='store_true', help='accept commands of any age')
    parser.add_argument('--clock-offset-s', type=float,
                        help='the clocks are synchronised: executor clock - ours [s]; without '
                             'it the offset is estimated from the least delayed commands')
    parser.add_argument('--timeout-s', type=float,
                        help='hold after this long without a command [s] (default: each '
                             "command's own timeout_s)")
    for flag, unit in (('min-position-rad', 'rad'), ('max-position-rad', 'rad'),
                       ('max-velocity-rad-s', 'rad/s')):
        parser.add_argument(f'--{flag}', type=float, nargs='+', metavar='V',
                            help=f'override the joint limits [{unit}]: 1 value (every joint), '
                                 '6, or 7 (with the gripper)')
    parser.add_argument('--status-period-s', type=float, default=5.0,
                        help='log the counters this often [s] (default: %(default)s)')
    parser.add_argument('--duration-s', type=float, default=0.0,
                        help='stop after this long; 0: until SIGINT/SIGTERM (default)')
    parser.add_argument('--report', help='write the final counters (and where the arm is, sim) '
                                         'here as JSON')
    parser.add_argument('--log-level', default='INFO', choices=['DEBUG', 'INFO', 'WARNING'])
    return parser


def _per_axis(flag: str, values: list[float] | None,
              base: tuple[float, ...]) -> tuple[float, ...] | None:
    """Return `base` (7,) with the joints, or all 7, replaced by the flag's values."""
    if values is None:
        return None
    if len(values) == 1:
        return tuple(values) * NUM_JOINTS + base[NUM_JOINTS:]
    if len(values) == NUM_JOINTS:
        return tuple(values) + base[NUM_JOINTS:]
    if len(values) == NUM_JOINTS + 1:
        return tuple(values)
    raise ConfigError(f'--{flag} takes 1, {NUM_JOINTS} or {NUM_JOINTS + 1} values, got '
                      f'{len(values)}')


def load_settings(args: argparse.Namespace) -> tuple[ReceiverConfig, CommandLimits]:
    """Return the receiver's config and limits from the flags and the params file.

    Raises ConfigError (or OSError for an unreadable params file).
    """
    settings = executor_settings(args.params_file, namespace=args.namespace)
    base = CommandLimits.from_settings(settings)
    limits = CommandLimits.from_settings(
        settings,
        min_position=_per_axis('min-position-rad', args.min_position_rad, base.min_position),
        max_position=_per_axis('max-position-rad', args.max_position_rad, base.max_position),
        max_velocity=_per_axis('max-velocity-rad-s', args.max_velocity_rad_s,
                               base.max_velocity))
    config = ReceiverConfig(
        bind_address=args.bind_address,
        port=args.port if args.port is not None else settings.config.command_port,
        max_age_s=None if args.no_age_check else args.max_age_s,
        clock_offset_s=args.clock_offset_s, timeout_s=args.timeout_s,
        curve_keys_dir=args.curve_keys_dir)
    return config, limits


def build_backend(name: str, t0_s: float) -> Backend:
    if name == 'sim':
        return ServoBackend(LiveServo(), t0_s)
    return DryRunBackend()


def _status(receiver: CommandReceiver, now_s: float) -> str:
    where = receiver.backend.position(now_s)
    arm = '' if where is None else f'; arm at {np.array2string(where, precision=3)}'
    return receiver.summary() + arm


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format='[robot_receiver] %(message)s')
    try:
        config, limits = load_settings(args)
    except (ConfigError, OSError) as exc:
        print(f'robot_receiver: invalid configuration: {exc}', file=sys.stderr)
        return 2
    t0 = time.monotonic()
    try:
        receiver = CommandReceiver(config, build_backend(args.backend, t0), limits)
    except ConfigError as exc:               # the port is in use, or the address is not ours
        print(f'robot_receiver: {exc}', file=sys.stderr)
        return 2
    stop = StopRequest()                     # a flag: Event.set in a handler can deadlock
    stop.install()
    receiver.start()
    age = ('off' if config.max_age_s is None else
           f'{config.max_age_s:g} s ' + ('(offset estimated)' if config.clock_offset_s is None
                                         else f'(clock offset {config.clock_offset_s:g} s)'))
    _LOG.info(f'command_v1 on {config.bind_address}:{config.port} '
              f'({receiver.curve.describe()}) -> {args.backend}; max age '
              f'{age}; timeout ' + ('per command' if config.timeout_s is None
                                    else f'{config.timeout_s:g} s')
              + f'; max velocity {list(limits.max_velocity)} rad/s')
    deadline = t0 + args.duration_s if args.duration_s > 0 else float('inf')
    next_status = t0 + args.status_period_s
    try:
        while not stop.requested and receiver.error is None:
            now = time.monotonic()
            if now >= deadline:
                break
            if now >= next_status:
                next_status = now + args.status_period_s
                _LOG.info(_status(receiver, now))
            time.sleep(_POLL_S)              # polls the signal flag (see StopRequest)
    finally:                                 # the flag stays: no signal cuts close() short
        receiver.close()
    now = time.monotonic()
    _LOG.info(f'stopped; {_status(receiver, now)}')
    if args.report:
        where = receiver.backend.position(now)
        with open(args.report, 'w', encoding='utf-8') as f:
            json.dump({**receiver.stats(), 'arm': None if where is None else where.tolist()},
                      f, indent=2)
    if receiver.error is not None:
        _LOG.error(f'the backend failed: {receiver.error!r}')
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
