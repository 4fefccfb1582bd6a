"""Per-joint limits in the shape of ros2_control's `joint_limits` parameters.

The params file holds them under the executor node, nested as in ros2_control:

    chunk_executor:
      ros__parameters:
        joint_limits:
          joint_1: {has_position_limits: true, min_position: -6.28, max_position: 6.28,
                    has_velocity_limits: true, max_velocity: 1.0,
                    has_acceleration_limits: true, max_acceleration: 4.0,
                    has_jerk_limits: true, max_jerk: 100.0}
          gripper: {...}

As ROS parameters the nested keys become dotted names (`joint_limits.joint_1.max_velocity`);
`limits_from_params` reads both forms. Keys given override the built-in defaults key by key;
joints not given keep the defaults. The keys are ros2_control's `JointLimits` fields; any other
key, or a joint that is neither in `joint_names` nor `gripper`, is a ConfigError naming it.

What the executor needs, and refuses to run without (ConfigError): position, velocity and
acceleration limits on every joint and the gripper. Jerk limits are optional (without one the
axis' jerk is only bounded by the others'). A deceleration limit tighter than the acceleration
limit becomes the acceleration limit (the limiter is symmetric). Effort limits are stored and
not enforced: the executor measures no joint torques.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
import math
from typing import Mapping

import numpy as np

from vla_insertion.core.config import ConfigError

GRIPPER = 'gripper'
DEFAULT_JOINT_NAMES = ('joint_1', 'joint_2', 'joint_3', 'joint_4', 'joint_5', 'joint_6')
PARAM_PREFIX = 'joint_limits'


@dataclass(frozen=True)
class JointLimits:
    """ros2_control's joint_limits_interface::JointLimits for one joint (SI units)."""

    has_position_limits: bool = False
    min_position: float = math.nan        # [rad] (gripper: 0 open .. 1 closed)
    max_position: float = math.nan        # [rad]
    has_velocity_limits: bool = False
    max_velocity: float = math.nan        # [rad/s]
    has_acceleration_limits: bool = False
    max_acceleration: float = math.nan    # [rad/s^2]
    has_deceleration_limits: bool = False
    max_deceleration: float = math.nan    # [rad/s^2]
    has_jerk_limits: bool = False
    max_jerk: float = math.nan            # [rad/s^3]
    has_effort_limits: bool = False
    max_effort: float = math.nan          # [N m], stored, not enforced
    angle_wraparound: bool = False        # continuous joint; the executor refuses it

    def validate(self, joint: str) -> None:
        """Raise ConfigError naming `joint` and the key unless the values are consistent."""
        for f in fields(self):
            value = getattr(self, f.name)
            key = f'{PARAM_PREFIX}.{joint}.{f.name}'
            if f.name.startswith('has_') or f.name == 'angle_wraparound':
                if not isinstance(value, bool):
                    raise ConfigError(f'{key} must be true or false, got {value!r}')
            elif getattr(self, _flag_of(f.name)):
                if isinstance(value, bool) or not isinstance(value, (int, float)) \
                        or not math.isfinite(value):
                    raise ConfigError(f'{key} must be a finite number, got {value!r}')
                if f.name != 'min_position' and f.name != 'max_position' and value <= 0:
                    raise ConfigError(f'{key} must be > 0, got {value!r}')
        if self.has_position_limits and not self.min_position < self.max_position:
            raise ConfigError(f'{PARAM_PREFIX}.{joint}.min_position ({self.min_position}) '
                              f'must be below max_position ({self.max_position})')

    def require_for_executor(self, joint: str) -> None:
        """Refuse limits the executor cannot work without (see the module docstring)."""
        for flag in ('has_position_limits', 'has_velocity_limits', 'has_acceleration_limits'):
            if not getattr(self, flag):
                raise ConfigError(f'{PARAM_PREFIX}.{joint}.{flag} must be true: the executor '
                                  "limits every joint's position, velocity and acceleration")
        if self.angle_wraparound:
            raise ConfigError(f'{PARAM_PREFIX}.{joint}.angle_wraparound: continuous joints are '
                              'not supported by the executor')

    @property
    def acceleration(self) -> float:
        """The symmetric acceleration bound: the tighter of acceleration and deceleration."""
        if self.has_deceleration_limits:
            return min(self.max_acceleration, self.max_deceleration)
        return self.max_acceleration

    @property
    def jerk(self) -> float:
        return self.max_jerk if self.has_jerk_limits else math.inf


def _flag_of(name: str) -> str:
    return {'min_position': 'has_position_limits', 'max_position': 'has_position_limits',
            'max_velocity': 'has_velocity_limits', 'max_acceleration': 'has_acceleration_limits',
            'max_deceleration': 'has_deceleration_limits', 'max_jerk': 'has_jerk_limits',
            'max_effort': 'has_effort_limits'}[name]


KEYS = tuple(f.name for f in fields(JointLimits))


def _arm_joint(min_position: float, max_position: float, max_effort: float) -> JointLimits:
    # UR5e ranges (the elbow is +-pi in Universal Robots' description: self-collision); speeds
    # a third of the UR5e's pi rad/s, gentle accelerations: a VLA doing a slow insertion.
    # 2 * 4 / (100 * 0.01) = 8 periods of jerk smoothing at 100 Hz (core/executor/limiter.py).
    return JointLimits(has_position_limits=True, min_position=min_position,
                       max_position=max_position, has_velocity_limits=True, max_velocity=1.0,
                       has_acceleration_limits=True, max_acceleration=4.0,
                       has_jerk_limits=True, max_jerk=100.0, has_effort_limits=True,
                       max_effort=max_effort)


