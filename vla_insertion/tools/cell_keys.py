"""cell_keys: the CURVE keys of a cell's ZMQ links (camera, robot, command); pyzmq, not ROS.

    cell_keys generate DIR          one ZMQ certificate pair per role: <role>.key (public),
                                    <role>.key_secret (mode 0600); refuses to replace keys
    cell_keys show DIR              each role's public key, and the files each program needs

Give every program of a link the folder (`curve_keys_dir` in the params file, or
`robot_receiver --curve-keys-dir`); on a cell, copy each host only the files its programs
need (`show` lists them): a secret file never leaves the host of its role. The roles and the
links are in core/wire/curve.py; docs/wire.md "Securing the cell network" shows a layout.

Exits 0, or 2 with the reason (keys already there, unreadable files).
"""
from __future__ import annotations

import argparse
from pathlib import Path
import sys

from vla_insertion.core.wire.curve import (
    CurveError, generate_keys, host_files, LINKS, PUBLIC_SUFFIX, ROLES)

# The programs of each role, for `show`.
PROGRAMS = {
    'camera_bridge': 'camera_bridge (curve_keys_dir)',
    'camera_sender': 'the camera PC; sim_cell',
    'robot_pc': 'the robot PC: robot_receiver --curve-keys-dir; sim_cell',
    'robot_bridge': 'robot_bridge (curve_keys_dir)',
    'cell_observer': "CellRun's arm watcher (demo, closed_loop --backend ros)",
    'chunk_executor': 'chunk_executor (curve_keys_dir)',
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='cell_keys', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    gen = sub.add_parser('generate', help='write a key pair per role into DIR')
    gen.add_argument('dir', type=Path)
    gen.add_argument('--roles', nargs='+', choices=ROLES, default=list(ROLES),
                     help='only these roles (default: all)')
    gen.add_argument('--force', action='store_true',
                     help='replace existing keys (every peer then needs the new public keys)')
    show = sub.add_parser('show', help="list the roles' public keys and who needs which file")
    show.add_argument('dir', type=Path)
    return parser


def show(folder: Path) -> list[str]:
    """Return the lines of `cell_keys show`."""
    import zmq.auth
    lines = []
    for role in ROLES:
        path = folder / f'{role}{PUBLIC_SUFFIX}'
        key = zmq.auth.load_certificate(path)[0].decode() if path.is_file() else '(missing)'
        links = [name for name, link in LINKS.items() if role in (link.server, *link.clients)]
        lines.append(f'{role:15s} {key}  links {", ".join(links)}; {PROGRAMS[role]}')
        lines.append(f'{"":15s} needs {" ".join(host_files((role,)))}')
    return lines


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == 'generate':
            written = generate_keys(args.dir, tuple(args.roles), force=args.force)
            print(f'cell_keys: wrote {len(written)} files into {args.dir}')
            lines = show(args.dir)
        else:
            lines = show(args.dir)
    except (CurveError, OSError, ValueError) as exc:
        print(f'cell_keys: {exc}', file=sys.stderr)
        return 2
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(main())
