"""What runs in the cell: the single table behind the launch file and the demo.

`launch/vla_insertion.launch.py` turns this table into launch_ros Nodes on a ROS machine; the
demo (`tools/demo.py`) and the tests start the same programs with the same arguments as plain
processes, because launch_ros is not installable on the development machine. A test checks that
every executable, parameter file entry and parameter named here exists and is declared.

Adding a program is one NodeSpec line (and, if it is optional, one LaunchArgument enabling it).
Every program is `required` unless said otherwise: when it exits, the launch stops with the
reason instead of leaving a half graph that publishes no actions. `lifecycle` marks managed
nodes: launch_ros starts them as LifecycleNodes with their `autostart` parameter set from the
launch argument (run_node then configures and activates them, as under the demo and tests).
"""
from __future__ import annotations

from dataclasses import dataclass, field
import os
from pathlib import Path


@dataclass(frozen=True)
class LaunchArgument:
    name: str
    default: str
    description: str


@dataclass(frozen=True)
class NodeSpec:
    executable: str                # program in lib/vla_insertion (a console_scripts entry)
    name: str                      # ROS node name, also its section in the params file
    config: str                    # config dataclass in core.config its parameters come from
    enabled_by: str = ''           # boolean launch argument that starts it ('' = always)
    disabled_by: str = ''          # boolean launch argument that keeps it from starting
    ros_node: bool = True          # False: a plain process (sim_cell) given --params-file
    # launch argument -> parameter it overrides when the argument is not empty
    overrides: dict[str, str] = field(default_factory=dict)
    lifecycle: bool = False        # a managed node (rclpy LifecycleNode)
    required: bool = True          # its exit ends the launch, with the reason
    policies: tuple[str, ...] = ()  # runs only for these values of `policy` (() = any)
    host: str = 'robot_host'       # the host of a two-host cell it runs on ('' = where asked)


# What makes the action chunks (the `policy` launch argument): the VLM and the action expert,
# or policy_client with a remote policy server of either protocol (docs/remote_policy.md).
POLICIES = ('expert', 'openpi', 'gr00t')
REMOTE_POLICIES = ('openpi', 'gr00t')