TWO_PI = 2.0 * math.pi
DEFAULT_ARM_LIMITS = (               # UR5e rated torques [N m]
    _arm_joint(-TWO_PI, TWO_PI, 150.0),     # base
    _arm_joint(-TWO_PI, TWO_PI, 150.0),     # shoulder
    _arm_joint(-math.pi, math.pi, 150.0),   # elbow
    _arm_joint(-TWO_PI, TWO_PI, 28.0),      # wrist 1
    _arm_joint(-TWO_PI, TWO_PI, 28.0),      # wrist 2
    _arm_joint(-TWO_PI, TWO_PI, 28.0),      # wrist 3
)
# Gripper command 0 open .. 1 closed: a full stroke in 0.5 s, same 8-period smoothing.
DEFAULT_GRIPPER_LIMITS = JointLimits(
    has_position_limits=True, min_position=0.0, max_position=1.0, has_velocity_limits=True,
    max_velocity=2.0, has_acceleration_limits=True, max_acceleration=20.0,
    has_jerk_limits=True, max_jerk=500.0)


@dataclass(frozen=True)
class LimitsTable:
    """Limits of the six arm joints, in command order, then the gripper."""

    names: tuple[str, ...]                # 6 joint names + 'gripper'
    joints: tuple[JointLimits, ...]       # one per name

    def __post_init__(self) -> None:
        if len(self.names) != len(self.joints) or self.names[-1] != GRIPPER:
            raise ConfigError(f'limits need one entry per joint and the gripper last, got '
                              f'{list(self.names)}')
        for name, limits in zip(self.names, self.joints):
            limits.validate(name)
            limits.require_for_executor(name)

    def array(self, attribute: str) -> np.ndarray:
        """(7,) float64 of one attribute over the joints and the gripper."""
        return np.array([float(getattr(j, attribute)) for j in self.joints])

    def to_params(self) -> dict[str, object]:
        """Flat ROS parameters `joint_limits.<joint>.<key>` (e.g. to declare them)."""
        out: dict[str, object] = {}
        for name, limits in zip(self.names, self.joints):
            for key in KEYS:
                value = getattr(limits, key)
                if isinstance(value, bool) or math.isfinite(value):
                    out[f'{PARAM_PREFIX}.{name}.{key}'] = value
        return out


def default_limits(joint_names: tuple[str, ...] = DEFAULT_JOINT_NAMES) -> LimitsTable:
    if len(joint_names) != len(DEFAULT_ARM_LIMITS):
        raise ConfigError(f'expected {len(DEFAULT_ARM_LIMITS)} joint names, got '
                          f'{list(joint_names)}')
    return LimitsTable(tuple(joint_names) + (GRIPPER,),
                       DEFAULT_ARM_LIMITS + (DEFAULT_GRIPPER_LIMITS,))


def _nested_entries(params: Mapping) -> dict[str, dict]:
    """{joint: {key: value}} from `joint_limits` nested and `joint_limits.j.k` dotted keys."""
    entries: dict[str, dict] = {}
    nested = params.get(PARAM_PREFIX)
    if nested is not None:
        if not isinstance(nested, Mapping):
            raise ConfigError(f'{PARAM_PREFIX} must be a mapping of joint names, got '
                              f'{type(nested).__name__}')
        for joint, values in nested.items():
            if not isinstance(values, Mapping):
                raise ConfigError(f'{PARAM_PREFIX}.{joint} must be a mapping of limit keys, '
                                  f'got {values!r}')
            entries.setdefault(str(joint), {}).update(values)
    for name, value in params.items():
        if not isinstance(name, str) or not name.startswith(PARAM_PREFIX + '.'):
            continue
        parts = name.split('.')
        if len(parts) != 3 or not all(parts):
            raise ConfigError(f'{name}: expected {PARAM_PREFIX}.<joint>.<key>')
        entries.setdefault(parts[1], {})[parts[2]] = value
    return entries


def limits_from_params(params: Mapping,
                       joint_names: tuple[str, ...] = DEFAULT_JOINT_NAMES) -> LimitsTable:
    """Defaults overridden by the `joint_limits` entries of a node's parameters.

    Other parameters in `params` (the ExecutorConfig fields) are ignored here.
    """
    table = default_limits(joint_names)
    by_name = dict(zip(table.names, table.joints))
    for joint, values in _nested_entries(params).items():
        if joint not in by_name:
            raise ConfigError(f'{PARAM_PREFIX}.{joint}: unknown joint; known: '
                              f'{list(table.names)}')
        unknown = sorted(set(values) - set(KEYS))
        if unknown:
            raise ConfigError(f'{PARAM_PREFIX}.{joint}: unknown key(s) {unknown}; known: '
                              f'{list(KEYS)}')
        coerced = {k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v
                   for k, v in values.items()}
        by_name[joint] = replace(by_name[joint], **coerced)
    return LimitsTable(table.names, tuple(by_name[n] for n in table.names))


def split_params(params: Mapping) -> tuple[dict, dict]:
    """Split a node's parameters into (ExecutorConfig fields, joint_limits entries)."""
    config, limits = {}, {}
    for name, value in params.items():
        is_limit = name == PARAM_PREFIX or str(name).startswith(PARAM_PREFIX + '.')
        (limits if is_limit else config)[name] = value
    return config, limits
