"""GR00T's ZMQ REQ/REP protocol: the client connection and a server.

Written from Isaac-GR00T's gr00t/policy/server_client.py (PolicyServer, PolicyClient) and its
policy API guide (getting_started/policy.md).

    REQ -> REP  msgpack {'endpoint': 'ping'}                  -> {'status': 'ok', ...}
                msgpack {'endpoint': 'get_action',            -> [action map, info map]
                         'data': {'observation': obs, 'options': options}}
                         (+ 'api_token': <token> on every request when the server wants one)
                any request the server fails on               -> {'error': <message>}
                (b'ERROR' alone is an error too, as PolicyClient reads it)

The observation is nested by modality, batch and time first:
    {'video': {key: uint8 (1, 1, H, W, 3)}, 'state': {key: float32 (1, 1, D)},
     'language': {prompt_key: [[prompt]]}}
and the actions come back as {key: float32 (1, H, D)}. Arrays are .npy bytes (codec.py), loaded
with allow_pickle=False; nothing is ever unpickled.

Real-time chunking: with `send_prefix`, the committed actions (in the server's keys and units,
ActionMapping.to_server) go as the previous actions `observation['action'] = {key: (1, d, D)}`
with GR00T N1.7's RTC options {'action_horizon': d, 'rtc_overlap_steps': d, 'rtc_frozen_steps':
d, 'rtc_ramp_rate': r}: the d committed steps are frozen, the chunk continues them. A server
without that input ignores both; the executor then falls back to a blend (docs/executor.md).

The connection is "made" by a ping answered within the connect timeout. A reply that does not
come within reply_timeout_s leaves the REQ socket unable to send: the socket is closed and the
connection remade (as PolicyClient's ping does).
"""
from __future__ import annotations

from collections.abc import Callable
import logging
import threading
import time

import zmq

from vla_insertion.core.remote.codec import pack_gr00t, unpack_gr00t
from vla_insertion.core.remote.mapping import ServerObservation
from vla_insertion.core.remote.refusals import (
    BAD_TYPE, BadReply, ReplyTimeout, ServerError, ServerUnreachable)

log = logging.getLogger(__name__)
POLL_S = 0.1                       # how often the server looks at its stop flag


def observation_map(obs: ServerObservation, rtc_ramp_rate: float = 6.0
                    ) -> tuple[dict, dict | None]:
    """Return (GR00T's nested observation, its options) of one observation."""
    doc = {'video': {k: v[None, None] for k, v in obs.images.items()},
           'state': {k: v[None, None] for k, v in obs.state.items()},
           'language': {obs.prompt_key: [[obs.prompt]]}}
    if not obs.prefix:
        return doc, None
    doc['action'] = {k: v[None] for k, v in obs.prefix.items()}
    steps = len(next(iter(obs.prefix.values())))
    return doc, {'action_horizon': steps, 'rtc_overlap_steps': steps,
                 'rtc_frozen_steps': steps, 'rtc_ramp_rate': float(rtc_ramp_rate)}