LAUNCH_ARGUMENTS: tuple[LaunchArgument, ...] = (
    LaunchArgument('params_file', '', 'ROS params YAML for every node '
                   '(default: share/vla_insertion/config/vla_insertion.yaml)'),
    LaunchArgument('namespace', '', 'namespace for every node and relative topic'),
    LaunchArgument('use_sim_time', 'false', 'use /clock (true when replaying a bag)'),
    LaunchArgument('robot_ip', '', 'address of the robot PC: its state PUB on port 5556 and '
                   'its command_v1 PULL on 5557 (empty: the params file value, 127.0.0.1 by '
                   'default)'),
    LaunchArgument('checkpoint', '', 'action-expert checkpoint folder '
                   '(empty: the params file value)'),
    LaunchArgument('vlm_model', '', 'VLM hub id or local folder (empty: the params file value)'),
    LaunchArgument('instruction', '', 'task instruction given to the VLM '
                   '(empty: the params file value)'),
    LaunchArgument('execute', 'true', 'also start chunk_executor, which turns chunks into robot '
                   'commands (disarmed until its ~/enable service is called)'),
    LaunchArgument('sim', 'false', 'also start sim_cell, the simulated cell on loopback; with '
                   'checkpoint and vlm_model empty, the tiny untrained demo models are used '
                   '(found in ./artifacts or ~/.cache/vla_insertion, written there if missing)'),
    LaunchArgument('allow_untrained_vlm', '', 'true: the executor may arm on features of a '
                   'VLM with random weights (the sim and the demo, which have no real VLM '
                   'weights); never on a real cell. An untrained expert is never armed '
                   '(empty: the params file value, false)'),
    LaunchArgument('reference', 'false', 'drive the simulated cell with the scripted '
                   'demonstrator (reference_policy) instead of the VLM and the action expert'),
    LaunchArgument('record', 'false', 'also record a rosbag2 bag of the documented topic set'),
    LaunchArgument('record_dir', '', 'folder the bag is recorded into (empty: the params file '
                   'value, artifacts/bags under the working directory); logged as an absolute '
                   'path'),
    LaunchArgument('autostart', 'true', 'the managed nodes (vlm_node, action_expert) configure '
                   'and activate themselves at start; false: they wait unconfigured for '
                   '`ros2 lifecycle set`'),
    LaunchArgument('policy', 'expert', 'what makes the action chunks: expert (vlm_node and '
                   'action_expert), or policy_client with a remote policy server speaking '
                   'openpi (websocket) or gr00t (ZMQ) at policy_host:policy_port'),
    LaunchArgument('policy_host', '', 'policy:=openpi|gr00t: host of the policy server '
                   '(empty: the params file value, 127.0.0.1 by default)'),
    LaunchArgument('policy_port', '', 'policy:=openpi|gr00t: port of the policy server '
                   '(empty: the params file value, 8000 by default)'),
    LaunchArgument('serve_reference', 'false', 'policy:=openpi|gr00t: also start serve_policy, '
                   'the scripted demonstrator served over that protocol on policy_port (with '
                   'sim:=true: try policy_client without a model)'),
    LaunchArgument('role', 'all', 'the host of a cell split over two hosts that this launch '
                   'starts: all (one host); gpu_host: camera_bridge and vlm_node, so images '
                   'never cross the network; robot_host: robot_bridge, sensor_bridge, '
                   'action_expert, chunk_executor (and sim_cell, reference_policy); '
                   'bag_recorder runs wherever record:=true'),
    LaunchArgument('dds_profile', '', 'Fast DDS profile of every node: empty keeps the '
                   'environment; two_hosts: the shipped config/fastdds_two_hosts.xml (fragments '
                   'at the DDS level, bounded datagrams, 4 MB socket buffers) for a cell split '
                   'over two hosts; or the path of a Fast DDS profiles XML file'),
)

NODES: tuple[NodeSpec, ...] = (
    NodeSpec('sim_cell', 'sim_cell', 'SimCellConfig', enabled_by='sim', ros_node=False),
    NodeSpec('camera_bridge', 'camera_bridge', 'CameraBridgeConfig', host='gpu_host'),
    NodeSpec('robot_bridge', 'robot_bridge', 'RobotBridgeConfig',
             overrides={'robot_ip': 'robot_ip'}),
    NodeSpec('sensor_bridge', 'sensor_bridge', 'SensorBridgeConfig'),
    NodeSpec('vlm_node', 'vlm_node', 'VlmConfig', lifecycle=True, disabled_by='reference',
             overrides={'vlm_model': 'model', 'instruction': 'instruction'},
             policies=('expert',), host='gpu_host'),
    NodeSpec('action_expert', 'action_expert', 'ExpertConfig', lifecycle=True,
             disabled_by='reference', overrides={'checkpoint': 'checkpoint'},
             policies=('expert',)),
    NodeSpec('policy_client', 'policy_client', 'PolicyClientConfig', disabled_by='reference',
             policies=REMOTE_POLICIES,
             overrides={'policy': 'protocol', 'policy_host': 'server_host',
                        'policy_port': 'server_port'}),
    NodeSpec('serve_policy', 'serve_policy', 'ServePolicyConfig', enabled_by='serve_reference',
             disabled_by='reference', ros_node=False, policies=REMOTE_POLICIES,
             overrides={'policy': 'protocol', 'policy_port': 'port'}),
    NodeSpec('reference_policy', 'reference_policy', 'ReferencePolicyConfig',
             enabled_by='reference'),
    NodeSpec('chunk_executor', 'chunk_executor', 'ExecutorConfig', enabled_by='execute',
             overrides={'robot_ip': 'robot_ip', 'allow_untrained_vlm': 'allow_untrained_vlm'}),
    NodeSpec('bag_recorder', 'bag_recorder', 'BagRecorderConfig', enabled_by='record',
             required=False, overrides={'record_dir': 'output_dir'}, host=''),
)

