"""Wire codecs: round trips, byte fixtures that pin the layouts, every failure mode, fuzzing."""
import math
import struct

from hypothesis import given, HealthCheck, settings, strategies as st
import numpy as np
import pytest

from vla_insertion.core import wire
from vla_insertion.core.wire import (
    CameraMessage, CommandMessage, EpisodeMessage, FLAG_ARMED, FLAG_HOLD, make_codec,
    RobotMessage, SensorBatch, WireError)

JPEG = b'\xff\xd8\xff\xe0' + bytes(range(60)) + b'\xff\xd9'
CAMERA = CameraMessage(view='zed_1', capture_time_s=1700000000.25, width=640, height=360,
                       data=JPEG, session=7, sequence=42)
ROBOT = RobotMessage(sender_time_s=1700000000.5, joints_deg=(10.0, -90.0, 90.0, 0.0, 45.0, 180.0),
                     position_mm=(400.0, -120.0, 250.0), rotation_deg=(180.0, 0.0, 90.0),
                     gripper=1.0, session=3, sequence=9)
SENSOR = SensorBatch(sequence=100, times_s=np.array([10.0, 10.001, 10.002]),
                     samples=np.arange(6, dtype=np.float32).reshape(3, 2), session=5)
COMMAND = CommandMessage(sender_time_s=1700000000.75,
                         positions_rad=(0.1, -1.7, 1.7, -1.6, -1.6, 0.0),
                         velocities_rad_s=(0.01, 0.0, -0.02, 0.0, 0.0, 0.5), gripper=1.0,
                         lead_s=0.02, timeout_s=0.1, flags=FLAG_ARMED, session=11, sequence=12)
EPISODE = EpisodeMessage(sender_time_s=1700000001.0, event='end', episode=4, seed=7,
                         hole_m=(-0.41, -0.28, 0.05), control='commands', state='settling',
                         elapsed_s=6.25, depth_m=0.0241, force_n=11.0, peak_force_n=14.5,
                         mean_force_n=6.5, max_depth_m=0.0241, success=True, reason='success',
                         time_to_insert_s=6.25, session=21, sequence=22)
GOOD = {'camera_v1': CAMERA, 'robot_v1': ROBOT, 'robot_msgpack_v1': ROBOT, 'sensor_v1': SENSOR,
        'command_v1': COMMAND, 'episode_v1': EPISODE}


def test_registry_names_and_streams():
    assert wire.codec_names() == ['camera_v1', 'command_v1', 'episode_v1', 'robot_msgpack_v1',
                                  'robot_v1', 'sensor_v1']
    assert wire.codec_names('episode') == ['episode_v1']
    assert wire.codec_names('command') == ['command_v1']
    assert wire.codec_names('robot') == ['robot_msgpack_v1', 'robot_v1']
    with pytest.raises(KeyError):
        make_codec('camera_v1', stream='sensor')
    with pytest.raises(KeyError):
        make_codec('camera_v9')


@pytest.mark.parametrize('name', sorted(GOOD))
def test_round_trip(name):
    codec = make_codec(name)
    back = codec.decode(codec.encode(GOOD[name]))
    if name == 'sensor_v1':
        assert (back.sequence, back.session) == (SENSOR.sequence, SENSOR.session)
        np.testing.assert_array_equal(back.times_s, SENSOR.times_s)
        np.testing.assert_array_equal(back.samples, SENSOR.samples)
        assert back.samples.dtype == np.float32 and back.samples.flags.writeable
    else:
        assert back == GOOD[name]


# --- byte fixtures: written out by hand from docs/wire.md, not produced by the encoders ------

def test_camera_v1_fixture():
    payload = b'\xff\xd8\x00\xff\xd9'
    data = (b'VLAC' + bytes([1, 1, 3, 0]) + (7).to_bytes(4, 'little')
            + (42).to_bytes(4, 'little') + struct.pack('<d', 12.5)
            + (640).to_bytes(2, 'little') + (360).to_bytes(2, 'little')
            + len(payload).to_bytes(4, 'little') + b'oak' + payload)
    msg = make_codec('camera_v1').decode(data)
    assert msg == CameraMessage(view='oak', capture_time_s=12.5, width=640, height=360,
                                data=payload, encoding='jpeg', session=7, sequence=42)
    assert make_codec('camera_v1').encode(msg) == data


