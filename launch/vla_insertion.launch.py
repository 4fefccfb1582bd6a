"""Bring up the whole cell: bridges, VLM, action expert, optionally the sim cell and a recorder.

    ros2 launch vla_insertion vla_insertion.launch.py robot_ip:=<robot PC> \
        checkpoint:=/path/to/expert vlm_model:=Qwen/Qwen2.5-VL-3B-Instruct

The nodes and their parameters come from vla_insertion.core.launch_table, the same table the
demo uses. The VLM and the action expert are separate processes (no shared GIL).
"""
import os

from ament_index_python.packages import get_package_prefix, get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from vla_insertion.core.launch_table import (
    command_for, enabled_nodes, is_true, LAUNCH_ARGUMENTS, parameter_overrides)

PACKAGE = 'vla_insertion'


def _launch_setup(context):
    args = {a.name: LaunchConfiguration(a.name).perform(context) for a in LAUNCH_ARGUMENTS}
    params_file = args['params_file'] or os.path.join(
        get_package_share_directory(PACKAGE), 'config', 'vla_insertion.yaml')
    lib_dir = os.path.join(get_package_prefix(PACKAGE), 'lib', PACKAGE)
    actions = []
    for spec in enabled_nodes(args):
        if not spec.ros_node:
            actions.append(ExecuteProcess(
                cmd=command_for(spec, lib_dir, params_file, args), name=spec.name,
                output='screen', sigterm_timeout='5'))
            continue
        parameters = [params_file, {'use_sim_time': is_true(args['use_sim_time'])}]
        overrides = parameter_overrides(spec, args)
        if overrides:
            parameters.append(overrides)
        actions.append(Node(
            package=PACKAGE, executable=spec.executable, name=spec.name,
            namespace=args['namespace'], parameters=parameters, output='screen',
            emulate_tty=True, sigterm_timeout='5'))
    return actions


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(a.name, default_value=a.default, description=a.description)
         for a in LAUNCH_ARGUMENTS]
        + [OpaqueFunction(function=_launch_setup)])
