"""Bring up the whole cell: bridges, VLM, action expert, optionally the sim cell and a recorder.

    ros2 launch vla_insertion vla_insertion.launch.py robot_ip:=<robot PC> \
        checkpoint:=/path/to/expert vlm_model:=Qwen/Qwen2.5-VL-3B-Instruct
    ros2 launch vla_insertion vla_insertion.launch.py sim:=true     # from any folder

The nodes and their parameters come from vla_insertion.core.launch_table, the same table the
demo uses. The VLM and the action expert are separate processes (no shared GIL) and managed
nodes: with autostart:=true (default) this file configures them, then activates each once it is
inactive; a failed configure or activate, or the exit of any required program, stops the
launch with the reason instead of leaving a half graph.
"""
import functools
import os

from ament_index_python.packages import get_package_prefix, get_package_share_directory
from launch import LaunchDescription
from launch.actions import (
    DeclareLaunchArgument, EmitEvent, ExecuteProcess, LogInfo, OpaqueFunction,
    RegisterEventHandler, Shutdown)
from launch.event_handlers import OnProcessExit
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

from vla_insertion.core.artifacts import ArtifactError
from vla_insertion.core.launch_table import (
    command_for, enabled_nodes, is_true, LAUNCH_ARGUMENTS, parameter_overrides,
    prepare_arguments)

PACKAGE = 'vla_insertion'


def _launch_setup(context):
    args = {a.name: LaunchConfiguration(a.name).perform(context) for a in LAUNCH_ARGUMENTS}
    params_file = args['params_file'] or os.path.join(
        get_package_share_directory(PACKAGE), 'config', 'vla_insertion.yaml')
    lib_dir = os.path.join(get_package_prefix(PACKAGE), 'lib', PACKAGE)
    try:
        args, notes = prepare_arguments(args, params_file, lib_dir)
    except ArtifactError as exc:
        return [Shutdown(reason=f'sim:=true: {exc}; or pass checkpoint:= and vlm_model:=')]
    actions = [LogInfo(msg=note) for note in notes]
    for spec in enabled_nodes(args):
        if not spec.ros_node:
            action = ExecuteProcess(
                cmd=command_for(spec, lib_dir, params_file, args), name=spec.name,
                output='screen', sigterm_timeout='5')
        else:
            parameters = [params_file, {'use_sim_time': is_true(args['use_sim_time'])}]
            overrides = parameter_overrides(spec, args)
            if spec.lifecycle:
                overrides['autostart'] = False     # this file drives the transitions
            if overrides:
                parameters.append(overrides)
            kind = LifecycleNode if spec.lifecycle else Node
            action = kind(
                package=PACKAGE, executable=spec.executable, name=spec.name,
                namespace=args['namespace'], parameters=parameters, output='screen',
                emulate_tty=True, sigterm_timeout='5')
        actions.append(action)
        if spec.required:
            actions.append(RegisterEventHandler(OnProcessExit(
                target_action=action, on_exit=functools.partial(_exited, spec.name))))
        if spec.lifecycle and is_true(args['autostart']):
            actions += _autostart(action, spec.name)
    return actions


def _exited(name, event, context):
    if context.is_shutdown:
        return None
    return [Shutdown(reason=f'{name} exited with status {event.returncode} (its log above says '
                            'why); stopping the launch, a half graph publishes no actions')]


def _autostart(node, name):
    """Configure now; once inactive, activate; a failure of either stops the launch."""
    def change(transition_id):
        return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                           transition_id=transition_id))

    def outcome(step, done, next_actions, context):
        goal = context.locals.event.goal_state
        if goal == done:
            return next_actions
        return [Shutdown(reason=f'{name} failed to {step} (now {goal}; its log above says '
                                'why)')]

    def on_first(start_state, step, done, next_actions):
        return RegisterEventHandler(OnStateTransition(
            target_lifecycle_node=node, start_state=start_state, handle_once=True,
            entities=[OpaqueFunction(function=functools.partial(
                outcome, step, done, next_actions))]))

    return [on_first('configuring', 'configure', 'inactive',
                     [change(Transition.TRANSITION_ACTIVATE)]),
            on_first('activating', 'activate', 'active', []),
            change(Transition.TRANSITION_CONFIGURE)]


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(a.name, default_value=a.default, description=a.description)
         for a in LAUNCH_ARGUMENTS]
        + [OpaqueFunction(function=_launch_setup)])
