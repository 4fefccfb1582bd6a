"""The figures docs/wire.md gives a sender, checked against the code that enforces them."""
from pathlib import Path

import numpy as np
import pytest

from vla_insertion.core.bridge import clock
from vla_insertion.core.bridge.stream import MAX_SEQUENCE_JUMP, REMEMBER_SESSIONS
from vla_insertion.core.config import CameraBridgeConfig, RobotBridgeConfig, SensorBridgeConfig
from vla_insertion.core.vlm.selection import FUTURE_TOLERANCE_S
from vla_insertion.core.wire import make_codec, OVERSIZED, SensorBatch, WireError

DOC = (Path(__file__).resolve().parents[3] / 'docs' / 'wire.md').read_text()


def test_default_caps():
    assert CameraBridgeConfig().max_message_bytes == 4_000_000
    assert RobotBridgeConfig().max_message_bytes == 4096
    assert SensorBridgeConfig().max_datagram_bytes == 16384
    for figure in ('4 000 000 bytes', '4096 bytes', '16384 bytes'):
        assert figure in DOC


def _batch(n, channels=7):
    return SensorBatch(sequence=0, times_s=1.0 + np.arange(n) / 650.0,
                       samples=np.zeros((n, channels), np.float32))


def test_the_sensor_cap_limits_a_batch_to_454_samples_at_7_channels():
    codec = make_codec('sensor_v1', max_bytes=SensorBridgeConfig().max_datagram_bytes,
                       channels=7)
    assert len(codec.encode(_batch(10))) == 376
    assert codec.decode(codec.encode(_batch(454))).count == 454
    with pytest.raises(WireError) as info:
        codec.decode(codec.encode(_batch(455)))
    assert info.value.cause == OVERSIZED
    assert '**454**' in DOC and '376 bytes' in DOC


def test_clock_and_sequence_figures():
    assert (clock.TOLERANCE_S, clock.STEP_MESSAGES) == (0.05, 3)
    assert (clock.STEP_THRESHOLD_S, clock.LAG_CONFIRM_S) == (0.5, 1.0)
    assert MAX_SEQUENCE_JUMP == 65536 and '65536' in DOC
    assert REMEMBER_SESSIONS == 16 and '16 sessions heard most recently' in DOC
    assert FUTURE_TOLERANCE_S == 0.1
    for figure in ('50 ms', '100 ms', '0.5 s', '1 s', '0.1 s', '2 x cap + 65536'):
        assert figure in DOC, figure
