"""Policy servers of each protocol for the tests, written from the protocols' documentation.

Independent of core/remote/ on purpose: arrays are laid out here by hand as each protocol
documents them, so a codec bug on our side cannot cancel itself out.

- openpi (openpi-client's msgpack_numpy.py, websocket_policy_server.py): binary frames of
  msgpack; an array is {b'__ndarray__': True, b'data', b'dtype', b'shape'}; the metadata map is
  the first frame; an error is a text frame followed by a close (1011).
- GR00T (gr00t/policy/server_client.py): ZMQ REP, msgpack requests {'endpoint', 'data',
  'api_token'}; an array is {'__ndarray_class__': True, 'as_npy': <.npy bytes>}; get_action
  answers [action, info]; errors {'error': ...}.

`answer(request) -> reply` decides each reply: a map (encoded as the protocol does), RAW(bytes)
sent as they are, ERROR(text) the protocol's error, or SILENT (no reply: a hung server). Every
decoded request is kept in `requests`.
"""
from __future__ import annotations

from dataclasses import dataclass
import io
import threading

import msgpack
import numpy as np
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import serve
import zmq


@dataclass(frozen=True)
class RAW:
    data: bytes


@dataclass(frozen=True)
class ERROR:
    text: str


SILENT = object()


def openpi_array_in(obj):
    if isinstance(obj, np.ndarray):
        return {b'__ndarray__': True, b'data': obj.tobytes(), b'dtype': obj.dtype.str,
                b'shape': obj.shape}
    return obj


def openpi_array_out(obj):
    if b'__ndarray__' in obj:
        return np.ndarray(buffer=obj[b'data'], dtype=np.dtype(obj[b'dtype']),
                          shape=obj[b'shape'])
    return obj


def gr00t_array_in(obj):
    if isinstance(obj, np.ndarray):
        out = io.BytesIO()
        np.save(out, obj, allow_pickle=False)
        return {'__ndarray_class__': True, 'as_npy': out.getvalue()}
    return obj


def gr00t_array_out(obj):
    if '__ndarray_class__' in obj:
        return np.load(io.BytesIO(obj['as_npy']), allow_pickle=False)
    return obj


class OpenpiTestServer:
    def __init__(self, answer, metadata: dict | None = None) -> None:
        self.answer = answer
        self.requests: list = []
        self.metadata = metadata or {'server': 'openpi test'}
        self.hang = threading.Event()
        self._server = serve(self._handler, '127.0.0.1', 0, compression=None, max_size=None)
        self.port = self._server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _handler(self, ws) -> None:
        ws.send(msgpack.packb(self.metadata, default=openpi_array_in))
        while True:
            try:
                request = msgpack.unpackb(ws.recv(), object_hook=openpi_array_out)
            except ConnectionClosed:
                return
            self.requests.append(request)
            reply = self.answer(request)
            if reply is SILENT:
                continue
            if isinstance(reply, ERROR):
                ws.send(reply.text)
                ws.close(1011, 'Internal server error. Traceback included in previous frame.')
                return
            ws.send(reply.data if isinstance(reply, RAW) else
                    msgpack.packb(reply, default=openpi_array_in))

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(5.0)


class Gr00tTestServer:
    def __init__(self, answer, api_token: str | None = None) -> None:
        self.answer = answer
        self.api_token = api_token
        self.requests: list = []
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.REP)
        self._socket.setsockopt(zmq.LINGER, 0)
        self.port = self._socket.bind_to_random_port('tcp://127.0.0.1')
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self._socket.poll(50):
                continue
            request = msgpack.unpackb(self._socket.recv(), object_hook=gr00t_array_out)
            if self.api_token is not None and request.get('api_token') != self.api_token:
                reply = {'error': 'Unauthorized: Invalid API token'}
            elif request.get('endpoint') == 'ping':
                reply = {'status': 'ok', 'message': 'Server is running'}
            else:
                self.requests.append(request)
                reply = self.answer(request)
                if reply is SILENT:      # a REP socket that never answers: a hung server
                    self._stop.wait()
                    return
                if isinstance(reply, ERROR):
                    reply = {'error': reply.text}
                elif not isinstance(reply, RAW):
                    reply = [reply, {}]
            self._socket.send(reply.data if isinstance(reply, RAW) else
                              msgpack.packb(reply, default=gr00t_array_in))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self._context.destroy(linger=0)
