"""core/sim/live.py's LiveServo: the servo alone stepped on demand to the caller's time."""
import numpy as np
import pytest

from vla_insertion.core.sim.kinematics import HOME_RAD
from vla_insertion.core.sim.live import LiveServo
from vla_insertion.core.sim.servo import HOLD_NO_COMMAND, HOLD_TIMEOUT, ServoCommand


def test_live_servo_starts_at_home_follows_a_command_and_holds_after_its_timeout():
    live = LiveServo()
    start = live.state_at(0.5)
    assert start.hold_reason == HOLD_NO_COMMAND
    np.testing.assert_array_equal(start.positions, HOME_RAD)
    target = HOME_RAD + 0.05
    live.command(ServoCommand(positions=target, velocities=np.zeros(6), gripper=0.0,
                              lead_s=0.02, timeout_s=0.5), arrival_s=1.0)
    moving = live.state_at(1.4)
    assert moving.hold_reason is None and moving.t_s == pytest.approx(1.4)
    np.testing.assert_allclose(moving.positions, target, atol=1e-4)
    assert moving.gripper == 0.0                  # closed to open in 0.2 s
    held = live.state_at(2.0)
    assert held.hold_reason == HOLD_TIMEOUT       # no command since 1.0 s + 0.5 s
    np.testing.assert_array_equal(held.velocities, 0.0)
    np.testing.assert_allclose(live.joints_at(2.5), np.append(held.positions, 0.0))
    # a caller asking for an earlier time gets the servo as it is: time never runs back
    assert live.state_at(1.0).t_s == pytest.approx(2.5)
    assert live.commands == 1
