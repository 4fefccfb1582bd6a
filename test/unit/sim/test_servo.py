"""The joint servo: tracks within its limits, holds on timeout, HOLD and unarmed commands."""
import numpy as np
import pytest

from vla_insertion.core.config import ConfigError
from vla_insertion.core.sim.servo import (
    HOLD_FLAG, HOLD_NO_COMMAND, HOLD_TIMEOUT, HOLD_UNARMED, JointServo, ServoCommand, ServoParams)
from vla_insertion.core.wire import CommandMessage, FLAG_ARMED, FLAG_HOLD

DT = 0.001
PARAMS = ServoParams()
V_MAX = np.array(PARAMS.max_velocity_rad_s)
A_MAX = np.array(PARAMS.max_acceleration_rad_s2)


def command(positions, velocities=None, **kwargs):
    velocities = np.zeros(6) if velocities is None else np.asarray(velocities, float)
    return ServoCommand(np.asarray(positions, float), velocities, **kwargs)


def run(servo, t0, seconds, commands=None, period_s=0.01):
    """Step for `seconds`; commands(t) -> ServoCommand | None every period_s. (T, 6) q and v."""
    qs, vs = [], []
    n = int(round(seconds / DT))
    every = int(round(period_s / DT))
    for k in range(n):
        t = t0 + k * DT
        if commands is not None and k % every == 0:
            cmd = commands(t)
            if cmd is not None:
                servo.command(cmd, t)
        servo.step(t, DT)
        qs.append(servo.q.copy())
        vs.append(servo.v.copy())
    return np.array(qs), np.array(vs)


def within_limits(vs):
    acc = np.diff(np.vstack([np.zeros(6), vs]), axis=0) / DT
    return (np.abs(vs) <= V_MAX + 1e-9).all() and (np.abs(acc) <= A_MAX + 1e-6).all()


def test_a_step_is_reached_within_the_limits_without_overshoot():
    servo = JointServo()
    servo.reset(np.zeros(6), gripper=1.0)
    target = np.array([1.0, -0.5, 0.3, 0.01, 0.0, -2.0])
    qs, vs = run(servo, 0.0, 3.0, lambda t: command(target, timeout_s=0.2))
    assert within_limits(vs)
    assert np.abs(vs).max(axis=0)[0] == pytest.approx(V_MAX[0])     # the big moves saturate
    np.testing.assert_allclose(qs[-1], target, atol=1e-6)
    overshoot = np.max((qs - target) * np.sign(target), axis=0)
    assert overshoot.max() < 2e-3                                   # [rad]


def test_a_ramp_with_feed_forward_is_tracked_closely():
    servo = JointServo()
    servo.reset(np.zeros(6), gripper=1.0)
    w, lead = 0.5, 0.05                                             # [rad/s], [s]

    def ramp(t):
        return command(np.full(6, w * (t + lead)), np.full(6, w), lead_s=lead, timeout_s=0.2)
    qs, vs = run(servo, 0.0, 2.0, ramp)
    times = np.arange(1, len(qs) + 1) * DT
    assert within_limits(vs)
    assert np.abs(qs[500:, 0] - w * times[500:]).max() < 1e-3      # [rad] after the start-up


def test_the_commanded_point_is_reached_lead_after_arrival():
    servo = JointServo()
    servo.reset(np.zeros(6), gripper=1.0)
    target = np.full(6, 0.2)
    servo.command(command(target, lead_s=0.5, timeout_s=5.0), 0.0)
    qs, _ = run(servo, 0.0, 0.7)
    midway = qs[249, 0]
    assert 0.05 < midway < 0.15                                     # on its way at half time
    np.testing.assert_allclose(qs[int(0.5 / DT) + 100], target, atol=1e-3)   # lead + 5 tau


