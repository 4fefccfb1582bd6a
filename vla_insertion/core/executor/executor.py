"""ChunkExecutor: action chunks in, one safety-gated joint command per control period out.

Pure and deterministic: every time is passed in (the node's clock), nothing runs by itself, no
threads. The node calls, from its callbacks and its control timer:

    on_chunk(chunk, arrival_s)      vla/action_chunk        -> accepted or a counted rejection
    on_robot_state(state)           robot/joint_states      -> the measured joints
    on_sensor_window(window)        sensor/window           -> the force/torque monitor
    on_tool_pose(pose)              robot/pose              -> the workspace box
    on_estop(active), on_heartbeat(held, now_s)   safety/estop, safety/heartbeat
    step(now_s) -> JointCommand     every 1 / control_rate_hz -> command_v1, vla/command
    trajectory_update()             after each step: the JointTrajectory due now, or None
    trajectory(now_s)               JointTrajectory points after the command
    committed_prefix(now_s)         what the executor has committed to (merge = prefix)
    arm(now_s), disarm(), reset_fault()   std_srvs/SetBool `enable`, std_srvs/Trigger
    stop_now(trigger)               hold now, because of an event (disarm, e-stop, deadman)
    stats()                         /diagnostics key-values

Timing: a chunk stamped s (its observation time) applies action k at s + k dt. A command
computed at now_s is for the target time now_s + actuator_lead_s (the robot reaches it that
late); the plan is sampled at that time plus the limiter's filter delay, which the filter then
takes back. Actions whose time has passed are never sent: only the plan at future times is.
Every transition into hold is a stop (core/executor/stops.py): the braking to rest goes out at
once on both outputs, and the executor disarms; arm() refuses, with a named reason, while any
input is stale, the e-stop or the deadman says no, or the policy is untrained (ARM_REFUSALS).
See docs/executor.md for the timing diagram, the strategies, the gate and the stops, and
docs/safety.md for what each layer catches.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
import math

import numpy as np

from vla_insertion.core.config import ConfigError, ExecutorConfig
from vla_insertion.core.data import (
    ACTION_DIM, ActionChunkData, JointTrajectoryData, NUM_JOINTS, RobotState, SensorWindowData,
    ToolPose, TrajectoryPointData)
from vla_insertion.core.executor import gate, gripper, stops
from vla_insertion.core.executor.interpolation import ChunkTrajectory
from vla_insertion.core.executor.limiter import MotionLimiter
from vla_insertion.core.executor.limits import default_limits, GRIPPER, LimitsTable
from vla_insertion.core.executor.merge import committed_steps, Merger, Sample
from vla_insertion.core.executor.safety import SafetyInputs, SafetySettings
from vla_insertion.core.executor.stats import JerkMeter, Window


# Motion states (JointCommand.state)
NO_STATE = 'no_robot_state'   # nothing measured yet: no command can be computed
WAITING = 'waiting'           # no chunk yet: hold
TRACKING = 'tracking'         # following the plan
UNDERRUN = 'underrun'         # the newest chunk ran out: decelerating to a hold
HOLDING = 'holding'           # a gate rule holds (watchdog, ages, non-finite)
FAULT = 'fault'               # latched fault: hold until reset_fault()
HOLD_STATES = (WAITING, HOLDING, FAULT)

# Chunk rejections (stats key `chunks.rejected.<reason>`)
REJECT_REASONS = ('bad_shape', 'non_finite', 'duplicate', 'out_of_order', 'future_stamp',
                  'stale', 'expired')

# Why arm() refused (stats key `arming.refused.<reason>`), in the order they are checked.
ARM_REFUSALS = ('estop_active', 'estop_unknown', 'fault', 'deadman', stops.UNTRAINED_EXPERT,
                stops.UNTRAINED_VLM, 'no_robot_state', 'robot_state_too_old',
                'sensor_too_old', 'chunks_stale', 'no_tool_pose', 'outside_workspace',
                'outside_limits')


@dataclass(frozen=True)
class JointCommand:
    """One control step's command; armed=False means preview only: send nothing that moves."""

    stamp_s: float                 # control time it was computed at [s]
    target_time_s: float           # when the robot should be there: stamp + actuator lead [s]
    positions: np.ndarray          # (6,) joint targets [rad]; NaN when not valid
    velocities: np.ndarray         # (6,) joint velocities at the target [rad/s]
    gripper: float                 # gripper target, 0 open .. 1 closed
    armed: bool                    # the robot may follow (command_v1 FLAG_ARMED)
    hold: bool                     # the executor holds: watchdog, fault, ages (FLAG_HOLD)
    fault: str                     # latched fault cause, '' when none
    state: str                     # motion state: waiting, tracking, underrun, holding, ...
    chunk_sequence: int            # chunk the command comes from, -1 when none
    action_index: float            # fractional action index into that chunk, NaN when none
    interventions: tuple[str, ...]  # gate causes that acted in this step (gate.CAUSES order)
    valid: bool = True             # False before the first robot state: nothing to send
    stop: str = ''                 # trigger of the stop in force ('' none): command_v1 HOLDs
    rest: np.ndarray | None = None  # (7,) where that stop ends: 6 joints [rad], the gripper

    @property
    def lead_s(self) -> float:
        """How long after the command the robot should be at the target [s]."""
        return self.target_time_s - self.stamp_s

    @property
    def to_robot(self) -> bool:
        """Whether command_v1 carries this command: armed, or a stop in force (HOLD)."""
        return self.valid and (self.armed or bool(self.stop))