class Gr00tConnection:
    """A REQ socket to a GR00T policy server; every failure raises a PolicyRefusal."""

    closes_on_error = False        # an error map is one reply; the socket stays usable

    def __init__(self, host: str, port: int, api_token: str = '',
                 max_reply_bytes: int = 16_000_000, rtc_ramp_rate: float = 6.0) -> None:
        self.address = f'tcp://{host}:{port}'
        self._token = api_token
        self._max = max_reply_bytes
        self._ramp = rtc_ramp_rate
        self._context = zmq.Context.instance()
        self._socket = None

    def connect(self, timeout_s: float) -> dict:
        """Connect and ping; return the ping's reply as the server's metadata."""
        self._socket = self._context.socket(zmq.REQ)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.MAXMSGSIZE, self._max)
        try:
            self._socket.connect(self.address)
        except zmq.ZMQError as exc:
            raise ServerUnreachable(f'{self.address}: {exc}') from None
        try:
            reply, _ = self._call({'endpoint': 'ping'}, timeout_s)
        except ReplyTimeout:
            raise ServerUnreachable(f'{self.address}: no answer to ping within {timeout_s} s') \
                from None
        except (ServerError, BadReply) as exc:
            raise ServerUnreachable(f'{self.address}: ping: {exc}') from None
        if not isinstance(reply, dict):
            raise ServerUnreachable(f'{self.address}: ping answered a {type(reply).__name__}')
        return reply

    def infer(self, obs: ServerObservation, timeout_s: float) -> tuple[dict, float]:
        """Return (the action map, the round trip [ms]: send to reply received)."""
        observation, options = observation_map(obs, self._ramp)
        reply, rtt_ms = self._call({'endpoint': 'get_action', 'data': {
            'observation': observation, 'options': options}}, timeout_s)
        if isinstance(reply, (list, tuple)) and len(reply) == 2:
            reply = reply[0]               # (action, info)
        if not isinstance(reply, dict):
            raise BadReply(BAD_TYPE, f'the reply is a {type(reply).__name__}, not '
                                     '[action map, info]')
        return reply, rtt_ms

    def _call(self, request: dict, timeout_s: float) -> tuple[object, float]:
        if self._token:
            request['api_token'] = self._token
        payload = pack_gr00t(request)
        t0 = time.perf_counter()
        try:
            self._socket.send(payload)
            if not self._socket.poll(int(timeout_s * 1e3), zmq.POLLIN):
                raise ReplyTimeout(f'no reply within {timeout_s} s')
            message = self._socket.recv()
        except zmq.ZMQError as exc:
            raise ServerUnreachable(f'{self.address}: {exc}') from None
        rtt_ms = (time.perf_counter() - t0) * 1e3
        if message == b'ERROR':
            raise ServerError('the server answered ERROR')
        reply = unpack_gr00t(message, self._max)
        if isinstance(reply, dict) and 'error' in reply:
            raise ServerError(str(reply['error'])[:300])
        return reply, rtt_ms

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None


def server_ms(reply: dict) -> float:
    """GR00T's reply carries no server time."""
    return float('nan')


class Gr00tServer:
    """A policy (`infer(observation, options) -> action map`) served over GR00T's protocol.

    Endpoints as PolicyServer's: ping, get_action, reset, get_modality_config (the metadata);
    an unknown endpoint, a bad token or a failing policy answers {'error': ...}. Port 0 binds a
    free port (`port` tells which).
    """

    def __init__(self, policy: Callable[[dict, dict | None], dict], host: str = '127.0.0.1',
                 port: int = 0, metadata: dict | None = None, api_token: str = '',
                 max_request_bytes: int = 64_000_000) -> None:
        self._policy = policy
        self._metadata = metadata or {}
        self._token = api_token
        self._max = max_request_bytes
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.REP)
        self._socket.setsockopt(zmq.LINGER, 0)
        if port:
            self._socket.bind(f'tcp://{host}:{port}')
            self.port = port
        else:
            self.port = self._socket.bind_to_random_port(f'tcp://{host}')
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name='gr00t_server')

    def start(self) -> Gr00tServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        self._context.destroy(linger=0)

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self._socket.poll(int(POLL_S * 1e3), zmq.POLLIN):
                continue
            message = self._socket.recv()
            try:
                reply = self._answer(unpack_gr00t(message, self._max))
            except Exception as exc:      # PolicyServer answers every failure with an error map
                log.warning('request failed: %s: %s', type(exc).__name__, exc)
                reply = {'error': f'{type(exc).__name__}: {exc}'}
            self._socket.send(pack_gr00t(reply))

    def _answer(self, request) -> object:
        if not isinstance(request, dict):
            raise ValueError('a request is a map')
        if self._token and request.get('api_token') != self._token:
            return {'error': 'Unauthorized: Invalid API token'}
        endpoint = request.get('endpoint', 'get_action')
        if endpoint == 'ping':
            return {'status': 'ok', 'message': 'Server is running'}
        if endpoint == 'get_modality_config':
            return self._metadata
        if endpoint == 'reset':
            return {}
        if endpoint == 'get_action':
            data = request.get('data') or {}
            return [self._policy(data.get('observation'), data.get('options')), {}]
        raise ValueError(f'Unknown endpoint: {endpoint}')
