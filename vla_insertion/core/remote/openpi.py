"""openpi's websocket protocol: the client connection and a server.

Written from openpi's client package (websocket_client_policy.py, msgpack_numpy.py) and its
policy server (src/openpi/serving/websocket_policy_server.py).

    client                                   server
    connect ws://host:port  ------------->   (optional header Authorization: Api-Key <token>)
                            <-------------   binary frame: msgpack metadata map (the handshake)
    binary frame: msgpack observation ---->
                            <-------------   binary frame: msgpack map {'actions': (H, D), ...,
                                             'server_timing': {'infer_ms': ...}}
                            <-------------   or a text frame: the server's traceback, then it
                                             closes the connection (1011, internal error)

The observation is one flat map: image_keys -> uint8 images, state_keys -> float32 vectors,
prompt_key -> the prompt; a '.' in a key nests maps ('images.cam_high' -> {'images':
{'cam_high': ...}}, as ALOHA-style servers read). Arrays travel as codec.py describes; nothing is
ever unpickled. openpi has no input for a committed prefix: the executor blends chunks instead
(docs/executor.md).
"""
from __future__ import annotations

from collections.abc import Callable
import contextlib
import http
import logging
import threading
import time
import traceback

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import connect
from websockets.sync.server import serve

from vla_insertion.core.remote.codec import pack_openpi, unpack_openpi
from vla_insertion.core.remote.mapping import ServerObservation
from vla_insertion.core.remote.refusals import (
    BAD_TYPE, BadReply, ReplyTimeout, ServerError, ServerUnreachable)

log = logging.getLogger(__name__)
CLOSE_TIMEOUT_S = 1.0


def observation_map(obs: ServerObservation) -> dict:
    """Return the observation as openpi's flat map ('.' in a key nests)."""
    doc: dict = {}
    for key, value in [*obs.images.items(), *obs.state.items(), (obs.prompt_key, obs.prompt)]:
        *parents, leaf = key.split('.')
        node = doc
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return doc


class OpenpiConnection:
    """One websocket to an openpi policy server; every failure raises a PolicyRefusal."""

    closes_on_error = True         # a server error is followed by the server's close

    def __init__(self, host: str, port: int, api_token: str = '',
                 max_reply_bytes: int = 16_000_000) -> None:
        self.address = f'ws://{host}:{port}'
        self._token = api_token
        self._max = max_reply_bytes
        self._ws = None
        self._stack = contextlib.ExitStack()   # connect() is a context manager (websockets 17)

    def connect(self, timeout_s: float) -> dict:
        """Connect and read the metadata handshake; return the metadata map."""
        headers = {'Authorization': f'Api-Key {self._token}'} if self._token else None
        try:
            self._ws = self._stack.enter_context(connect(
                self.address, open_timeout=timeout_s, close_timeout=CLOSE_TIMEOUT_S,
                compression=None, max_size=self._max, additional_headers=headers))
            first = self._ws.recv(timeout=timeout_s)
        except TimeoutError:
            raise ServerUnreachable(f'{self.address}: no handshake within {timeout_s} s') \
                from None
        except (OSError, InvalidHandshake, InvalidURI, ConnectionClosed) as exc:
            raise ServerUnreachable(f'{self.address}: {type(exc).__name__}: {exc}') from None
        if isinstance(first, str):
            raise ServerUnreachable(f'{self.address}: a text frame instead of the metadata: '
                                    f'{first[:200]}')
        try:
            metadata = unpack_openpi(first, self._max)
        except BadReply as exc:
            raise ServerUnreachable(f'{self.address}: bad metadata handshake: {exc}') from None
        if not isinstance(metadata, dict):
            raise ServerUnreachable(f'{self.address}: the metadata is a '
                                    f'{type(metadata).__name__}, not a map')
        return metadata

    def infer(self, obs: ServerObservation, timeout_s: float) -> tuple[dict, float]:
        """Return (the reply map, the round trip [ms]: send to reply received)."""
        payload = pack_openpi(observation_map(obs))
        t0 = time.perf_counter()
        try:
            self._ws.send(payload)
            reply = self._ws.recv(timeout=timeout_s)
        except TimeoutError:
            raise ReplyTimeout(f'no reply within reply_timeout_s {timeout_s} s') from None
        except (ConnectionClosed, OSError) as exc:
            raise ServerUnreachable(f'{self.address}: connection lost: {exc}') from None
        rtt_ms = (time.perf_counter() - t0) * 1e3
        if isinstance(reply, str):    # openpi: "if the server sends a string, it's an error"
            raise ServerError(reply.strip().splitlines()[-1][:300] if reply.strip() else
                              'an empty text frame')
        doc = unpack_openpi(reply, self._max)
        if not isinstance(doc, dict):
            raise BadReply(BAD_TYPE, f'the reply is a {type(doc).__name__}, not a map')
        return doc, rtt_ms

    def close(self) -> None:
        self._ws = None
        self._stack.close()


def server_ms(reply: dict) -> float:
    """Return the server's own inference time [ms] if it reports one (openpi's server_timing)."""
    timing = reply.get('server_timing')
    value = timing.get('infer_ms') if isinstance(timing, dict) else None
    return float(value) if isinstance(value, (int, float)) else float('nan')


class OpenpiServer:
    """A policy (`infer(observation map) -> reply map`) served over openpi's protocol.

    As openpi's WebsocketPolicyServer: the metadata first, then one reply per observation with
    `server_timing`; an exception of the policy is sent as a text frame (its traceback) and the
    connection is closed with 1011. `api_token`: refuse a connection without the header
    `Authorization: Api-Key <token>` (401). Port 0 binds a free port (`port` tells which).
    """

    def __init__(self, policy: Callable[[dict], dict], host: str = '127.0.0.1', port: int = 0,
                 metadata: dict | None = None, api_token: str = '',
                 max_request_bytes: int = 64_000_000) -> None:
        self._policy = policy
        self._metadata = metadata or {}
        self._token = api_token
        self._max = max_request_bytes
        self.connections = 0
        self._server = serve(self._handler, host, port, compression=None,
                             max_size=max_request_bytes, process_request=self._check)
        self.port = self._server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name='openpi_server')

    def start(self) -> OpenpiServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=5.0)

    def _check(self, connection, request):
        if self._token and request.headers.get('Authorization') != f'Api-Key {self._token}':
            return connection.respond(http.HTTPStatus.UNAUTHORIZED, 'bad api key\n')
        return None

    def _handler(self, ws) -> None:
        self.connections += 1
        ws.send(pack_openpi(self._metadata))
        while True:
            try:
                message = ws.recv()
            except ConnectionClosed:
                return
            try:
                t0 = time.perf_counter()
                obs = unpack_openpi(message, self._max)
                reply = dict(self._policy(obs))
                reply['server_timing'] = {'infer_ms': (time.perf_counter() - t0) * 1e3}
                ws.send(pack_openpi(reply))
            except ConnectionClosed:
                return
            except Exception:     # what openpi's server does: the traceback, then close
                log.warning('policy failed: %s', traceback.format_exc(limit=2).strip())
                try:
                    ws.send(traceback.format_exc())
                    ws.close(1011, 'Internal server error. Traceback included in previous '
                                   'frame.')
                except ConnectionClosed:
                    pass
                return
