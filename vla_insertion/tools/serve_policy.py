"""serve_policy: the sim cell's scripted demonstrator served over openpi's or GR00T's protocol.

    serve_policy --protocol openpi --port 8000      # beside sim_cell (episodes on 5558)
    serve_policy --protocol gr00t --port 8001 --params-file config/vla_insertion.yaml

A stand-in for a remote policy server, to try the policy_client node (and its executor and
gate) without a model: `ros2 launch vla_insertion vla_insertion.launch.py sim:=true
policy:=openpi serve_reference:=true` starts it beside the cell. It follows sim_cell's episode
stream for the hole (privileged, sim only) and answers each observation with the
demonstrator's chunk for the measured state it carries (core/remote/reference.py: the keys it
reads and returns). Between episodes it fails the request, as a server without a task would.
Settings: ServePolicyConfig (section serve_policy), each also a flag. A busy port exits 2.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time

import zmq

from vla_insertion.core import params
from vla_insertion.core.config import ConfigError, field_docs, POLICY_PROTOCOLS, \
    ServePolicyConfig
from vla_insertion.core.orchestration.episode_listener import EpisodeListener
from vla_insertion.core.orchestration.processes import StopRequest
from vla_insertion.core.remote.gr00t import Gr00tServer
from vla_insertion.core.remote.openpi import OpenpiServer
from vla_insertion.core.remote.reference import METADATA, ServedReference

NODE_NAME = 'serve_policy'
POLL_S = 0.1                       # how often the main thread looks for a stop signal
log = logging.getLogger(NODE_NAME)


def build_parser() -> argparse.ArgumentParser:
    docs = field_docs(ServePolicyConfig)
    parser = argparse.ArgumentParser(prog=NODE_NAME, description=__doc__.split('\n\n')[0])
    parser.add_argument('--params-file', help=f'ROS params YAML; reads section {NODE_NAME!r}')
    parser.add_argument('--protocol', choices=POLICY_PROTOCOLS, default=argparse.SUPPRESS,
                        help=docs['protocol'])
    for name, kind in (('bind', str), ('port', int), ('api_token', str), ('episode_host', str),
                       ('episode_port', int)):
        parser.add_argument('--' + name.replace('_', '-'), dest=name, type=kind,
                            default=argparse.SUPPRESS, help=docs[name])
    return parser


def serve(config: ServePolicyConfig, stopped) -> int:
    """Serve until `stopped()` is true; return the exit status."""
    episodes = EpisodeListener(config.episode_host, config.episode_port)
    reference = ServedReference(lambda: episodes.latest)
    try:
        if config.protocol == 'openpi':
            server = OpenpiServer(reference.openpi, config.bind, config.port, METADATA,
                                  config.api_token)
        else:
            server = Gr00tServer(reference.gr00t, config.bind, config.port, METADATA,
                                 config.api_token)
    except (OSError, zmq.ZMQError) as exc:
        print(f'{NODE_NAME}: cannot listen on {config.bind}:{config.port}: {exc}',
              file=sys.stderr)
        episodes.stop()
        return 2
    episodes.start()
    server.start()
    log.info(f'the scripted reference over {config.protocol} on {config.bind}:{server.port}, '
             f'episodes from {config.episode_host}:{config.episode_port}')
    while not stopped():
        time.sleep(POLL_S)
    server.stop()
    episodes.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k != 'params_file'}
    try:
        config = params.load_config(ServePolicyConfig, NODE_NAME, args.params_file,
                                    overrides=flags)
    except (ConfigError, OSError) as exc:
        print(f'{NODE_NAME}: invalid configuration: {exc}', file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format=f'[{NODE_NAME}] %(message)s')
    stop = StopRequest()          # a flag: an Event set from a signal handler can deadlock
    stop.install()
    return serve(config, lambda: stop.requested)


if __name__ == '__main__':
    sys.exit(main())
