"""The chunk executor's ROS-free core: chunks -> a smooth, safety-gated joint command stream.

    interpolation.py  a chunk as position and velocity over time (PCHIP Hermite, underrun)
    merge.py          how a new chunk takes over: latest, temporal_ensemble, blend, prefix
    limiter.py        the guarantee: position, velocity, acceleration and jerk limits
    gate.py           the safety rules, their cause names, the force/torque monitor
    limits.py         per-joint limits in ros2_control's joint_limits shape
    stops.py          every transition into hold: the braking to rest, its triggers
    executor.py       ChunkExecutor, the one class the chunk_executor node calls
    command.py        JointCommand -> command_v1
    trajectory_rules.py  what joint_trajectory_controller accepts (check_trajectory)
    gripper.py        the gripper on ros2_control: its gate causes, units, trajectory or command

docs/executor.md describes the timing model, the strategies and the gate.
"""
from vla_insertion.core.executor.command import command_message
from vla_insertion.core.executor.executor import ChunkExecutor, JointCommand
from vla_insertion.core.executor.gate import CAUSES
from vla_insertion.core.executor.limits import (
    default_limits, JointLimits, limits_from_params, LimitsTable, split_params)
from vla_insertion.core.executor.merge import align_prefix
from vla_insertion.core.executor.trajectory_rules import check_trajectory, TrajectoryCheck

__all__ = ['align_prefix', 'CAUSES', 'check_trajectory', 'ChunkExecutor', 'command_message',
           'default_limits', 'JointCommand', 'JointLimits', 'limits_from_params', 'LimitsTable',
           'split_params', 'TrajectoryCheck']
