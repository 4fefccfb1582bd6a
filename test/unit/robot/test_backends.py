"""core/robot/backends.py: the sim servo backend and the logging dry run."""
import logging

import numpy as np

from vla_insertion.core.robot.backends import DryRunBackend, ServoBackend
from vla_insertion.core.sim.kinematics import HOME_RAD
from vla_insertion.core.sim.live import LiveServo
from vla_insertion.core.sim.servo import HOLD_FLAG, HOLD_TIMEOUT, HOLD_UNARMED
from vla_insertion.core.wire import CommandMessage, FLAG_ARMED

T0 = 100.0          # the receiver's clock at the servo's time 0 [s]


def message(sequence: int, q, timeout_s: float = 0.1) -> CommandMessage:
    return CommandMessage(sender_time_s=1.0, positions_rad=tuple(q), velocities_rad_s=(0.0,) * 6,
                          gripper=1.0, lead_s=0.02, timeout_s=timeout_s, flags=FLAG_ARMED,
                          sequence=sequence)


def test_servo_backend_drives_the_servo_on_the_receivers_clock():
    live = LiveServo()
    backend = ServoBackend(live, T0)
    target = HOME_RAD + np.array([0.03, -0.03, 0.02, 0.0, 0.0, 0.01])
    backend.follow(message(0, target, timeout_s=1.0), T0 + 0.1)
    np.testing.assert_allclose(backend.position(T0 + 0.5), np.append(target, 1.0), atol=1e-4)
    assert live.state_at(0.5).hold_reason is None
    backend.hold(HOLD_FLAG, T0 + 0.6)
    assert live.state_at(0.7).hold_reason == HOLD_FLAG
    backend.hold(HOLD_UNARMED, T0 + 0.8)
    assert live.state_at(0.9).hold_reason == HOLD_UNARMED
    # a timeout is the servo's own: it was given the same timeout_s with the command
    backend.follow(message(1, target, timeout_s=0.2), T0 + 1.0)
    commands = live.commands
    backend.hold(HOLD_TIMEOUT, T0 + 1.2)
    assert live.commands == commands
    assert live.state_at(1.3).hold_reason == HOLD_TIMEOUT


def test_dry_run_logs_what_it_would_command_and_knows_no_position(caplog):
    backend = DryRunBackend(log_period_s=1.0)
    with caplog.at_level(logging.DEBUG, logger='vla_insertion.core.robot.backends'):
        for k in range(5):                          # 100 Hz: one INFO line, then DEBUG
            backend.follow(message(k, HOME_RAD), 10.0 + 0.01 * k)
        backend.hold(HOLD_TIMEOUT, 10.2)
        backend.follow(message(5, HOME_RAD), 10.3)  # the first after a hold: INFO again
    levels = [(r.levelno, r.getMessage().split(' ')[1]) for r in caplog.records]
    assert levels == [(logging.INFO, 'servo')] + [(logging.DEBUG, 'servo')] * 4 + [
        (logging.INFO, 'stop'), (logging.INFO, 'servo')]
    assert 'command 0' in caplog.records[0].getMessage()
    assert '(timeout)' in caplog.records[5].getMessage()
    assert backend.followed == 6 and backend.holds == 1 and backend.last.sequence == 5
    assert backend.position(10.4) is None
