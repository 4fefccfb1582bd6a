"""msgpack with numpy arrays, as the two policy servers put them on the wire; never pickle.

openpi (its client package's msgpack_numpy): an array is the map
    {b'__ndarray__': True, b'data': <bin: the C-order bytes>, b'dtype': <str: numpy's
     dtype.str, e.g. '<f4'>, b'shape': [<int>...]}
and a numpy scalar {b'__npgeneric__': True, b'data': <value>, b'dtype': <str>}; keys are bin.
GR00T (gr00t/policy/server_client.py MsgSerializer): an array is the map
    {'__ndarray_class__': True, 'as_npy': <bin: the array in .npy format>}
written with np.save(allow_pickle=False) and read with np.load(allow_pickle=False).

Decoding is strict, for bytes from another machine: one complete msgpack value within
`max_bytes`, no ext types, arrays of booleans or numbers only (object arrays need pickle and
are refused as `pickled`, as is a payload that is a pickle stream itself), the data length
equal to what dtype and shape say, .npy bytes with the .npy magic (a zip or a pickle is not
loaded). Every failure is a `BadReply` with its cause (core/remote/refusals.py). Other maps,
GR00T's `__ModalityConfig_class__` among them, stay plain dicts: no class is ever built from
the wire.
"""
from __future__ import annotations

from collections.abc import Callable
import io
import math

import msgpack
import numpy as np

from vla_insertion.core.remote.refusals import (
    BAD_ARRAY, BadReply, NOT_MSGPACK, OVERSIZED, PICKLED)

NUMERIC_KINDS = 'biuf'           # bool, signed, unsigned, float: what a policy exchanges
MAX_NDIM = 8
NPY_MAGIC = b'\x93NUMPY'
OPENPI, GR00T = 'openpi', 'gr00t'
PROTOCOLS = (OPENPI, GR00T)


def looks_pickled(data: bytes) -> bool:
    """Return True for a pickle stream (protocol 2..5 header), which msgpack would misread."""
    return len(data) > 2 and data[0] == 0x80 and 2 <= data[1] <= 5


def _check_dtype(dtype_text) -> np.dtype:
    if not isinstance(dtype_text, str) or len(dtype_text) > 16:
        raise BadReply(BAD_ARRAY, f'dtype {dtype_text!r:.40} is not a numpy dtype string')
    try:
        dtype = np.dtype(dtype_text)
    except (TypeError, ValueError):
        raise BadReply(BAD_ARRAY, f'dtype {dtype_text!r} is not a numpy dtype') from None
    if dtype.kind == 'O':
        raise BadReply(PICKLED, 'an object array (only pickle rebuilds it)')
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None:
        raise BadReply(BAD_ARRAY, f'dtype {dtype.str} is not boolean or numeric')
    return dtype


def _shape(value) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or len(value) > MAX_NDIM or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value):
        raise BadReply(BAD_ARRAY, f'shape {value!r:.60} is not a list of sizes')
    return tuple(value)


# --- openpi -------------------------------------------------------------------------------

def _openpi_default(obj):
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind not in NUMERIC_KINDS:
        raise TypeError(f'unsupported dtype {obj.dtype}')   # what openpi's packer refuses
    if isinstance(obj, np.ndarray):
        return {b'__ndarray__': True, b'data': np.ascontiguousarray(obj).tobytes(),
                b'dtype': obj.dtype.str, b'shape': list(obj.shape)}
    if isinstance(obj, np.generic):
        return {b'__npgeneric__': True, b'data': obj.item(), b'dtype': obj.dtype.str}
    raise TypeError(f'cannot pack {type(obj).__name__}')


def _openpi_hook(obj: dict):
    if b'__ndarray__' in obj:
        dtype = _check_dtype(obj.get(b'dtype'))
        shape = _shape(obj.get(b'shape'))
        data = obj.get(b'data')
        if not isinstance(data, bytes) or len(data) != math.prod(shape) * dtype.itemsize:
            raise BadReply(BAD_ARRAY, f'{len(data) if isinstance(data, bytes) else data!r:.20}'
                                      f' data bytes for dtype {dtype.str} shape {shape}')
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    if b'__npgeneric__' in obj:
        dtype = _check_dtype(obj.get(b'dtype'))
        value = obj.get(b'data')
        if isinstance(value, (bytes, str, dict, list)) or value is None:
            raise BadReply(BAD_ARRAY, f'scalar data {value!r:.30}')
        return dtype.type(value)
    return obj


def pack_openpi(value) -> bytes:
    return msgpack.packb(value, default=_openpi_default)


def unpack_openpi(data: bytes, max_bytes: int) -> object:
    return _unpack(data, max_bytes, _openpi_hook)


# --- GR00T --------------------------------------------------------------------------------

def npy_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, np.asarray(array), allow_pickle=False)
    return out.getvalue()


def array_from_npy(data) -> np.ndarray:
    """Load one .npy (allow_pickle=False); BadReply for anything else."""
    if not isinstance(data, bytes):
        raise BadReply(BAD_ARRAY, f'as_npy is {type(data).__name__}, not bytes')
    if not data.startswith(NPY_MAGIC):
        if looks_pickled(data):
            raise BadReply(PICKLED, 'as_npy holds a pickle stream')
        raise BadReply(BAD_ARRAY, 'as_npy lacks the .npy magic')
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:         # object arrays: "... when allow_pickle=False"
        cause = PICKLED if 'pickle' in str(exc) else BAD_ARRAY
        raise BadReply(cause, f'.npy: {exc}') from None
    except (OSError, EOFError) as exc:
        raise BadReply(BAD_ARRAY, f'.npy: {exc}') from None
    _check_dtype(array.dtype.str)
    return array


def _gr00t_default(obj):
    if isinstance(obj, np.ndarray):
        return {'__ndarray_class__': True, 'as_npy': npy_bytes(obj)}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f'cannot pack {type(obj).__name__}')


def _gr00t_hook(obj: dict):
    if '__ndarray_class__' in obj:
        return array_from_npy(obj.get('as_npy'))
    return obj


def pack_gr00t(value) -> bytes:
    return msgpack.packb(value, default=_gr00t_default)


def unpack_gr00t(data: bytes, max_bytes: int) -> object:
    return _unpack(data, max_bytes, _gr00t_hook)


# --- both ---------------------------------------------------------------------------------

def _no_ext(code: int, data: bytes):
    raise BadReply(NOT_MSGPACK, f'msgpack ext type {code}')


def _unpack(data: bytes, max_bytes: int, hook: Callable[[dict], object]) -> object:
    data = bytes(data)
    if len(data) > max_bytes:
        raise BadReply(OVERSIZED, f'{len(data)} bytes > max_reply_bytes {max_bytes}')
    if looks_pickled(data):
        raise BadReply(PICKLED, 'the payload is a pickle stream')
    try:
        return msgpack.unpackb(data, object_hook=hook, ext_hook=_no_ext, raw=False,
                               strict_map_key=False)
    except BadReply:
        raise
    except msgpack.ExtraData:
        raise BadReply(NOT_MSGPACK, 'bytes after the msgpack value') from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise BadReply(NOT_MSGPACK, f'not one msgpack value: {exc}') from None


PACKERS = {OPENPI: pack_openpi, GR00T: pack_gr00t}
UNPACKERS = {OPENPI: unpack_openpi, GR00T: unpack_gr00t}
