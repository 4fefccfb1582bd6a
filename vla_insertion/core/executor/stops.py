"""Stops: every transition into hold brakes the commanded motion to rest, at once, everywhere.

A stop begins at the first control step that holds after the robot was following (armed and
not holding), or at the first step after an event (`ChunkExecutor.stop_now`). Its trigger is
the first of TRIGGERS that holds in that step, and it is counted under `stops.<trigger>`.
Every stop disarms: after it, nothing moves until `arm()` (~/enable true), which refuses while
the cause is still there (core/executor/safety.py, ChunkExecutor.arm):

    trigger               what                                     before arm() succeeds
    disarm                ~/enable false: disarm() -> stop_now     -
    estop                 safety/estop true (latches a fault)      estop false, reset_fault()
    deadman               no true safety/heartbeat within          a fresh true heartbeat
                          deadman_timeout_s, or a false
    untrained_expert      a chunk from an untrained expert         a trained expert's chunks
    untrained_vlm         ... on untrained VL features, without    the same, or the parameter
                          allow_untrained_vlm
    pose_jump             a tool pose implying a speed over        -
                          max_tool_speed_mps (re-homed, a sim
                          reset, a bad reading; safety.py)
    force_limit,          |F| or |tau| at the hard limit           reset_fault()
      torque_limit        (latches a fault)
    workspace             the tool would stop outside the box      reset_fault(), tool inside
                          (latches a fault)
    watchdog              no accepted chunk for chunk_timeout_s    chunks flow again
    robot_state_too_old   joint state older than max_robot_age_s   a fresh state
    tool_pose_too_old, chunk_too_old, no_sensor_window, sensor_too_old, non_finite: the gate's
                          other holds                              the rule no longer holds

A person (or, in the sim and the demo, the supervisor at an episode's start) re-arms. An
executor armed into a hold (no chunk for a while, say) was not moving: no stop begins then; it
stays armed and follows once the hold clears.

The stop is computed once, when it begins: a copy of the motion limiter runs on from the
commanded state (position, velocity, acceleration, the jerk filter's history) with no target,
one point per control period, until it is at rest. That is as fast as the acceleration and jerk
limits let the commanded motion stop, and every point keeps every limit of the limits table
(core/executor/limiter.py: the same filter that made the commands). On the outputs:

- robot/joint_trajectory: the braking points, published at once (`trajectory_update`); the last
  is at rest, so joint_trajectory_controller stops there and holds, whatever it was executing.
  Stamped 0, so the controller starts it on arrival: a short stop stamped with its step's time
  could end before a late delivery, and the controller refuses a trajectory that ends in the
  past (core/executor/trajectory_rules.py).
- command_v1: HOLD at the rest position with zero velocity (`command_message`), every control
  period while the stop is in force, ARMED as the executor is: docs/wire.md has the robot
  decelerate within its own limits and stay, the positions saying where the executor stops.

A later trigger joins here: an event goes in EVENTS and calls `stop_now`; a condition the
executor checks every step (and latches, if it must) is a gate cause that holds, listed below in
priority order.
"""
from __future__ import annotations

from dataclasses import dataclass
import math

import numpy as np

from vla_insertion.core.executor import gate
from vla_insertion.core.executor.limiter import MotionLimiter

DISARM = 'disarm'
ESTOP = gate.ESTOP
DEADMAN = 'deadman'
UNTRAINED_EXPERT = 'untrained_expert'
UNTRAINED_VLM = 'untrained_vlm'
POSE_JUMP = 'pose_jump'
# stop_now() triggers
EVENTS = (DISARM, ESTOP, DEADMAN, UNTRAINED_EXPERT, UNTRAINED_VLM, POSE_JUMP)
# Gate causes that hold, most important first: the trigger named when several begin at once.
CONDITIONS = (gate.FORCE_LIMIT, gate.TORQUE_LIMIT, gate.WORKSPACE, gate.WATCHDOG,
              gate.ROBOT_STATE_TOO_OLD, gate.TOOL_POSE_TOO_OLD, gate.CHUNK_TOO_OLD,
              gate.NO_SENSOR_WINDOW, gate.SENSOR_TOO_OLD, gate.NON_FINITE)
TRIGGERS = EVENTS + CONDITIONS


@dataclass(frozen=True)
class Stop:
    """The braking of one stop: the commanded motion from where it was to rest."""

    trigger: str                   # why (TRIGGERS)
    stamp_s: float                 # control time of the step it began at [s]
    lead_s: float                  # the first point is due this long after stamp_s [s]
    period_s: float                # and each next one a control period later [s]
    positions: np.ndarray          # (n, 7) 6 joints [rad] and the gripper [0..1]
    velocities: np.ndarray         # (n, 7) finite differences [rad/s, 1/s]; the last row 0

    @property
    def rest(self) -> np.ndarray:
        """(7,) where it ends, at rest: 6 joints [rad] and the gripper."""
        return self.positions[-1]

    @property
    def times_s(self) -> np.ndarray:
        """(n,) target time of each point: stamp + lead + k T [s]."""
        return self.stamp_s + self.lead_s + self.period_s * np.arange(len(self.positions))

    @property
    def duration_s(self) -> float:
        """From the step it began to its last point's target time [s]."""
        return self.lead_s + self.period_s * (len(self.positions) - 1)


def brake(trigger: str, limiter: MotionLimiter, stamp_s: float, lead_s: float,
          speed_scale: np.ndarray) -> Stop:
    """Run a copy of `limiter` with no target from its state before the step at stamp_s.

    The first point is what the limiter outputs at that step (target time stamp_s + lead_s),
    the last the first output at rest. Stage 1 stops within ceil(V / (A T)) periods and the jerk
    filter then within its m taps, so the loop's bound is never reached by a working limiter.
    """
    copy = limiter.copy()
    period = copy.period_s
    bound = int(math.ceil(float(np.max(copy.v_max / (copy.a_max * period))))) + copy.taps + 2
    positions, velocities = [], []
    for _ in range(bound):
        result = copy.step(None, None, speed_scale)
        positions.append(result.position)
        velocities.append(result.velocity)
        if copy.at_rest and not result.velocity.any():
            return Stop(trigger, float(stamp_s), float(lead_s), period, np.array(positions),
                        np.array(velocities))
    raise RuntimeError(f'the limiter did not come to rest within {bound} periods')
