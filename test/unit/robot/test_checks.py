"""core/robot/checks.py: the rules a command_v1 passes before the arm moves, on fake times.

Sequence and session (late, stale_session), age on estimated and synchronised clocks (stale,
future_stamp, past_stamp), and the joint limits re-checked (position, velocity, the step from
the last accepted command or from the arm); each refusal raises Drop with its cause.
"""
from __future__ import annotations

from pathlib import Path
import re

import numpy as np
import pytest

from vla_insertion.core.bridge.stream import Drop
from vla_insertion.core.config import ConfigError
from vla_insertion.core.orchestration.builders import executor_settings
from vla_insertion.core.robot.checks import CHECK_CAUSES, CommandChecks, CommandLimits
from vla_insertion.core.sim.kinematics import HOME_RAD
from vla_insertion.core.wire import CommandMessage, FLAG_ARMED, FLAG_HOLD

LIMITS = CommandLimits.from_settings(executor_settings(None))   # 1 rad/s, 100 Hz
OFFSET_S = 1000.0           # the executor's clock reads this much ahead of ours [s]


def cmd(sequence: int, sent_s: float = 0.0, q=HOME_RAD, v=(0.0,) * 6, gripper: float = 1.0,
        flags: int = FLAG_ARMED, session: int = 1) -> CommandMessage:
    return CommandMessage(sender_time_s=sent_s, positions_rad=tuple(float(x) for x in q),
                          velocities_rad_s=tuple(v), gripper=gripper, lead_s=0.02,
                          timeout_s=0.1, flags=flags, session=session, sequence=sequence)


def cause(checks: CommandChecks, msg: CommandMessage, received_s: float = 0.0, **kw) -> str:
    """Return the cause checks refuse `msg` for, or '' if they accept it."""
    try:
        checks.check(msg, received_s, **kw)
    except Drop as exc:
        return exc.cause
    return ''


def test_the_newest_command_of_a_session_passes_older_ones_are_late():
    checks = CommandChecks(None, max_age_s=None)
    assert cause(checks, cmd(5)) == cause(checks, cmd(6)) == ''
    assert [cause(checks, cmd(s)) for s in (6, 3)] == ['late', 'late']   # repeat, reordering
    assert cause(checks, cmd(0, session=2)) == ''                   # a new session starts over
    assert cause(checks, cmd(1, session=2)) == ''
    assert cause(checks, cmd(7, session=1)) == 'stale_session'      # the replaced sender
    assert checks.sessions.restarts == 1
    assert cause(checks, cmd(0xFFFFFFFF, session=3)) == ''
    assert cause(checks, cmd(0, session=3)) == ''                   # the sequence wraps
    assert cause(checks, cmd(0xFFFFFFFF, session=3)) == 'late'


def test_estimated_clock_refuses_a_command_held_up_longer_than_max_age():
    checks = CommandChecks(None, max_age_s=0.05)
    period = 0.01
    for k in range(60):                 # 100 Hz, 1 ms on the way: calibrates the offset
        assert cause(checks, cmd(k, OFFSET_S + k * period), k * period + 0.001) == ''
    assert checks.last_age_s == pytest.approx(0.0, abs=1e-9)
    # sent one period after the last, but 0.2 s on the way (a stalled link, a queue)
    assert cause(checks, cmd(60, OFFSET_S + 0.6), 0.6 + 0.201) == 'stale'
    assert checks.last_age_s == pytest.approx(0.2, abs=1e-6)
    # the commands sent at the end of the stall arrive with it, fresh
    assert cause(checks, cmd(61, OFFSET_S + 0.79), 0.79 + 0.011) == ''
    assert checks.last_age_s == pytest.approx(0.01, abs=1e-6)


def test_estimated_clock_drops_impossible_send_times_and_follows_a_clock_step():
    checks = CommandChecks(None, max_age_s=0.05)
    for k in range(60):
        assert cause(checks, cmd(k, OFFSET_S + k * 0.01), k * 0.01) == ''
    # 0.2 s less delayed than every other command: no delay explains it
    assert cause(checks, cmd(60, OFFSET_S + 0.6 + 0.2), 0.6) == 'future_stamp'
    # the executor's clock steps back 5 s: two commands dropped, the third re-bases the clock
    sent = [OFFSET_S - 5.0 + t for t in (0.61, 0.62, 0.63)]
    assert [cause(checks, cmd(61 + i, s), 0.61 + i * 0.01) for i, s in enumerate(sent)] == [
        'past_stamp', 'past_stamp', '']
    assert cause(checks, cmd(64, OFFSET_S - 5.0 + 0.64), 0.64) == ''


def test_synchronised_clocks_give_the_absolute_age():
    checks = CommandChecks(None, max_age_s=0.05, clock_offset_s=0.5)
    assert cause(checks, cmd(0, 100.5), 100.03) == ''       # 30 ms old
    assert checks.last_age_s == pytest.approx(0.03)
    assert cause(checks, cmd(1, 100.5), 100.06) == 'stale'  # 60 ms: a constant delay counts
    assert cause(checks, cmd(2, 100.7), 100.1) == 'future_stamp'    # sent after it arrived
    assert cause(checks, cmd(3, 100.61), 100.11) == ''


