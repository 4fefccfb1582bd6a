"""The two protocols' array encodings: byte layouts as documented, strict decoding, no pickle."""
from __future__ import annotations

import io
import pickle

from hypothesis import given, settings, strategies as st
import msgpack
import numpy as np
from protocol_servers import gr00t_array_in, gr00t_array_out, openpi_array_in, openpi_array_out
import pytest

from vla_insertion.core.remote import codec
from vla_insertion.core.remote.refusals import (
    BAD_ARRAY, BadReply, NOT_MSGPACK, OVERSIZED, PICKLED)

CAP = 1 << 20
ARRAYS = [np.arange(12, dtype=np.float32).reshape(3, 4), np.array([True, False]),
          np.arange(5, dtype='>i8'), np.zeros((2, 0, 3), np.uint8), np.float64(2.5) * np.ones(1)]


@pytest.mark.parametrize('array', ARRAYS, ids=lambda a: f'{a.dtype.str}{a.shape}')
def test_openpi_arrays_match_the_documented_layout(array):
    ours = codec.pack_openpi({'a': array, 'nested': {'b': array}})
    theirs = msgpack.packb({'a': array, 'nested': {'b': array}}, default=openpi_array_in)
    assert ours == theirs
    back = msgpack.unpackb(ours, object_hook=openpi_array_out)
    np.testing.assert_array_equal(back['nested']['b'], array)
    got = codec.unpack_openpi(theirs, CAP)
    assert got['a'].dtype == array.dtype and got['a'].shape == array.shape
    np.testing.assert_array_equal(got['a'], array)
    assert got['a'].flags.writeable           # a copy, not a view of the message


@pytest.mark.parametrize('array', ARRAYS, ids=lambda a: f'{a.dtype.str}{a.shape}')
def test_gr00t_arrays_are_npy_bytes(array):
    data = msgpack.packb({'x': array}, default=gr00t_array_in)
    got = codec.unpack_gr00t(data, CAP)
    np.testing.assert_array_equal(got['x'], array)
    assert got['x'].dtype == array.dtype
    back = msgpack.unpackb(codec.pack_gr00t({'x': array}), object_hook=gr00t_array_out)
    np.testing.assert_array_equal(back['x'], array)


def test_numpy_scalars_and_gr00t_modality_maps_stay_plain():
    data = msgpack.packb({b'__npgeneric__': True, b'data': 3.0, b'dtype': '<f4'})
    value = codec.unpack_openpi(data, CAP)
    assert isinstance(value, np.float32) and value == 3.0
    config = {'__ModalityConfig_class__': True, 'as_json': {'modality_keys': ['ego_view']}}
    assert codec.unpack_gr00t(msgpack.packb({'video': config}), CAP) == {'video': config}


def test_pickles_are_refused_never_loaded():
    class Boom:
        def __reduce__(self):
            return (pytest.fail, ('unpickled!',))
    for unpack in (codec.unpack_openpi, codec.unpack_gr00t):
        with pytest.raises(BadReply) as err:
            unpack(pickle.dumps({'actions': Boom()}), CAP)
        assert err.value.cause == PICKLED
    obj = {b'__ndarray__': True, b'data': b'\0' * 8, b'dtype': '|O', b'shape': [1]}
    with pytest.raises(BadReply) as err:
        codec.unpack_openpi(msgpack.packb({'actions': obj}), CAP)
    assert err.value.cause == PICKLED
    npy = io.BytesIO()
    np.save(npy, np.array([{'a': 1}], dtype=object), allow_pickle=True)
    for payload in (npy.getvalue(), pickle.dumps(np.zeros(3))):
        with pytest.raises(BadReply) as err:
            codec.unpack_gr00t(msgpack.packb(
                {'a': {'__ndarray_class__': True, 'as_npy': payload}}), CAP)
        assert err.value.cause == PICKLED


@pytest.mark.parametrize('payload, cause', [
    (b'\x92\x01', NOT_MSGPACK),                                  # truncated array
    (msgpack.packb({'a': 1}) + b'\x01', NOT_MSGPACK),            # bytes after the value
    (msgpack.packb(msgpack.ExtType(5, b'xx')), NOT_MSGPACK),     # ext types
    (b'\x00' * (CAP + 1), OVERSIZED),
    (msgpack.packb({b'__ndarray__': True, b'data': b'\0' * 3, b'dtype': '<f4',
                    b'shape': [1]}), BAD_ARRAY),                 # data length != shape
    (msgpack.packb({b'__ndarray__': True, b'data': b'', b'dtype': 'not a dtype',
                    b'shape': [0]}), BAD_ARRAY),
    (msgpack.packb({b'__ndarray__': True, b'data': b'', b'dtype': '<U4',
                    b'shape': [0]}), BAD_ARRAY),                 # strings are no actions
    (msgpack.packb({b'__ndarray__': True, b'data': b'', b'dtype': '<f4',
                    b'shape': [-1]}), BAD_ARRAY),
])
def test_malformed_openpi_payloads_name_their_cause(payload, cause):
    with pytest.raises(BadReply) as err:
        codec.unpack_openpi(payload, CAP)
    assert err.value.cause == cause


def test_npy_needs_its_magic():
    zipped = io.BytesIO()
    np.savez(zipped, a=np.zeros(2))
    for data in (zipped.getvalue(), b'not npy', 17):
        with pytest.raises(BadReply) as err:
            codec.array_from_npy(data)
        assert err.value.cause == BAD_ARRAY


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_bad_reply(data):
    for unpack in (codec.unpack_openpi, codec.unpack_gr00t):
        try:
            unpack(data, CAP)
        except BadReply:
            pass