# Programs that tools start next to the table's nodes, never the launch file: the player of a
# timing-faithful replay (core/orchestration/replay.py).
BAG_PLAYER = NodeSpec('bag_player', 'bag_player', 'BagPlayerConfig')

TRUE_WORDS = ('true', '1', 'yes', 'on')


def is_true(value: str) -> bool:
    return str(value).strip().lower() in TRUE_WORDS


def launch_arguments(**values: str) -> dict[str, str]:
    """Return every launch argument's value: its default, or the one given (a KeyError if unknown).

    What `ros2 launch vla_insertion vla_insertion.launch.py name:=value ...` holds; the tools
    that start the table's programs themselves (core/orchestration/cell_run.py) start from it.
    """
    unknown = sorted(set(values) - {a.name for a in LAUNCH_ARGUMENTS})
    if unknown:
        raise KeyError(f'no launch argument {", ".join(unknown)} in the launch table')
    return {**{a.name: a.default for a in LAUNCH_ARGUMENTS}, **values}


def enabled_nodes(arguments: dict[str, str]) -> list[NodeSpec]:
    """Return the nodes that run for these launch argument values (`role`: on that host only).

    Raises ValueError for a `policy` that is none of POLICIES or a role not one of ROLES.
    """
    policy = arguments.get('policy') or 'expert'
    if policy not in POLICIES:
        raise ValueError(f'policy:={policy} is none of {", ".join(POLICIES)}')
    role = host_role(arguments)
    return [n for n in NODES if (not n.enabled_by or is_true(arguments.get(n.enabled_by, '')))
            and not (n.disabled_by and is_true(arguments.get(n.disabled_by, '')))
            and (not n.policies or policy in n.policies)
            and (role == ALL_HOSTS or not n.host or n.host == role)]


# A cell split over two hosts (docs/bringup.md "Two hosts"): `role` starts one host's programs,
# each NodeSpec says on which (`host`). The GPU host has the cameras' bridge and the VLM, so
# images stay there and only VL features cross; the robot host has the robot's and the
# sensor's streams, the expert and the executor, so chunks and commands stay there too.
ALL_HOSTS, GPU_HOST, ROBOT_HOST = 'all', 'gpu_host', 'robot_host'
ROLES = (ALL_HOSTS, GPU_HOST, ROBOT_HOST)
# `dds_profile` names of the profiles shipped in config/ (any other value is a file's path)
DDS_PROFILES = {'two_hosts': 'fastdds_two_hosts.xml'}
# The variable naming the profiles file: Fast DDS 2 (Humble, Jazzy) reads FASTRTPS_..., Fast
# DDS 3 (Kilted on) FASTDDS_... and its RMW warns at every node about the old name.
DDS_PROFILE_VARIABLE = 'FASTDDS_DEFAULT_PROFILES_FILE'
DDS_PROFILE_VARIABLE_FASTDDS2 = 'FASTRTPS_DEFAULT_PROFILES_FILE'
FASTDDS2_DISTROS = ('humble', 'iron', 'jazzy')


def host_role(arguments: dict[str, str]) -> str:
    """Return the `role` argument (default all); ValueError if it is not one of ROLES."""
    role = (arguments.get('role') or ALL_HOSTS).strip()
    if role not in ROLES:
        raise ValueError(f'role must be one of {", ".join(ROLES)}, got {role!r}')
    return role


def dds_profile_path(profile: str, config_dir: Path | str) -> Path | None:
    """Return the Fast DDS profiles file a `dds_profile` value names (None for '').

    A name of DDS_PROFILES is that file in `config_dir` (the package's config/); anything
    else is a path. Raises ValueError when the file does not exist.
    """
    profile = (profile or '').strip()
    if not profile:
        return None
    if profile in DDS_PROFILES:
        path = Path(config_dir) / DDS_PROFILES[profile]
    else:
        path = Path(os.path.expanduser(profile)).absolute()
    if not path.is_file():
        raise ValueError(f'dds_profile {profile!r}: no file {path} (a name of '
                         f'{", ".join(DDS_PROFILES)}, or the path of a Fast DDS XML file)')
    return path