def test_command_v1_fixture():
    data = (b'VLCM' + bytes([1, 3, 0, 0]) + (11).to_bytes(4, 'little')
            + (12).to_bytes(4, 'little') + struct.pack('<ddd', 100.5, 0.02, 0.1)
            + struct.pack('<6d', 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
            + struct.pack('<6d', -1.0, 0.0, 0.0, 0.0, 0.0, 1.0) + struct.pack('<d', 0.5))
    assert len(data) == 144
    msg = make_codec('command_v1').decode(data)
    assert msg == CommandMessage(sender_time_s=100.5, positions_rad=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6),
                                 velocities_rad_s=(-1.0, 0.0, 0.0, 0.0, 0.0, 1.0), gripper=0.5,
                                 lead_s=0.02, timeout_s=0.1, flags=FLAG_ARMED | FLAG_HOLD,
                                 session=11, sequence=12)
    assert msg.armed and msg.hold
    assert make_codec('command_v1').encode(msg) == data


def test_robot_v1_fixture():
    values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 100.0, 200.0, 300.0, 180.0, 0.0, 90.0, 0.5]
    data = (b'VLAR\x01\x00\x00\x00' + (3).to_bytes(4, 'little') + (9).to_bytes(4, 'little')
            + struct.pack('<d', 99.0) + b''.join(struct.pack('<d', v) for v in values))
    assert len(data) == 128
    msg = make_codec('robot_v1').decode(data)
    assert msg.sender_time_s == 99.0 and msg.joints_deg == (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
    assert msg.position_mm == (100.0, 200.0, 300.0) and msg.rotation_deg == (180.0, 0.0, 90.0)
    assert (msg.gripper, msg.session, msg.sequence) == (0.5, 3, 9)


def test_episode_v1_fixture():
    import msgpack
    doc = {'magic': 'VLAE', 'v': 1, 'session': 21, 'seq': 22, 't': 100.0, 'event': 'status',
           'episode': 3, 'seed': 9, 'hole_m': [-0.4, -0.3, 0.05], 'control': 'reference',
           'state': 'running', 'elapsed_s': 2.5, 'depth_m': 0.01, 'force_n': 6.0,
           'peak_force_n': 7.0, 'mean_force_n': 5.0, 'max_depth_m': 0.01, 'success': None,
           'reason': None, 'time_to_insert_s': None}
    msg = make_codec('episode_v1').decode(msgpack.packb(doc))
    assert msg == EpisodeMessage(
        sender_time_s=100.0, event='status', episode=3, seed=9, hole_m=(-0.4, -0.3, 0.05),
        control='reference', state='running', elapsed_s=2.5, depth_m=0.01, force_n=6.0,
        peak_force_n=7.0, mean_force_n=5.0, max_depth_m=0.01, session=21, sequence=22)
    assert msgpack.unpackb(make_codec('episode_v1').encode(msg)) == doc


def test_sensor_v1_fixture():
    data = (b'VLAS\x01\x02' + (2).to_bytes(2, 'little') + (5).to_bytes(4, 'little')
            + (4294967295).to_bytes(4, 'little') + struct.pack('<2d', 1.0, 1.5)
            + struct.pack('<4f', 0.5, -1.0, 2.0, 3.0))
    batch = make_codec('sensor_v1').decode(data)
    assert (batch.session, batch.sequence, batch.count) == (5, 4294967295, 2)
    np.testing.assert_array_equal(batch.samples, [[0.5, -1.0], [2.0, 3.0]])
    np.testing.assert_array_equal(batch.times_s, [1.0, 1.5])


# --- every failure mode has its cause ------------------------------------------------------

def _camera(**changes):
    values = {'view': CAMERA.view, 'capture_time_s': CAMERA.capture_time_s,
              'width': CAMERA.width, 'height': CAMERA.height, 'data': CAMERA.data}
    values.update(changes)
    return make_codec('camera_v1').encode(CameraMessage(**values))


def _robot(**changes):
    values = {'sender_time_s': ROBOT.sender_time_s, 'joints_deg': ROBOT.joints_deg,
              'position_mm': ROBOT.position_mm, 'rotation_deg': ROBOT.rotation_deg,
              'gripper': ROBOT.gripper}
    values.update(changes)
    return RobotMessage(**values)


def _sensor(samples=None, times=None):
    return make_codec('sensor_v1').encode(SensorBatch(
        sequence=1, times_s=SENSOR.times_s if times is None else np.asarray(times),
        samples=SENSOR.samples if samples is None else np.asarray(samples, np.float32)))


CAMERA_BYTES = make_codec('camera_v1').encode(CAMERA)
SENSOR_BYTES = make_codec('sensor_v1').encode(SENSOR)
ROBOT_BYTES = make_codec('robot_v1').encode(ROBOT)
ROBOT_MSGPACK = make_codec('robot_msgpack_v1').encode(ROBOT)
COMMAND_BYTES = make_codec('command_v1').encode(COMMAND)


def _episode(**changes):
    values = {f: getattr(EPISODE, f) for f in EPISODE.__dataclass_fields__}
    values.update(changes)
    return make_codec('episode_v1').encode(EpisodeMessage(**values))


EPISODE_BYTES = make_codec('episode_v1').encode(EPISODE)


def _command(**changes):
    values = {f: getattr(COMMAND, f) for f in COMMAND.__dataclass_fields__}
    values.update(changes)
    return make_codec('command_v1').encode(CommandMessage(**values))


BAD_CASES = [
    ('camera_v1', CAMERA_BYTES[:20], wire.TRUNCATED),
    ('camera_v1', CAMERA_BYTES[:-1], wire.TRUNCATED),
    ('camera_v1', CAMERA_BYTES + b'\0', wire.OVERSIZED),
    ('camera_v1', CAMERA_BYTES + bytes(4_000_000), wire.OVERSIZED),
    ('camera_v1', b'XXXX' + CAMERA_BYTES[4:], wire.BAD_MAGIC),
    ('camera_v1', CAMERA_BYTES[:4] + b'\x02' + CAMERA_BYTES[5:], wire.BAD_VERSION),
    ('camera_v1', _camera(capture_time_s=math.nan), wire.NON_FINITE),
    ('camera_v1', _camera(capture_time_s=math.inf), wire.NON_FINITE),
    ('camera_v1', _camera(data=b'GIF89a'), wire.BAD_VALUE),
    ('camera_v1', _camera(width=0), wire.BAD_VALUE),
    ('camera_v1', _camera(view='x' * 65), wire.BAD_COUNT),
    ('camera_v1', CAMERA_BYTES.replace(b'zed_1', b'\xff\xfe_\xc3('), wire.BAD_VALUE),
    ('robot_v1', ROBOT_BYTES[:100], wire.TRUNCATED),
    ('robot_v1', ROBOT_BYTES + b'\0', wire.OVERSIZED),
    ('robot_v1', ROBOT_BYTES + bytes(5000), wire.OVERSIZED),
    ('robot_v1', b'VLAC' + ROBOT_BYTES[4:], wire.BAD_MAGIC),
    ('robot_v1', ROBOT_BYTES[:4] + b'\x07' + ROBOT_BYTES[5:], wire.BAD_VERSION),
    ('robot_v1', make_codec('robot_v1').encode(_robot(joints_deg=(math.nan,) * 6)),
     wire.NON_FINITE),
    ('robot_v1', make_codec('robot_v1').encode(_robot(gripper=1.5)), wire.BAD_VALUE),
    ('robot_msgpack_v1', ROBOT_MSGPACK[:30], wire.TRUNCATED),
    ('robot_msgpack_v1', ROBOT_MSGPACK + b'\x00', wire.OVERSIZED),
    ('robot_msgpack_v1', b'\x93\x01\x02\x03', wire.BAD_MAGIC),
    ('robot_msgpack_v1', make_codec('robot_msgpack_v1').encode(
        _robot(position_mm=(1.0, 2.0))), wire.BAD_COUNT),
    ('robot_msgpack_v1', make_codec('robot_msgpack_v1').encode(
        _robot(rotation_deg=(0.0, math.inf, 0.0))), wire.NON_FINITE),
    ('sensor_v1', SENSOR_BYTES[:10], wire.TRUNCATED),
    ('sensor_v1', SENSOR_BYTES[:-4], wire.TRUNCATED),
    ('sensor_v1', SENSOR_BYTES + b'\0' * 4, wire.OVERSIZED),
    ('sensor_v1', SENSOR_BYTES + bytes(20000), wire.OVERSIZED),
    ('sensor_v1', b'VLAR' + SENSOR_BYTES[4:], wire.BAD_MAGIC),
    ('sensor_v1', SENSOR_BYTES[:4] + b'\x00' + SENSOR_BYTES[5:], wire.BAD_VERSION),
    ('sensor_v1', SENSOR_BYTES[:5] + b'\x00' + SENSOR_BYTES[6:], wire.BAD_COUNT),
    ('sensor_v1', _sensor(samples=[[0, 1], [np.nan, 2], [3, 4]]), wire.NON_FINITE),
    ('sensor_v1', _sensor(times=[1.0, np.inf, 2.0]), wire.NON_FINITE),
    ('sensor_v1', _sensor(times=[1.0, 0.5, 2.0]), wire.BAD_VALUE),
    ('command_v1', COMMAND_BYTES[:100], wire.TRUNCATED),
    ('command_v1', COMMAND_BYTES + b'\0', wire.OVERSIZED),
    ('command_v1', b'VLAR' + COMMAND_BYTES[4:], wire.BAD_MAGIC),
    ('command_v1', COMMAND_BYTES[:4] + b'\x02' + COMMAND_BYTES[5:], wire.BAD_VERSION),
    ('command_v1', _command(positions_rad=(math.nan,) * 6), wire.NON_FINITE),
    ('command_v1', _command(velocities_rad_s=(0.0, math.inf, 0, 0, 0, 0)), wire.NON_FINITE),
    ('command_v1', _command(gripper=-0.1), wire.BAD_VALUE),
    ('command_v1', _command(lead_s=2.0), wire.BAD_VALUE),
    ('command_v1', _command(timeout_s=0.0), wire.BAD_VALUE),
    ('command_v1', _command(flags=0x80), wire.BAD_VALUE),
    ('episode_v1', EPISODE_BYTES[:40], wire.TRUNCATED),
    ('episode_v1', EPISODE_BYTES + b'\x00', wire.OVERSIZED),
    ('episode_v1', b'\x81\xa5magic\xa4VLAR', wire.BAD_MAGIC),
    ('episode_v1', EPISODE_BYTES.replace(b'\xa1v\x01', b'\xa1v\x02'), wire.BAD_VERSION),
    ('episode_v1', _episode(hole_m=(0.0, 0.0)), wire.BAD_COUNT),
    ('episode_v1', _episode(peak_force_n=math.nan), wire.NON_FINITE),
    ('episode_v1', _episode(time_to_insert_s=math.inf), wire.NON_FINITE),
    ('episode_v1', _episode(event='begin'), wire.BAD_VALUE),
    ('episode_v1', _episode(reason='crashed'), wire.BAD_VALUE),
    ('episode_v1', _episode(event='status'), wire.BAD_VALUE),     # a reason without an end
    ('episode_v1', _episode(reason=None), wire.BAD_VALUE),        # an end without a reason
    ('episode_v1', _episode(control='teleop'), wire.BAD_VALUE),
]


@pytest.mark.parametrize('name,data,cause', BAD_CASES,
                         ids=[f'{c[0]}-{c[2]}-{i}' for i, c in enumerate(BAD_CASES)])
def test_bad_input_raises_wire_error_with_cause(name, data, cause):
    codec = make_codec(name)
    with pytest.raises(WireError) as info:
        codec.decode(data)
    assert info.value.cause == cause
    assert isinstance(info.value, ValueError)


def test_sensor_channel_count_checked_against_config():
    with pytest.raises(WireError) as info:
        make_codec('sensor_v1', channels=7).decode(SENSOR_BYTES)
    assert info.value.cause == wire.BAD_COUNT


def test_robot_state_in_si_units():
    state = wire.robot_state(ROBOT, stamp_s=5.0)
    np.testing.assert_allclose(state.joint_positions_rad,
                               np.radians([10.0, -90.0, 90.0, 0.0, 45.0, 180.0]))
    np.testing.assert_allclose(state.tool_position_m, [0.4, -0.12, 0.25])
    # R = Rz(90) Rx(180): the quaternion of a half turn about the axis (1, 1, 0) / sqrt(2)
    np.testing.assert_allclose(state.tool_orientation_xyzw, [0.5 ** 0.5, 0.5 ** 0.5, 0, 0],
                               atol=1e-12)
    assert state.stamp_s == 5.0 and state.gripper == 1.0


@pytest.mark.parametrize('angles', [(0, 0, 0), (30, 0, 0), (0, 45, 0), (10, 20, 30)])
def test_quaternion_matches_rotation_matrix(angles):
    rx, ry, rz = np.radians(angles)
    x, y, z, w = wire.quaternion_from_euler_xyz(rx, ry, rz)
    from_quat = np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])

    def rot(axis, a):
        c, s = np.cos(a), np.sin(a)
        m = {'x': [[1, 0, 0], [0, c, -s], [0, s, c]], 'y': [[c, 0, s], [0, 1, 0], [-s, 0, c]],
             'z': [[c, -s, 0], [s, c, 0], [0, 0, 1]]}[axis]
        return np.array(m)
    np.testing.assert_allclose(from_quat, rot('z', rz) @ rot('y', ry) @ rot('x', rx), atol=1e-12)