def test_commands_stopping_decelerate_within_limits_and_hold():
    servo = JointServo()
    servo.reset(np.zeros(6), gripper=1.0)
    w = 1.5

    def until_one_second(t):
        if t < 1.0:
            return command(np.full(6, w * (t + 0.05)), np.full(6, w), lead_s=0.05, timeout_s=0.1)
        return None
    qs, vs = run(servo, 0.0, 2.5, until_one_second)
    assert servo.hold_reason == HOLD_TIMEOUT
    assert within_limits(vs)
    assert np.abs(vs[-1]).max() == 0.0
    stopped = qs[-1]
    np.testing.assert_array_equal(qs[-300:], np.tile(stopped, (300, 1)))    # and stays there
    # the last target was w * 1.04; stopping takes at most v^2 / 2a beyond the timeout's travel
    assert (stopped < w * 1.05 + w * 0.1 + w ** 2 / (2 * A_MAX) + 1e-3).all()


def test_hold_decelerates_at_the_acceleration_limit():
    servo = JointServo()
    servo.reset(np.zeros(6), gripper=1.0)
    far = np.full(6, 5.0)
    run(servo, 0.0, 0.4, lambda t: command(far, timeout_s=0.2))      # moving at speed now
    speed = servo.v.copy()
    assert (np.abs(speed) > 1.0).all()
    q_at_hold = servo.q.copy()
    servo.command(command(far, hold=True), 0.4)
    qs, vs = run(servo, 0.4, 1.0)
    assert servo.hold_reason == HOLD_FLAG
    assert np.abs(vs[-1]).max() == 0.0
    decel = np.diff(np.vstack([speed, vs]), axis=0) / DT
    assert (np.abs(decel) <= A_MAX + 1e-6).all()
    np.testing.assert_allclose(qs[-1] - q_at_hold, speed ** 2 / (2 * A_MAX), rtol=0.05)


def test_unarmed_commands_are_ignored_and_hold():
    servo = JointServo()
    servo.reset(np.full(6, 0.1), gripper=1.0)
    assert servo.hold_reason == HOLD_NO_COMMAND
    qs, _ = run(servo, 0.0, 0.5, lambda t: command(np.full(6, 1.0), armed=False, gripper=0.0))
    assert servo.hold_reason == HOLD_UNARMED
    np.testing.assert_array_equal(qs[-1], np.full(6, 0.1))
    assert servo.gripper == 1.0


def test_no_command_at_all_holds_at_rest():
    servo = JointServo()
    servo.reset(np.full(6, 0.3), gripper=0.0)
    qs, vs = run(servo, 0.0, 0.2)
    np.testing.assert_array_equal(qs[-1], np.full(6, 0.3))
    assert servo.gripper == 0.0


def test_gripper_moves_at_its_rate():
    servo = JointServo()
    servo.reset(np.zeros(6), gripper=1.0)
    grip = []
    for k in range(400):
        t = k * DT
        if k % 10 == 0:
            servo.command(command(np.zeros(6), gripper=0.0, timeout_s=0.2), t)
        servo.step(t, DT)
        grip.append(servo.gripper)
    half = int(PARAMS.gripper_move_s / 2 / DT)
    assert grip[half - 1] == pytest.approx(0.5, abs=0.01)
    assert grip[-1] == 0.0


def test_command_messages_map_onto_servo_commands():
    msg = CommandMessage(sender_time_s=1.0, positions_rad=(0.1,) * 6, velocities_rad_s=(0.2,) * 6,
                         gripper=0.5, lead_s=0.03, timeout_s=0.2, flags=FLAG_ARMED | FLAG_HOLD)
    cmd = ServoCommand.from_message(msg)
    assert cmd.armed and cmd.hold and (cmd.gripper, cmd.lead_s, cmd.timeout_s) == (0.5, 0.03, 0.2)
    np.testing.assert_array_equal(cmd.positions, np.full(6, 0.1))
    unarmed = ServoCommand.from_message(CommandMessage(1.0, (0.0,) * 6, (0.0,) * 6))
    assert not unarmed.armed and not unarmed.hold


@pytest.mark.parametrize('changes', [{'max_velocity_rad_s': (1.0,) * 5},
                                     {'max_acceleration_rad_s2': (0.0,) * 6},
                                     {'time_constant_s': 0.0}, {'gripper_move_s': -1.0}])
def test_servo_params_are_validated(changes):
    with pytest.raises(ConfigError):
        ServoParams(**changes)