def test_without_max_age_no_send_time_is_judged():
    checks = CommandChecks(None, max_age_s=None)
    for k, sent in enumerate((OFFSET_S, OFFSET_S + 0.01, OFFSET_S - 5.0, OFFSET_S + 9.0)):
        assert cause(checks, cmd(k, sent), k * 0.01) == ''


def test_targets_and_velocities_outside_the_joint_limits_are_refused():
    checks = CommandChecks(LIMITS, max_age_s=None)
    assert cause(checks, cmd(0)) == ''
    elbow_out = HOME_RAD.copy()
    elbow_out[2] = np.pi + 1e-3                              # the elbow's range is +-pi
    assert cause(checks, cmd(1, q=elbow_out)) == 'position_limit'
    assert cause(checks, cmd(2, v=(0.0, 1.01, 0.0, 0.0, 0.0, 0.0))) == 'velocity_limit'
    assert cause(checks, cmd(3, v=(0.0, -1.0, 0.0, 0.0, 0.0, 0.0))) == ''    # at the limit
    # only ARMED commands are checked: the others hold the arm, their targets are not followed
    assert cause(checks, cmd(4, q=elbow_out, flags=0)) == ''
    assert cause(checks, cmd(5, q=elbow_out, flags=FLAG_ARMED | FLAG_HOLD)) == 'position_limit'


def test_the_step_from_the_last_accepted_command_is_what_the_executor_can_move():
    checks = CommandChecks(LIMITS, max_age_s=None)
    assert cause(checks, cmd(10)) == ''
    step = HOME_RAD.copy()
    step[0] += 0.0105                         # 1 rad/s x 10 ms + the 1 mrad tolerance: fits
    assert cause(checks, cmd(11, q=step)) == ''
    jump = step.copy()
    jump[3] += 0.03                           # 3 periods' worth in one
    assert cause(checks, cmd(12, q=jump)) == 'step_limit'
    assert cause(checks, cmd(14, q=jump)) == ''    # 3 periods after the base (command 11)
    # the gripper moves at most 2 / s
    assert cause(checks, cmd(15, q=jump, gripper=0.9)) == 'step_limit'
    assert cause(checks, cmd(20, q=jump, gripper=0.9)) == ''
    # a new session has no base: it starts where the arm is, within the executor's 0.15 rad
    arm = np.append(HOME_RAD, 1.0)
    far = HOME_RAD.copy()
    far[1] += 0.2
    assert cause(checks, cmd(0, q=far, session=2), position=lambda: arm) == 'step_limit'
    near = HOME_RAD.copy()
    near[1] += 0.14
    assert cause(checks, cmd(1, q=near, gripper=0.0, session=2), position=lambda: arm) == ''
    # a backend that does not know where the arm is: the first command is taken
    assert cause(checks, cmd(0, q=far, session=3), position=lambda: None) == ''


def test_a_refused_command_is_not_a_base_but_its_number_is_used():
    checks = CommandChecks(LIMITS, max_age_s=None)
    assert cause(checks, cmd(0)) == ''
    jump = HOME_RAD.copy()
    jump[0] += 0.1
    assert cause(checks, cmd(1, q=jump)) == 'step_limit'
    assert cause(checks, cmd(1, q=HOME_RAD)) == 'late'       # a repeat of the refused one
    assert cause(checks, cmd(2, q=jump)) == 'step_limit'     # still measured from command 0
    assert cause(checks, cmd(10, q=jump)) == ''              # 10 periods: 0.1 rad is possible


def test_limits_come_from_the_params_file_and_are_validated(tmp_path):
    params = tmp_path / 'cell.yaml'
    params.write_text('/**/chunk_executor:\n  ros__parameters:\n    control_rate_hz: 50.0\n'
                      '    max_distance_from_measured_rad: 0.1\n    joint_limits:\n'
                      '      joint_2: {max_velocity: 0.5, min_position: -1.0}\n')
    limits = CommandLimits.from_settings(executor_settings(params))
    assert limits.period_s == pytest.approx(0.02) and limits.max_distance_rad == 0.1
    assert limits.max_velocity[1] == 0.5 and limits.max_velocity[0] == 1.0
    assert limits.min_position[1] == -1.0 and limits.max_position[6] == 1.0
    assert CommandLimits.from_settings(executor_settings(params),
                                       max_velocity=None).max_velocity[1] == 0.5
    with pytest.raises(ConfigError, match='max_velocity needs 7'):
        CommandLimits.from_settings(executor_settings(None), max_velocity=(1.0,) * 6)
    with pytest.raises(ConfigError, match='below max_position'):
        CommandLimits.from_settings(executor_settings(None), min_position=(7.0,) * 7)
    with pytest.raises(ConfigError, match='max_age_s'):
        CommandChecks(LIMITS, max_age_s=0.0)


def test_docs_list_the_refusals_in_the_order_they_are_checked():
    doc = (Path(__file__).resolve().parents[3] / 'docs' / 'wire.md').read_text()
    section = doc[doc.index('## A reference robot side'):doc.index('**The age**')]
    rows = [line.split('|')[2] for line in section.splitlines() if re.match(r'\| \d+ \|', line)]
    documented = [c for row in rows[1:] for c in re.findall(r'`(\w+)`', row)]
    assert rows[0].strip().startswith("the decoder's")
    assert documented == list(CHECK_CAUSES)