# --- fuzzing: whatever the bytes, a decoder returns a record or raises WireError ------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decode_or_wire_error(name, data):
    try:
        make_codec(name, max_bytes=8192).decode(data)
    except WireError as exc:
        assert exc.cause in wire.CAUSES


@pytest.mark.parametrize('name', sorted(GOOD))
@FUZZ
@given(data=st.binary(max_size=600))
def test_fuzz_random_bytes(name, data):
    _decode_or_wire_error(name, data)


@pytest.mark.parametrize('name', sorted(GOOD))
@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
       cut=st.integers(0, 10_000), tail=st.binary(max_size=16))
def test_fuzz_mutated_valid_messages(name, edits, cut, tail):
    # random bytes rarely get past the magic; mutating a valid message reaches the deep checks
    data = bytearray(make_codec(name).encode(GOOD[name]))
    for pos, value in edits:
        data[pos % len(data)] = value
    _decode_or_wire_error(name, bytes(data[:max(1, cut % (len(data) + 1))]) + tail)


@FUZZ
@given(doc=st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=6), max_leaves=20))
def test_fuzz_msgpack_documents(doc):
    import msgpack
    base = {'magic': 'VLAR', 'v': 1, 'session': 1, 'seq': 1, 't': 1.0,
            'joints_deg': [0.0] * 6, 'pos_mm': [0.0] * 3, 'rot_deg': [0.0] * 3, 'gripper': 0.0}
    for key in list(base):
        _decode_or_wire_error('robot_msgpack_v1', msgpack.packb({**base, key: doc}))
    episode = msgpack.unpackb(make_codec('episode_v1').encode(EPISODE))
    for key in list(episode):
        _decode_or_wire_error('episode_v1', msgpack.packb({**episode, key: doc}))