def dds_environment(arguments: dict[str, str], config_dir: Path | str,
                    distro: str | None = None) -> dict[str, str]:
    """Return the environment variables every program gets for the `dds_profile` argument.

    Empty when it is empty: the environment's own choice stands. The variable is the one the
    Fast DDS of `distro` reads (default: $ROS_DISTRO; unset is the Kilted wheels').
    ValueError as dds_profile_path.
    """
    path = dds_profile_path(arguments.get('dds_profile', ''), config_dir)
    if path is None:
        return {}
    distro = os.environ.get('ROS_DISTRO', '') if distro is None else distro
    return {DDS_PROFILE_VARIABLE_FASTDDS2 if distro.strip().lower() in FASTDDS2_DISTROS
            else DDS_PROFILE_VARIABLE: str(path)}


def parameter_overrides(spec: NodeSpec, arguments: dict[str, str]) -> dict[str, object]:
    """Return the parameters a node gets from launch arguments.

    Non-empty arguments that override a config field, and a managed node's `autostart`.
    """
    params: dict[str, object] = {param: arguments[arg] for arg, param in spec.overrides.items()
                                 if arguments.get(arg, '')}
    if spec.lifecycle:
        params['autostart'] = is_true(arguments.get('autostart', 'true'))
    return params


def prepare_arguments(arguments: dict[str, str], params_file: Path | str,
                      bin_dir: Path | str | None = None) -> tuple[dict[str, str], list[str]]:
    """Return (arguments, what was done) with everything a run from any folder needs.

    `record_dir` becomes absolute (the recorder and the log show where the bag goes). With
    `sim` true and `checkpoint` and `vlm_model` empty, both point at the demo's tiny untrained
    models (core.artifacts.demo_models), written first if missing or made for another
    instruction. Raises core.artifacts.ArtifactError when they cannot be written.
    """
    from vla_insertion.core import artifacts
    args = dict(arguments)
    notes = []
    if args.get('record_dir'):
        args['record_dir'] = os.path.abspath(os.path.expanduser(args['record_dir']))
    if is_true(args.get('record', '')):
        where = args.get('record_dir') or 'the params file output_dir, under ' + os.getcwd()
        notes.append(f'recording bags into {where}')
    if is_true(args.get('sim', '')) and not (args.get('checkpoint') or args.get('vlm_model')):
        vlm, checkpoint = artifacts.demo_models()
        steps = artifacts.prepare_demo_models(
            vlm, checkpoint, params_file, bin_dir=Path(bin_dir) if bin_dir else None,
            overrides={'instruction': args['instruction']} if args.get('instruction') else None)
        args.update(vlm_model=str(vlm), checkpoint=str(checkpoint))
        notes.append(f'sim: the UNTRAINED demo models {vlm} and {checkpoint}'
                     + (f' (written now: {", ".join(steps)})' if steps else ''))
    note = sim_allows_untrained_vlm(args)
    if note:
        notes.append(note)
    return args, notes


def sim_allows_untrained_vlm(args: dict[str, str]) -> str:
    """With `sim` true and `allow_untrained_vlm` empty, set it true; return what was done.

    No real VLM weights exist where the sim runs: the executor may arm on the random VLM's
    features, and the log says so. A trained expert is still needed: an untrained one is never
    armed. The launch file (prepare_arguments) and the tools (CellRun) both apply this.
    """
    if not is_true(args.get('sim', '')) or args.get('allow_untrained_vlm'):
        return ''
    args['allow_untrained_vlm'] = 'true'
    return ('sim: allow_untrained_vlm:=true, the executor may arm on features of an UNTRAINED '
            'VLM (never on a real cell)')


