"""core/robot/receiver.py over a real loopback PULL socket: holds, refusals counted by cause.

The test pushes command_v1 with ZMQ to a CommandReceiver whose backend records what it is told.
Waits are bounded and on conditions; the only time asserted is that a hold never comes early.
"""
from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
from support import free_port, wait_for
import zmq

from vla_insertion.core.config import ConfigError
from vla_insertion.core.orchestration.builders import executor_settings
from vla_insertion.core.robot import (
    CommandLimits, CommandReceiver, HOLD_REFUSED, RECEIVER_CAUSES, ReceiverConfig)
from vla_insertion.core.sim.kinematics import HOME_RAD
from vla_insertion.core.sim.servo import HOLD_FLAG, HOLD_NO_COMMAND, HOLD_TIMEOUT, HOLD_UNARMED
from vla_insertion.core.wire import CommandCodecV1, CommandMessage, FLAG_ARMED, FLAG_HOLD

LIMITS = CommandLimits.from_settings(executor_settings(None))
CODEC = CommandCodecV1()


class Recorder:
    """A backend that records its calls: ('follow', sequence, t) and ('hold', reason, t)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object, float]] = []
        self.timeouts: list[float] = []            # timeout_s of each command followed
        self._lock = threading.Lock()

    def follow(self, command: CommandMessage, arrival_s: float) -> None:
        with self._lock:
            self.calls.append(('follow', command.sequence, arrival_s))
            self.timeouts.append(command.timeout_s)

    def hold(self, reason: str, now_s: float) -> None:
        with self._lock:
            self.calls.append(('hold', reason, now_s))

    def position(self, now_s: float) -> None:
        return None

    def holds(self) -> list[str]:
        with self._lock:
            return [c[1] for c in self.calls if c[0] == 'hold']

    def followed(self) -> list[int]:
        with self._lock:
            return [c[1] for c in self.calls if c[0] == 'follow']


class Cell:
    """A receiver on a free port, a PUSH socket connected to it, the recording backend."""

    def __init__(self, **config) -> None:
        self.backend = Recorder()
        self.config = ReceiverConfig(port=free_port(), **config)
        self.receiver = CommandReceiver(self.config, self.backend, LIMITS)
        self.receiver.start()
        self.context = zmq.Context(1)
        self.push = self.context.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 0)
        self.push.connect(f'tcp://127.0.0.1:{self.config.port}')

    def send(self, sequence: int, q=HOME_RAD, flags: int = FLAG_ARMED, session: int = 7,
             age_s: float = 0.0, timeout_s: float = 0.1) -> None:
        """Send one command, sent `age_s` ago by a clock synchronised with ours."""
        self.push.send(CODEC.encode(CommandMessage(
            sender_time_s=time.time() - age_s, positions_rad=tuple(float(x) for x in q),
            velocities_rad_s=(0.0,) * 6, gripper=1.0, lead_s=0.02, timeout_s=timeout_s,
            flags=flags, session=session, sequence=sequence)))

    def received(self, n: int) -> bool:
        return wait_for(lambda: self.receiver.loop.received >= n)

    def drops(self) -> dict:
        return {k: v for k, v in self.receiver.loop.drops.as_dict().items() if v}

    def close(self) -> None:
        self.push.close(linger=0)
        self.context.term()
        self.receiver.close()


@pytest.fixture
def cell(request):
    made = []

    def make(**config) -> Cell:
        made.append(Cell(**config))
        return made[-1]
    yield make
    for c in made:
        c.close()


def test_it_holds_on_silence_from_the_start_and_after_the_last_command(cell):
    c = cell(clock_offset_s=0.0, max_age_s=5.0)
    assert c.receiver.hold_reason == HOLD_NO_COMMAND and c.backend.calls == []
    c.send(0, timeout_s=5.0)                          # a slow test machine holds no earlier
    c.send(1, timeout_s=5.0)
    c.send(2, timeout_s=0.1)
    assert wait_for(lambda: c.backend.holds() == [HOLD_TIMEOUT])
    assert c.backend.followed() == [0, 1, 2] and c.receiver.hold_reason == HOLD_TIMEOUT
    last_follow, hold = c.backend.calls[-2][2], c.backend.calls[-1][2]
    assert hold >= last_follow + 0.1                  # never before the command's timeout
    # a new command resumes; the executor's own HOLD and a disarm hold, once each
    c.send(3, timeout_s=5.0)
    c.send(4, flags=FLAG_ARMED | FLAG_HOLD)
    c.send(5, flags=FLAG_ARMED | FLAG_HOLD)
    c.send(6, flags=0)
    assert c.received(7)
    assert wait_for(lambda: c.backend.holds() == [HOLD_TIMEOUT, HOLD_FLAG, HOLD_UNARMED])
    stats = c.receiver.stats()
    assert stats['accepted'] == 7 and stats['followed'] == 4 and stats['dropped'] == 0
    assert stats['holding'] == HOLD_UNARMED and stats['holds.timeout'] == 1


def test_a_configured_timeout_replaces_the_commands_own(cell):
    c = cell(clock_offset_s=0.0, max_age_s=5.0, timeout_s=0.3)
    c.send(0, timeout_s=0.05)
    assert wait_for(lambda: c.backend.holds() == [HOLD_TIMEOUT])
    assert c.backend.timeouts == [0.3]
    assert c.backend.calls[1][2] >= c.backend.calls[0][2] + 0.3


def test_stale_late_and_out_of_limit_commands_are_refused_and_counted_by_cause(cell):
    c = cell(clock_offset_s=0.0, max_age_s=1.0)
    out = HOME_RAD.copy()
    out[2] = 4.0                                      # the elbow's range is +-pi
    c.send(0, timeout_s=5.0)
    c.send(1, timeout_s=5.0)
    c.send(1)                                         # a repeat
    c.send(0)                                         # a reordering
    c.send(2, age_s=5.0)                              # five seconds on the way
    c.send(3, q=out)                                  # outside the limits: refused, holds
    c.push.send(b'JUNK' + bytes(140))                 # not a command at all
    c.send(0, session=8, timeout_s=5.0)               # the executor restarted
    c.send(4, session=7)                              # its previous instance
    assert c.received(9)
    assert c.drops() == {'late': 2, 'stale': 1, 'position_limit': 1, 'bad_magic': 1,
                         'stale_session': 1}
    assert set(c.receiver.loop.drops.as_dict()) == set(RECEIVER_CAUSES)
    assert c.backend.followed() == [0, 1, 0]
    assert c.backend.holds() == [HOLD_REFUSED]
    assert c.receiver.hold_reason is None             # following session 8's command
    assert c.receiver.stats()['accepted'] == 3


def test_a_step_beyond_the_limits_holds_until_one_fits(cell):
    c = cell(clock_offset_s=0.0, max_age_s=5.0)
    c.send(0, timeout_s=5.0)
    jump = HOME_RAD + np.array([0.1, 0.0, 0.0, 0.0, 0.0, 0.0])
    c.send(1, q=jump, timeout_s=5.0)                  # 0.1 rad in one period of 10 ms
    c.send(20, q=jump, timeout_s=5.0)                 # 20 periods after command 0: fits
    assert c.received(3)
    assert wait_for(lambda: c.backend.followed() == [0, 20])
    assert c.drops() == {'step_limit': 1} and c.backend.holds() == [HOLD_REFUSED]


def test_a_busy_port_is_a_configuration_error():
    with socket.socket() as holder:
        holder.bind(('127.0.0.1', 0))
        holder.listen()
        config = ReceiverConfig(port=holder.getsockname()[1])
        with pytest.raises(ConfigError, match='cannot open the socket'):
            CommandReceiver(config, Recorder(), LIMITS)


@pytest.mark.parametrize('field, value', [('port', 0), ('max_age_s', 0.0), ('timeout_s', 11.0),
                                          ('bind_address', 'tcp://x'),
                                          ('clock_offset_s', float('nan')),
                                          ('max_message_bytes', 100)])
def test_the_config_refuses_bad_values(field, value):
    with pytest.raises(ConfigError, match=field):
        ReceiverConfig(**{field: value})