class ChunkExecutor:
    """Turns action chunks into a smooth, latency-aware, safety-gated command stream."""

    def __init__(self, config: ExecutorConfig, limits: LimitsTable | None = None) -> None:
        self._config = config
        self._limits = limits if limits is not None else default_limits(config.joint_names)
        if self._limits.names != tuple(config.joint_names) + (GRIPPER,):
            raise ConfigError(f'joint_limits are for {list(self._limits.names)}, the executor '
                              f'commands {list(config.joint_names) + [GRIPPER]}')
        margin = np.array([config.position_margin_rad] * NUM_JOINTS + [0.0])
        lower = self._limits.array('min_position') + margin
        upper = self._limits.array('max_position') - margin
        narrow = [n for n, lo, hi in zip(self._limits.names, lower, upper) if not lo < hi]
        if narrow:
            raise ConfigError(f'position_margin_rad {config.position_margin_rad} leaves no '
                              f'range for {narrow}')
        accel = np.array([j.acceleration for j in self._limits.joints])
        jerk = np.array([j.jerk for j in self._limits.joints])
        try:
            self._limiter = MotionLimiter(lower, upper, self._limits.array('max_velocity'),
                                          accel, jerk, config.period_s)
        except ValueError as exc:
            raise ConfigError(f'joint_limits: {exc}') from None
        self._accel = accel
        self._gripper = gripper.GripperOutput.from_config(config)   # in the trajectory or not
        self._safety = SafetyInputs(SafetySettings(
            estop_input=config.estop_input, deadman_timeout_s=config.deadman_timeout_s,
            workspace_min_m=config.workspace_min_m, workspace_max_m=config.workspace_max_m,
            workspace_decel_mps2=config.workspace_decel_mps2,
            reaction_s=config.period_s + config.actuator_lead_s,
            max_pose_age_s=config.max_robot_age_s, max_tool_speed_mps=config.max_tool_speed_mps))
        self._arming = Counter(dict.fromkeys(ARM_REFUSALS, 0))
        self._refusal = ''                     # the newest arm() refusal, '' after arming
        self.reset()

    def reset(self) -> None:
        """Forget every chunk, state, fault and statistic (a new episode); limits stay.

        Disarms, as at start-up (re-arms at the first chunk with start_armed). The
        cell's e-stop and deadman states are not the episode's: they stay (an active e-stop
        latches its fault again), as do the arming refusal counts.
        """
        config = self._config
        self._limiter.initialized = False          # restarts at the next measured state
        self._merger = Merger(config.merge, ensemble_k=config.ensemble_k,
                              blend_s=config.blend_s, prefix_tolerance=config.prefix_tolerance)
        self._pending: list[ChunkTrajectory] = []
        self._newest_stamp = -math.inf
        self._last_accept_s: float | None = None
        self._chunk_dt_s = math.nan
        self._chunk_horizon = 0
        self._robot: RobotState | None = None
        self._measured = np.full(ACTION_DIM, math.nan)       # (7,) joints and gripper
        self._wrench: gate.Wrench | None = None
        self._armed = False
        self._arm_pending = config.start_armed
        self._fault = ''
        self._fault_detail = ''
        self._safety.forget_motion()
        self._untrained = ''                   # the newest chunk's: '', or a stops trigger
        self._features_untrained = False       # the newest chunk's VL features were
        self._last_now = -math.inf
        self._last_command: JointCommand | None = None
        self._last_sample: Sample | None = None
        self._speed_scale = 1.0
        self._stop: stops.Stop | None = None   # the stop in force
        self._stop_request = ''                # an event's trigger, for the next step
        self._following = False                # the last step was armed and not holding
        self._stop_due = False                 # trajectory_update: the stop that began
        self._plan_version = 0                 # chunks joined into the plan
        self._published_version = -1           # ... when the plan was last published
        self._plan_due = False                 # trajectory_update: the plan changed
        # counters and summaries
        self._stops = Counter(dict.fromkeys(stops.TRIGGERS, 0))
        self._gate = Counter(dict.fromkeys(gate.CAUSES, 0))
        self._rejected = Counter(dict.fromkeys(REJECT_REASONS, 0))
        self._inputs = Counter()           # robot/sensor/clock input problems, merge events
        self._accepted = 0
        self._steps = 0
        self._faults = 0
        self._starved = 0
        self._starved_steps = 0
        self._delays = Window(config.delay_window)
        self._jumps = Window(config.delay_window)
        self._position_jumps = Window(config.delay_window)
        self._jerk = JerkMeter(config.period_s)
        if self._safety.estop_active:
            self._latch(gate.ESTOP, 'safety/estop is active')

    # --- inputs ---------------------------------------------------------------------------

    @property
    def config(self) -> ExecutorConfig:
        return self._config

    @property
    def limits(self) -> LimitsTable:
        return self._limits

    @property
    def armed(self) -> bool:
        return self._armed

    @property
    def fault(self) -> str:
        return self._fault

    @property
    def filter_delay_s(self) -> float:
        return self._limiter.delay_s

    def on_chunk(self, chunk: ActionChunkData, arrival_s: float) -> bool:
        """Accept a chunk for the next step, or count why not (`chunks.rejected.<reason>`).

        A chunk of an untrained policy (ActionChunk.untrained, or features_untrained without
        allow_untrained_vlm) is only ever previewed: it stops an armed executor (stop_now: armed
        before the first chunk, nothing has moved yet), and arm() refuses while the newest
        chunk is one.
        """
        stamp = float(chunk.stamp_s)
        if math.isfinite(stamp) and math.isfinite(arrival_s):
            self._delays.add(arrival_s - stamp)              # every chunk's delay, even refused
        reason = self._refuse(chunk, arrival_s)
        if not reason:
            self._features_untrained = bool(chunk.features_untrained)
            self._untrained = (stops.UNTRAINED_EXPERT if chunk.untrained else
                               stops.UNTRAINED_VLM if chunk.features_untrained
                               and not self._config.allow_untrained_vlm else '')
            if self._untrained and self._armed:
                self.stop_now(self._untrained)
        if reason:
            self._rejected[reason] += 1
            return False
        actions = np.asarray(chunk.actions, dtype=np.float64)
        self._pending.append(ChunkTrajectory(stamp, actions, chunk.dt_s, self._accel,
                                             chunk.sequence))
        self._newest_stamp = stamp
        self._last_accept_s = float(arrival_s)
        self._chunk_dt_s, self._chunk_horizon = float(chunk.dt_s), actions.shape[0]
        self._accepted += 1
        return True

    def _refuse(self, chunk: ActionChunkData, arrival_s: float) -> str:
        actions = np.asarray(chunk.actions)
        if actions.ndim != 2 or actions.shape[0] < 1 or actions.shape[1] != ACTION_DIM \
                or not np.issubdtype(actions.dtype, np.number):
            return 'bad_shape'
        dt = chunk.dt_s
        if not (math.isfinite(chunk.stamp_s) and math.isfinite(arrival_s) and math.isfinite(dt)
                and dt > 0 and np.isfinite(actions).all()):
            return 'non_finite'
        if chunk.stamp_s == self._newest_stamp:
            return 'duplicate'
        if chunk.stamp_s < self._newest_stamp:
            return 'out_of_order'
        if chunk.stamp_s > arrival_s + self._config.max_clock_skew_s:
            return 'future_stamp'
        if arrival_s - chunk.stamp_s > self._config.max_chunk_age_s:
            return 'stale'
        if chunk.stamp_s + (actions.shape[0] - 1) * dt < arrival_s:
            return 'expired'
        return ''

    def on_robot_state(self, state: RobotState) -> bool:
        """Take the measured joints (reordered by name); refuse and count unusable states."""
        positions = np.asarray(state.joint_positions_rad, dtype=np.float64).reshape(-1)
        names = tuple(state.joint_names)
        wanted = tuple(self._config.joint_names)
        if positions.size != NUM_JOINTS:
            return self._count_input('robot.bad_shape')
        if names != wanted:
            if sorted(names) != sorted(wanted):
                return self._count_input('robot.joint_names')
            positions = positions[[names.index(n) for n in wanted]]
        if not (np.isfinite(positions).all() and math.isfinite(state.stamp_s)
                and math.isfinite(state.gripper)):
            return self._count_input('robot.non_finite')
        if self._robot is not None and state.stamp_s < self._robot.stamp_s:
            return self._count_input('robot.out_of_order')
        self._robot = state
        self._measured = np.append(positions, min(max(float(state.gripper), 0.0), 1.0))
        return True

    def on_sensor_window(self, window: SensorWindowData) -> bool:
        """Take the peak force and torque of a window; refuse and count unusable ones."""
        try:
            wrench = gate.peak_wrench(window)
        except gate.SensorWindowError as exc:
            return self._count_input(f'sensor.{exc.cause}')
        if self._wrench is not None and wrench.stamp_s < self._wrench.stamp_s:
            return self._count_input('sensor.out_of_order')
        self._wrench = wrench
        return True

    def on_tool_pose(self, pose: ToolPose) -> bool:
        """Take the measured tool pose (the workspace box); refuse and count unusable ones."""
        if not self._safety.on_tool_pose(pose):
            return self._count_input('pose.unusable')
        if self._safety.take_jump():
            self._count_input('pose.jump')
            self.stop_now(stops.POSE_JUMP)
        return True

    def on_estop(self, active: bool) -> None:
        """Take the cell's e-stop state: active latches fault `estop` and stops at once."""
        if self._safety.on_estop(active) or (active and not self._fault):
            self._latch(gate.ESTOP, 'safety/estop is active')
            self.stop_now(stops.ESTOP)

    def on_heartbeat(self, held: bool, now_s: float) -> None:
        """Take one deadman heartbeat: false (released) stops at once, when a deadman is set."""
        if self._safety.on_heartbeat(held, now_s) and self._config.deadman_timeout_s > 0:
            self.stop_now(stops.DEADMAN)

    def _count_input(self, key: str) -> bool:
        self._inputs[key] += 1
        return False

    # --- services -------------------------------------------------------------------------

    def arm(self, now_s: float) -> tuple[bool, str]:
        """Let the commands move the robot, starting at rest from the measured state.

        Refused, with the reason counted (`arming.refused.<reason>`) and returned, while any of
        ARM_REFUSALS holds.
        """
        refusal = self._arming_refusal(now_s)
        if refusal is not None:
            reason, message = refusal
            self._arming[reason] += 1
            self._refusal = message
            return False, message
        self._refusal = ''
        if self._armed:
            return True, 'already armed'
        # Start exactly where the arm is, at rest: no jump, whatever the preview did.
        self._limiter.reset(self._measured)
        self._jerk.restart()
        self._armed = True
        self._stop, self._stop_request = None, ''
        self._published_version = -1            # the plan goes out at the first step
        if self._features_untrained:
            return True, 'armed on an UNTRAINED VLM (allow_untrained_vlm is set: sim/demo only)'
        return True, 'armed'

    def _arming_refusal(self, now_s: float) -> tuple[str, str] | None:
        """Return the first of ARM_REFUSALS that holds now, as (reason, message), or None."""
        cfg = self._config
        refusal = self._safety.arming_refusal(now_s)
        if refusal is not None and refusal[0] in ('estop_active', 'estop_unknown'):
            return refusal
        if self._fault:
            return 'fault', f'fault {self._fault} latched ({self._fault_detail}): reset it first'
        if refusal is not None and refusal[0] == 'deadman':
            return refusal
        if self._untrained == stops.UNTRAINED_EXPERT:
            return self._untrained, ('the action expert is untrained (random weights): an '
                                     'untrained expert is never armed')
        if self._untrained == stops.UNTRAINED_VLM:
            return self._untrained, ('the VL features come from an untrained VLM (random '
                                     'weights); set allow_untrained_vlm only in the sim or demo')
        if self._robot is None:
            return 'no_robot_state', 'no robot state received yet'
        age = now_s - self._robot.stamp_s
        if not age <= cfg.max_robot_age_s:
            return 'robot_state_too_old', (f'robot state is {age:.3f} s old (max_robot_age_s '
                                           f'{cfg.max_robot_age_s})')
        if cfg.require_sensor and (self._wrench is None
                                   or not now_s - self._wrench.stamp_s <= cfg.max_sensor_age_s):
            return 'sensor_too_old', (f'no sensor window within max_sensor_age_s '
                                      f'{cfg.max_sensor_age_s} (require_sensor)')
        if self._last_accept_s is not None and now_s - self._last_accept_s > cfg.chunk_timeout_s:
            return 'chunks_stale', (f'no chunk accepted for {now_s - self._last_accept_s:.2f} s '
                                    f'(chunk_timeout_s {cfg.chunk_timeout_s})')
        if refusal is not None:
            return refusal                                  # the workspace box's
        joints = self._measured[:NUM_JOINTS]
        lo, hi = self._limiter.lower[:NUM_JOINTS], self._limiter.upper[:NUM_JOINTS]
        outside = [f'{n} at {q:.3f} rad' for n, q, a, b in
                   zip(cfg.joint_names, joints, lo, hi) if not a <= q <= b]
        if outside:
            return 'outside_limits', (f'{", ".join(outside)} outside the limits less '
                                      'position_margin_rad: move the arm inside first')
        return None

    def disarm(self) -> tuple[bool, str]:
        """Stop (stop_now('disarm')); then keep computing commands as a preview, not armed."""
        was = self._armed
        self.stop_now(stops.DISARM)
        return True, 'disarmed' if was else 'already disarmed'

    def stop_now(self, trigger: str) -> None:
        """Hold now, because of the event `trigger` (stops.EVENTS): nothing moves until arm().

        Disarms; the next step (within one control period) brakes the commanded motion to
        rest: trajectory_update() returns the braking, command_v1 carries HOLD at its end every
        period until arm(). Without an armed executor nothing moves: no stop is needed.
        """
        if trigger not in stops.EVENTS:
            raise ValueError(f'stop_now takes one of {list(stops.EVENTS)}, got {trigger!r}')
        if self._armed and self._stop is None:
            self._stop_request = trigger
        self._armed = False
        self._arm_pending = False

    def reset_fault(self) -> tuple[bool, str]:
        """Clear a latched fault (not while the e-stop is active); then arm() to move again."""
        if not self._fault:
            return True, 'no fault latched'
        if self._safety.estop_active:
            return False, 'the e-stop is still active: release it first'
        cause = self._fault
        self._fault = self._fault_detail = ''
        return True, f'fault {cause} cleared'

    def _latch(self, cause: str, detail: str) -> None:
        if not self._fault:
            self._fault, self._fault_detail = cause, detail
            self._faults += 1

    # --- the control step -----------------------------------------------------------------

    def step(self, now_s: float) -> JointCommand:
        """Compute the command for now_s + actuator_lead_s (call once per control period)."""
        cfg = self._config
        if now_s < self._last_now:
            self._inputs['clock_backwards'] += 1
            now_s = self._last_now
        self._last_now = now_s
        self._steps += 1
        self._stop_due = self._plan_due = False
        if self._armed and self._safety.deadman_released(now_s):
            self.stop_now(stops.DEADMAN)
        if self._robot is None:
            self._gate[gate.NO_ROBOT_STATE] += 1
            return self._finish(self._invalid(now_s))
        if not self._limiter.initialized:
            self._limiter.reset(self._measured)             # the preview starts at the arm
        # start_armed: at the first chunk, so that an untrained policy is never armed
        if self._arm_pending and self._last_accept_s is not None \
                and self._arming_refusal(now_s) is None:
            self.arm(now_s)
            self._arm_pending = False
        t_query = self._query_time(now_s)
        self._join_pending(t_query)
        self._merger.settle(t_query)
        sample = self._merger.sample(t_query)
        acted: set[str] = set()
        hold = self._hold_rules(now_s, t_query, sample, acted)
        target, target_velocity = None, None
        if not hold and sample is not None:
            target, target_velocity = self._clamp(sample, acted)
        self._speed_scale = self._force_rules(now_s, acted)
        if self._armed and not self._fault:
            breach = self._safety.workspace_breach(now_s)
            if breach:
                self._latch(gate.WORKSPACE, breach)
        if self._fault:
            acted.add(self._fault)
            hold = True
        if self._last_accept_s is not None and \
                now_s - self._last_accept_s > cfg.chunk_timeout_s:
            acted.add(gate.WATCHDOG)
            hold = True
        self._update_stop(now_s, hold, acted)
        result = self._limiter.step(None if (hold or target is None) else target,
                                    target_velocity, self._scale_array())
        for flags, cause in ((result.position_limited, gate.POSITION_LIMIT),
                             (result.velocity_limited, gate.VELOCITY_LIMIT),
                             (result.acceleration_limited, gate.ACCELERATION_LIMIT),
                             (result.jerk_limited, gate.JERK_LIMIT)):
            acted |= gripper.split_causes(flags, cause)       # the gripper's apart
        state = self._state(hold, sample)
        self._account(state, sample, acted)
        command = JointCommand(
            stamp_s=now_s, target_time_s=now_s + cfg.actuator_lead_s,
            positions=result.position[:NUM_JOINTS].copy(),
            velocities=result.velocity[:NUM_JOINTS].copy(),
            gripper=float(min(max(result.position[NUM_JOINTS], 0.0), 1.0)),
            armed=self._armed, hold=state in HOLD_STATES, fault=self._fault, state=state,
            chunk_sequence=sample.sequence if sample is not None else -1,
            action_index=sample.index if sample is not None else math.nan,
            interventions=tuple(c for c in gate.CAUSES if c in acted),
            stop=self._stop.trigger if self._stop is not None else '',
            rest=self._stop.rest.copy() if self._stop is not None else None)
        if self._armed:
            self._jerk.add(command.positions)
        self._following = self._armed and not hold
        self._plan_due = self._following and sample is not None and \
            self._plan_version != self._published_version
        return self._finish(command)

    def _update_stop(self, now_s: float, hold: bool, acted: set[str]) -> None:
        """Begin a stop at a transition into hold, and disarm: it lasts until arm().

        The one place that says "hold now, because X" for every trigger (stops.py): an event
        since the last step (stop_now), or the first hold after following (stops.CONDITIONS).
        The braking starts from the limiter's state before this step's output.
        """
        trigger, self._stop_request = self._stop_request, ''
        if self._stop is not None:
            return
        if not trigger and self._armed and hold and self._following:
            trigger = next(c for c in stops.CONDITIONS if c in acted)
            self._armed = self._arm_pending = False
        if trigger:
            self._stop = stops.brake(trigger, self._limiter, now_s,
                                     self._config.actuator_lead_s, self._scale_array())
            self._stops[trigger] += 1
            self._stop_due = True

    def _query_time(self, now_s: float) -> float:
        return now_s + self._config.actuator_lead_s + self._limiter.delay_s

    def _join_pending(self, t_query: float) -> None:
        for chunk in self._pending:
            arrival = self._merger.add(chunk, t_query, self._restart(t_query))
            self._inputs[f'merge.{arrival.mode}'] += 1
            self._plan_version += 1
        self._pending.clear()

    def _restart(self, t_query: float) -> tuple[np.ndarray, np.ndarray] | None:
        """Return the state a blend into a new chunk starts from, or None for the plan.

        While tracking, the plan is what is commanded (and a limiter still catching up with an
        infeasible plan must not drag it back); after a hold, or before any plan, the arm is
        where the limiter stopped it: its state one period on.
        """
        last = self._last_command
        if not self._merger.empty and last is not None and not last.hold:
            sample = self._merger.sample(t_query)
            if np.isfinite(sample.position).all() and np.isfinite(sample.velocity).all():
                return None
        x, v = self._limiter.tracker_state
        return x + v * self._config.period_s, v

    def _hold_rules(self, now_s: float, t_query: float, sample: Sample | None,
                    acted: set[str]) -> bool:
        """Rules 1 and 2: finite reference, then the ages of chunk, robot state and sensor."""
        cfg, hold = self._config, False
        if sample is not None and not (
                sample.position.shape == (ACTION_DIM,) and sample.velocity.shape == (ACTION_DIM,)
                and np.isfinite(sample.position).all() and np.isfinite(sample.velocity).all()):
            acted.add(gate.NON_FINITE)
            hold = True
        if not now_s - self._robot.stamp_s <= cfg.max_robot_age_s:
            acted.add(gate.ROBOT_STATE_TOO_OLD)
            hold = True
        if sample is not None and not sample.underrun and \
                t_query - sample.stamp_s > cfg.max_chunk_age_s:
            acted.add(gate.CHUNK_TOO_OLD)
            hold = True
        if self._safety.settings.has_box and not self._safety.pose_fresh(now_s):
            acted.add(gate.TOOL_POSE_TOO_OLD)
            hold = True
        if cfg.require_sensor:
            if self._wrench is None:
                acted.add(gate.NO_SENSOR_WINDOW)
                hold = True
            elif not now_s - self._wrench.stamp_s <= cfg.max_sensor_age_s:
                acted.add(gate.SENSOR_TOO_OLD)
                hold = True
        return hold

    def _clamp(self, sample: Sample, acted: set[str]) -> tuple[np.ndarray, np.ndarray]:
        """Rules 3 and 4: position limits with margin, then distance from the measured joints."""
        target, velocity = sample.position.copy(), sample.velocity.copy()
        clipped, changed = gate.clamp(target, self._limiter.lower, self._limiter.upper)
        if changed:
            acted |= gripper.split_causes(clipped != target, gate.POSITION_LIMIT)
            velocity[clipped != target] = 0.0
            target = clipped
        d = np.full(ACTION_DIM, math.inf)
        d[:NUM_JOINTS] = self._config.max_distance_from_measured_rad
        d_lo, d_hi = self._measured - d, self._measured + d
        d_lo[NUM_JOINTS], d_hi[NUM_JOINTS] = -math.inf, math.inf   # the gripper is not checked
        clipped, changed = gate.clamp(target, d_lo, d_hi)
        if changed:
            acted.add(gate.MAX_DISTANCE)
            velocity[clipped != target] = 0.0
            target = clipped
        return target, velocity

    def _force_rules(self, now_s: float, acted: set[str]) -> float:
        """Force and torque: hard limits latch a fault; soft limits give a speed scale.

        Only a fresh window counts (a stale one holds by itself when require_sensor is set).
        """
        cfg, wrench = self._config, self._wrench
        if wrench is None or not now_s - wrench.stamp_s <= cfg.max_sensor_age_s:
            return 1.0
        if wrench.force_n >= cfg.force_hard_n:
            self._latch(gate.FORCE_LIMIT, f'|F| {wrench.force_n:.1f} N >= {cfg.force_hard_n} N')
        elif wrench.torque_nm >= cfg.torque_hard_nm:
            self._latch(gate.TORQUE_LIMIT,
                        f'|tau| {wrench.torque_nm:.2f} N m >= {cfg.torque_hard_nm} N m')
        force = gate.soft_scale(wrench.force_n, cfg.force_soft_n, cfg.force_hard_n,
                                cfg.min_speed_scale)
        torque = gate.soft_scale(wrench.torque_nm, cfg.torque_soft_nm, cfg.torque_hard_nm,
                                 cfg.min_speed_scale)
        if force < 1.0:
            acted.add(gate.FORCE_SOFT)
        if torque < 1.0:
            acted.add(gate.TORQUE_SOFT)
        return min(force, torque)

    def _scale_array(self) -> np.ndarray:
        scale = np.full(ACTION_DIM, self._speed_scale)
        scale[NUM_JOINTS] = 1.0                             # the gripper is not slowed
        return scale

    def _state(self, hold: bool, sample: Sample | None) -> str:
        if self._fault:
            return FAULT
        if hold:
            return HOLDING
        if sample is None:
            return WAITING
        return UNDERRUN if sample.underrun else TRACKING

    def _account(self, state: str, sample: Sample | None, acted: set[str]) -> None:
        for cause in acted:
            self._gate[cause] += 1
        previous = self._last_command.state if self._last_command is not None else ''
        if state == UNDERRUN:
            self._starved_steps += 1
            if previous != UNDERRUN:
                self._starved += 1
        last = self._last_sample
        if sample is not None and last is not None and sample.sequence != last.sequence \
                and gate.NON_FINITE not in acted and np.isfinite(last.position).all():
            # How far the reference moved off its own course in the period in which a new
            # chunk took over (blend: ~0, latest: the disagreement between the two plans).
            # The limiter absorbs it; these say how hard it had to work.
            joints = slice(0, NUM_JOINTS)
            expected = last.position[joints] + last.velocity[joints] * self._config.period_s
            self._jumps.add(float(np.max(np.abs(sample.velocity[joints]
                                                - last.velocity[joints]))))
            self._position_jumps.add(float(np.max(np.abs(sample.position[joints] - expected))))
        self._last_sample = sample

    def _invalid(self, now_s: float) -> JointCommand:
        nan6 = np.full(NUM_JOINTS, math.nan)
        return JointCommand(now_s, now_s + self._config.actuator_lead_s, nan6, nan6.copy(),
                            math.nan, self._armed, True, self._fault, NO_STATE, -1, math.nan,
                            (gate.NO_ROBOT_STATE,), valid=False)

    def _finish(self, command: JointCommand) -> JointCommand:
        self._last_command = command
        return command

    # --- outputs for the node -------------------------------------------------------------

    def trajectory_update(self) -> JointTrajectoryData | None:
        """Return the JointTrajectory to publish after the last step(), None when none is due.

        Due at the step a stop began: its braking, one point per control period to rest,
        stamped 0 (start on arrival). Due while following (armed, not holding) at the first
        step after the plan changed (a chunk joined it) or after following began (arm(), the
        end of a stop): trajectory(), stamped with the step's time. time_from_start counts
        from the stamp (from arrival for 0). Call it once after every step, as the node does;
        what is due is forgotten at the next step.
        """
        last, names = self._last_command, self._gripper.joint_names(self._config.joint_names)
        if last is None or not last.valid or not (self._stop_due or self._plan_due):
            return None
        # times from the stamp as lead + k T: absolute times lose 0.2 us at 1.7e9 s
        lead, period = self._config.actuator_lead_s, self._config.period_s
        if self._stop_due:
            # Stamp 0: the controller starts it when it first samples it. A stop from slow
            # motion lasts a few periods; stamped, it could end before it arrives on a loaded
            # host, and joint_trajectory_controller refuses a trajectory that ends in the past.
            self._stop_due = False
            stop = self._stop
            return JointTrajectoryData(0.0, names, tuple(
                TrajectoryPointData(lead + k * period, *self._gripper.columns(p, v))
                for k, (p, v) in enumerate(zip(stop.positions, stop.velocities))),
                stop=stop.trigger)
        self._plan_due = False
        self._published_version = self._plan_version
        points = self._lookahead(last)
        if not points:
            return None
        return JointTrajectoryData(last.stamp_s, names, tuple(
            TrajectoryPointData(lead + k * period, *self._gripper.columns(p, v))
            for k, p, v in points))

    def trajectory(self, now_s: float) -> list[tuple[float, np.ndarray, np.ndarray]]:
        """Future (target time, (6,) positions, (6,) velocities) after the last command.

        The limiter is run forward on a copy, following the plan as it stands (no new chunk),
        for at most lookahead_s, and brakes early enough that the last point is at rest: a
        controller that receives no newer trajectory stops there. Empty when not armed (a
        JointTrajectory moves the robot) or before the first step.
        """
        last = self._last_command
        if not self._armed or last is None or not last.valid:
            return []
        return [(t, p[:NUM_JOINTS], v[:NUM_JOINTS]) for k, p, v in self._lookahead(last)
                if (t := last.target_time_s + k * self._config.period_s) > now_s]

    def _lookahead(self, last: JointCommand) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """(k, (7,) positions, (7,) velocities) of the limiter k periods after `last`."""
        cfg, period = self._config, self._config.period_s
        limiter = self._limiter.copy()
        total = int(math.floor(cfg.lookahead_s / period + 1e-9))
        braking = int(math.ceil(float(np.max(limiter.v_max / (self._accel * period))))) \
            + limiter.taps + 1
        follow = 0 if last.hold else max(0, total - braking)
        stride = max(1, int(round(cfg.trajectory_dt_s / period)))
        scale = self._scale_array()
        points = []
        for k in range(1, total + 1):
            target = velocity = None
            sample = self._merger.sample(self._query_time(last.stamp_s) + k * period) \
                if k <= follow else None
            if sample is not None:
                target, velocity = self._clamp(sample, set())
            result = limiter.step(target, velocity, scale)
            at_rest = sample is None and limiter.at_rest and not result.velocity.any()
            if k % stride == 0 or at_rest:
                points.append((k, result.position.copy(), result.velocity.copy()))
            if at_rest:
                break
        return points

    def committed_prefix(self, now_s: float) -> tuple[float, np.ndarray] | None:
        """(stamp_s, (d, 7) float32): the plan's actions at stamp_s + k dt, k < d.

        d covers the `prefix_quantile` of the measured chunk delays plus how far ahead the
        plan is sampled (actuator lead + filter delay), in action steps rounded up, plus the
        action at which the switch happens (merge.committed_steps; 1..horizon - 1): the actions
        a chunk from an observation at now_s cannot change because they run before it arrives.
        The executor keeps them when such a chunk continues them (merge = prefix). None without
        a plan, or while the gate holds (the robot is not following the plan then).
        """
        last = self._last_command
        if self._merger.empty or not math.isfinite(self._chunk_dt_s) or \
                (last is not None and last.hold):
            return None
        d = self.prefix_steps
        actions = np.stack([self._merger.sample(now_s + k * self._chunk_dt_s).position
                            for k in range(d)])                           # (d, 7)
        actions = np.clip(actions, self._limiter.lower, self._limiter.upper)
        return now_s, actions.astype(np.float32)

    @property
    def chunk_dt_s(self) -> float:
        """Time between the actions of the newest accepted chunk [s] (NaN before one)."""
        return self._chunk_dt_s

    @property
    def last_delay_s(self) -> float:
        """Observation stamp -> arrival of the newest chunk [s] (NaN before one)."""
        values = self._delays.array()
        return float(values[-1]) if values.size else math.nan

    @property
    def prefix_steps(self) -> int:
        """Committed action steps d (see committed_prefix)."""
        if not math.isfinite(self._chunk_dt_s):
            return 1
        ahead = self._config.actuator_lead_s + self._limiter.delay_s
        return committed_steps(self._delays.array(), self._config.prefix_quantile,
                               self._chunk_dt_s, self._chunk_horizon, ahead)

    def stats(self) -> dict:
        """Flat counters and summaries for /diagnostics (`gate.<cause>` etc.)."""
        last = self._last_command
        state = last.state if last is not None else NO_STATE
        if self._fault:
            level, message = 'ERROR', f'fault {self._fault}: {self._fault_detail}'
        elif state in (HOLDING, UNDERRUN, NO_STATE):
            level, message = 'WARN', state
        else:
            level, message = 'OK', state
        if not self._armed:
            message += ' (disarmed: preview only)'
        if self._refusal:
            message += f'; arming refused: {self._refusal}'
        estop = self._safety.estop_active
        out = {'level': level, 'message': message, 'state': state, 'armed': self._armed,
               'fault': self._fault, 'merge': self._config.merge, 'steps': self._steps,
               'chunks.accepted': self._accepted, 'faults_latched': self._faults,
               'starved': self._starved, 'starved_steps': self._starved_steps,
               'prefix.steps': self.prefix_steps, 'speed_scale': self._speed_scale,
               'filter_delay_s': self._limiter.delay_s,
               'jerk.rms': self._jerk.rms, 'jerk.peak': self._jerk.peak,
               'stop': self._stop.trigger if self._stop is not None else '',
               'arming.refusal': self._refusal,
               'arming.allow_untrained_vlm': self._config.allow_untrained_vlm,
               'untrained': self._untrained,
               'estop': 'unknown' if estop is None else 'active' if estop else 'released',
               'deadman': ('off' if self._config.deadman_timeout_s <= 0 else
                           'released' if self._safety.deadman_released(self._last_now)
                           else 'held')}
        out.update({f'arming.refused.{k}': v for k, v in self._arming.items()})
        out.update({f'gate.{k}': v for k, v in self._gate.items()})
        out.update({f'stops.{k}': v for k, v in self._stops.items()})
        out.update({f'chunks.rejected.{k}': v for k, v in self._rejected.items()})
        out.update({f'inputs.{k}': v for k, v in sorted(self._inputs.items())})
        out.update(self._delays.summary('delay_s'))
        out.update(self._jumps.summary('boundary.velocity_jump'))
        out.update(self._position_jumps.summary('boundary.position_jump'))
        return out