def spec_named(name: str) -> NodeSpec:
    """Return the spec of a node of the table (or the bag player) by name."""
    for spec in NODES + (BAG_PLAYER,):
        if spec.name == name:
            return spec
    raise KeyError(f'no node {name!r} in the launch table')


# Sockets between the programs of the table: (node, parameter) pairs that must agree, per
# link, and the socket kind of a free port for it.
CELL_LINKS = {
    'camera': ('tcp', (('camera_bridge', 'port'), ('sim_cell', 'camera_port'))),
    'robot': ('tcp', (('robot_bridge', 'port'), ('sim_cell', 'robot_port'))),
    'sensor': ('udp', (('sensor_bridge', 'port'), ('sim_cell', 'sensor_port'))),
    'command': ('tcp', (('chunk_executor', 'command_port'), ('sim_cell', 'command_port'))),
    'episode': ('tcp', (('sim_cell', 'episode_port'), ('reference_policy', 'episode_port'),
                        ('serve_policy', 'episode_port'))),
    'policy': ('tcp', (('policy_client', 'server_port'), ('serve_policy', 'port'))),
}


def params_on_free_ports(source: Path | str, target: Path | str) -> dict[str, int]:
    """Copy a params file with every cell link on a free loopback port; return the ports.

    For tests, evaluations and recordings that run a whole simulated cell beside another one
    (never two stacks on the same ports). Each node's section is found the way rcl matches it.
    """
    import socket

    import yaml

    from vla_insertion.core.params import fqn, key_matches, read_params_file
    doc = read_params_file(source)
    ports = {}
    for link, (kind, users) in CELL_LINKS.items():
        with socket.socket(socket.AF_INET,
                           socket.SOCK_STREAM if kind == 'tcp' else socket.SOCK_DGRAM) as sock:
            sock.bind(('127.0.0.1', 0))
            ports[link] = sock.getsockname()[1]
        for node, parameter in users:
            key = next((k for k in doc if key_matches(k, fqn(node)) and k.strip('/') != '**'),
                       f'/**/{node}')
            section = doc.setdefault(key, {}).setdefault('ros__parameters', {})
            section[parameter] = ports[link]
    Path(target).write_text(yaml.safe_dump(doc, sort_keys=False))
    return ports


def installed_paths() -> tuple[Path, Path]:
    """Return (executable folder, shipped params file) of the installed package."""
    from ament_index_python.packages import get_package_prefix, get_package_share_directory
    lib_dir = Path(get_package_prefix('vla_insertion')) / 'lib' / 'vla_insertion'
    params = Path(get_package_share_directory('vla_insertion')) / 'config' / 'vla_insertion.yaml'
    return lib_dir, params


def command_for(spec: NodeSpec, executable_dir: Path | str, params_file: Path | str,
                arguments: dict[str, str], extra: dict[str, object] | None = None
                ) -> list[str]:
    """Return the command line that launch_ros would build for this node.

    `extra`: further parameters a tool sets (e.g. the replay's bag), after the overrides.
    """
    cmd = [str(Path(executable_dir) / spec.executable)]
    overrides = {**parameter_overrides(spec, arguments), **(extra or {})}
    if not spec.ros_node:
        cmd += ['--params-file', str(params_file)]
        for param, value in overrides.items():
            cmd += [f'--{param.replace("_", "-")}', str(value)]
        return cmd
    cmd += ['--ros-args', '-r', f'__node:={spec.name}', '--params-file', str(params_file)]
    namespace = arguments.get('namespace', '')
    if namespace:
        cmd += ['-r', f'__ns:=/{namespace.strip("/")}']
    if is_true(arguments.get('use_sim_time', 'false')):
        cmd += ['-p', 'use_sim_time:=true']
    for param, value in overrides.items():
        cmd += ['-p', f'{param}:={_param_text(value)}']
    return cmd


def _param_text(value) -> str:
    """Return a parameter value as `-p name:=<text>` wants it (YAML)."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (list, tuple)):
        return '[' + ','.join(repr(str(v)) for v in value) + ']'
    return str(value)
