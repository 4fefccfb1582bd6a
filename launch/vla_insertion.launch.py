"""Bring up the whole cell: bridges, VLM, action expert, optionally the sim cell and a recorder.

    ros2 launch vla_insertion vla_insertion.launch.py robot_ip:=<robot PC> \
        checkpoint:=/path/to/expert vlm_model:=Qwen/Qwen2.5-VL-3B-Instruct
    ros2 launch vla_insertion vla_insertion.launch.py sim:=true     # from any folder
    ros2 launch vla_insertion vla_insertion.launch.py role:=gpu_host dds_profile:=two_hosts

The nodes and their parameters come from vla_insertion.core.orchestration.launch_table, the same
table the
demo uses. The VLM and the action expert are separate processes (no shared GIL) and managed
nodes (launch_ros LifecycleNode): with autostart:=true (default) each configures and activates
itself at start, as it does under the demo and the tests; with autostart:=false both wait
unconfigured for `ros2 lifecycle set`. The transitions are not sent from here with ChangeState
events on purpose: launch_ros waits for a starting node's change_state service in a thread, and
a Ctrl-C in that window (the VLM takes seconds to import) raises in launch_ros (0.28) and fails
the launch. A node that cannot configure exits (2: configuration, 3: VLM load), and the exit of
any required program stops the launch with the reason instead of leaving a half graph.
"""
import functools
import os

from ament_index_python.packages import get_package_prefix, get_package_share_directory
from launch import LaunchDescription
from launch.actions import (
    DeclareLaunchArgument, ExecuteProcess, LogInfo, OpaqueFunction, RegisterEventHandler,
    Shutdown)
from launch.event_handlers import OnProcessExit
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

from vla_insertion.core.artifacts import ArtifactError
from vla_insertion.core.orchestration.launch_table import (
    command_for, dds_environment, enabled_nodes, is_true, LAUNCH_ARGUMENTS, parameter_overrides,
    prepare_arguments)

PACKAGE = 'vla_insertion'
# SIGINT -> SIGTERM after this long: a node stops in well under a second, but the interpreter's
# exit with torch loaded takes ~3 s on the 2-core development machine and more under load
SIGTERM_TIMEOUT_S = '10'


def _launch_setup(context):
    args = {a.name: LaunchConfiguration(a.name).perform(context) for a in LAUNCH_ARGUMENTS}
    params_file = args['params_file'] or os.path.join(
        get_package_share_directory(PACKAGE), 'config', 'vla_insertion.yaml')
    lib_dir = os.path.join(get_package_prefix(PACKAGE), 'lib', PACKAGE)
    try:
        args, notes = prepare_arguments(args, params_file, lib_dir)
    except ArtifactError as exc:
        return _stop(f'sim:=true: {exc}; or pass checkpoint:= and vlm_model:=')
    try:        # an unknown policy:= or role:=, a missing dds_profile:= (docs/bringup.md)
        specs = enabled_nodes(args)
        env = dds_environment(args, os.path.join(get_package_share_directory(PACKAGE), 'config'))
    except ValueError as exc:
        return _stop(str(exc))
    actions = [LogInfo(msg=note) for note in notes]
    actions += [LogInfo(msg=f'DDS profile: {path}') for path in sorted(set(env.values()))]
    for spec in specs:
        if not spec.ros_node:
            action = ExecuteProcess(
                cmd=command_for(spec, lib_dir, params_file, args), name=spec.name,
                output='screen', sigterm_timeout=SIGTERM_TIMEOUT_S, additional_env=env)
        else:
            parameters = [params_file, {'use_sim_time': is_true(args['use_sim_time'])}]
            overrides = parameter_overrides(spec, args)
            if overrides:
                parameters.append(overrides)
            kind = LifecycleNode if spec.lifecycle else Node
            action = kind(
                package=PACKAGE, executable=spec.executable, name=spec.name,
                namespace=args['namespace'], parameters=parameters, output='screen',
                emulate_tty=True, sigterm_timeout=SIGTERM_TIMEOUT_S, additional_env=env)
        actions.append(action)
        if spec.required:
            actions.append(RegisterEventHandler(OnProcessExit(
                target_action=action, on_exit=functools.partial(_exited, spec.name))))
    return actions


def _exited(name, event, context):
    if context.is_shutdown:
        return None
    return _stop(f'{name} exited with status {event.returncode} (its log above says why); '
                 'stopping the launch, a half graph publishes no actions')


def _stop(reason):
    # launch does not print a Shutdown's reason: say it first
    return [LogInfo(msg=reason), Shutdown(reason=reason)]


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(a.name, default_value=a.default, description=a.description)
         for a in LAUNCH_ARGUMENTS]
        + [OpaqueFunction(function=_launch_setup)])
