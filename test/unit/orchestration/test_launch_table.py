"""The launch table, the params file, setup.cfg and the config classes agree with each other."""
import configparser
import dataclasses
import importlib.util
from pathlib import Path
import re

import pytest

from vla_insertion.core import config as config_module
from vla_insertion.core import params as ros_params
from vla_insertion.core.orchestration import launch_table as lt

ROOT = Path(__file__).resolve().parents[3]
PARAMS = ROOT / 'config' / 'vla_insertion.yaml'


def _console_scripts() -> dict[str, str]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / 'setup.cfg')
    lines = parser['options.entry_points']['console_scripts'].strip().splitlines()
    return dict(tuple(p.strip() for p in line.split('=', 1)) for line in lines if '=' in line)


def _config_class(spec: lt.NodeSpec) -> type:
    cls = getattr(config_module, spec.config, None)
    assert cls is not None, f'{spec.name}: no config class {spec.config} in core/config.py'
    return cls


@pytest.mark.parametrize('spec', lt.NODES, ids=[n.name for n in lt.NODES])
def test_every_executable_is_a_console_script_with_a_main(spec):
    scripts = _console_scripts()
    assert spec.executable in scripts, f'{spec.executable} missing from setup.cfg'
    module, func = scripts[spec.executable].split(':')
    # located, not imported: nodes need the built messages (test/ros imports and runs them)
    found = importlib.util.find_spec(module)
    assert found is not None and found.origin, f'{module} not found'
    assert re.search(rf'^def {func}\(', Path(found.origin).read_text(), re.M), \
        f'{module} has no top-level {func}()'


@pytest.mark.parametrize('spec', lt.NODES, ids=[n.name for n in lt.NODES])
def test_params_file_section_builds_the_node_config(spec):
    cls = _config_class(spec)
    assert ros_params.node_params(PARAMS, spec.name), f'{PARAMS.name} has no section for ' \
        f'{spec.name}'
    config = ros_params.load_config(cls, spec.name, PARAMS)  # unknown names, bad values raise
    assert dataclasses.is_dataclass(config)


@pytest.mark.parametrize('spec', lt.NODES, ids=[n.name for n in lt.NODES])
def test_launch_overrides_name_real_parameters(spec):
    fields = {f.name for f in dataclasses.fields(_config_class(spec))}
    for argument, parameter in spec.overrides.items():
        assert argument in {a.name for a in lt.LAUNCH_ARGUMENTS}
        assert parameter in fields, f'{argument} overrides unknown {spec.name}.{parameter}'


def test_every_launch_argument_has_a_description():
    names = [a.name for a in lt.LAUNCH_ARGUMENTS]
    assert len(names) == len(set(names))
    assert all(a.description for a in lt.LAUNCH_ARGUMENTS)
    enabling = {n.enabled_by for n in lt.NODES if n.enabled_by}
    assert enabling <= set(names)


def test_default_addresses_are_loopback():
    params = '\n'.join(line.split('#')[0] for line in PARAMS.read_text().splitlines())
    for spec in lt.NODES:
        defaults = _config_class(spec)()
        for f in dataclasses.fields(defaults):
            value = getattr(defaults, f.name)
            if 'address' in f.name or f.name.endswith(('_ip', '_host', '_bind')):
                assert value in ('127.0.0.1', 'localhost'), f'{spec.name}.{f.name}={value}'
    # no cell address baked into the shipped parameters: every IPv4 literal is loopback
    addresses = re.findall(r'\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b', params)
    assert addresses and all(a.startswith('127.') for a in addresses), addresses


def test_commands_follow_the_arguments(tmp_path):
    args = {a.name: a.default for a in lt.LAUNCH_ARGUMENTS}
    args.update(sim='true', namespace='cell_a', use_sim_time='true', robot_ip='127.0.0.2')
    names = [n.name for n in lt.enabled_nodes(args)]
    assert 'sim_cell' in names and 'bag_recorder' not in names
    robot = next(n for n in lt.NODES if n.name == 'robot_bridge')
    cmd = lt.command_for(robot, tmp_path, tmp_path / 'p.yaml', args)
    assert cmd[0] == str(tmp_path / 'robot_bridge')
    assert ['-r', '__ns:=/cell_a'] == cmd[cmd.index('__ns:=/cell_a') - 1:][:2]
    assert 'use_sim_time:=true' in cmd and 'robot_ip:=127.0.0.2' in cmd
    sim = next(n for n in lt.NODES if n.name == 'sim_cell')
    assert '--ros-args' not in lt.command_for(sim, tmp_path, tmp_path / 'p.yaml', args)


def test_launch_file_uses_the_table():
    source = (ROOT / 'launch' / 'vla_insertion.launch.py').read_text()
    assert 'LAUNCH_ARGUMENTS' in source and 'enabled_nodes' in source
    launch_ros = pytest.importorskip('launch_ros')  # present on a ROS machine only
    assert launch_ros


def test_tool_shortcuts_become_ros_parameters():
    common = pytest.importorskip('vla_insertion.ros.parameters')  # rclpy is needed to import it
    argv, ros_args = common.split_ros_args(['bag', '-r', '2', '--ros-args', '-p', 'loop:=true'])
    assert argv == ['bag', '-r', '2'] and ros_args == ['--ros-args', '-p', 'loop:=true']
    assert common.split_ros_args(['x']) == (['x'], [])
    out = common.with_parameters([], {'rate': 2.0, 'loop': True, 'restamp': False, 'bag': None,
                                      'topics': ['/a', 'b']})
    assert out == ['--ros-args', '-p', 'rate:=2.0', '-p', 'loop:=true',
                   '-p', "topics:=['/a','b']"]
    assert common.with_parameters(['--ros-args'], {'bag': None}) == ['--ros-args']


def test_managed_and_required_programs():
    by_name = {n.name: n for n in lt.NODES}
    assert {n.name for n in lt.NODES if n.lifecycle} == {'vlm_node', 'action_expert'}
    assert not by_name['bag_recorder'].required        # a full disk must not stop the cell
    assert all(n.required for n in lt.NODES if n.name != 'bag_recorder')
    args = {a.name: a.default for a in lt.LAUNCH_ARGUMENTS}
    assert args['autostart'] == 'true'
    assert lt.parameter_overrides(by_name['vlm_node'], args) == {'autostart': True}
    assert 'autostart' not in lt.parameter_overrides(by_name['camera_bridge'], args)
    cmd = lt.command_for(by_name['action_expert'], '/lib', PARAMS, {**args, 'autostart': 'no'})
    assert 'autostart:=false' in cmd        # the same parameter launch_ros gets


def test_record_dir_is_absolute_and_reaches_the_recorder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = {a.name: a.default for a in lt.LAUNCH_ARGUMENTS}
    args.update(record='true', record_dir='bags/today')
    prepared, notes = lt.prepare_arguments(args, PARAMS)
    assert prepared['record_dir'] == str(tmp_path / 'bags' / 'today')
    assert any(str(tmp_path / 'bags' / 'today') in note for note in notes)
    recorder = next(n for n in lt.enabled_nodes(prepared) if n.name == 'bag_recorder')
    cmd = lt.command_for(recorder, tmp_path, PARAMS, prepared)
    assert f'output_dir:={tmp_path / "bags" / "today"}' in cmd
    args.update(record_dir='')                          # the params file's folder, said where
    assert any(str(tmp_path) in note for note in lt.prepare_arguments(args, PARAMS)[1])


def test_demo_models_have_an_absolute_home(tmp_path, monkeypatch):
    from vla_insertion.core import artifacts
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    vlm, checkpoint = artifacts.demo_models()         # no ./artifacts here: the cache
    assert vlm == tmp_path / 'cache' / 'vla_insertion' / 'models' / 'tiny-qwen2.5-vl'
    assert checkpoint.parent == tmp_path / 'cache' / 'vla_insertion' / 'checkpoints'
    (tmp_path / artifacts.TINY_VLM).mkdir(parents=True)
    (tmp_path / artifacts.UNTRAINED_CHECKPOINT).mkdir(parents=True)
    assert artifacts.demo_models() == (tmp_path / artifacts.TINY_VLM,
                                       tmp_path / artifacts.UNTRAINED_CHECKPOINT)
    monkeypatch.delenv('XDG_CACHE_HOME')
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    assert artifacts.cache_root() == tmp_path / 'home' / '.cache' / 'vla_insertion'


def test_policy_argument_picks_what_makes_the_chunks(tmp_path):
    args = {a.name: a.default for a in lt.LAUNCH_ARGUMENTS}
    names = [n.name for n in lt.enabled_nodes(args)]
    assert 'action_expert' in names and 'policy_client' not in names
    remote = {**args, 'policy': 'gr00t', 'policy_host': '127.0.0.3', 'policy_port': '9001',
              'serve_reference': 'true'}
    names = [n.name for n in lt.enabled_nodes(remote)]
    assert 'policy_client' in names and 'serve_policy' in names
    assert 'vlm_node' not in names and 'action_expert' not in names
    by_name = {n.name: n for n in lt.NODES}
    client = lt.command_for(by_name['policy_client'], tmp_path, PARAMS, remote)
    assert {'protocol:=gr00t', 'server_host:=127.0.0.3', 'server_port:=9001'} <= set(client)
    server = lt.command_for(by_name['serve_policy'], tmp_path, PARAMS, remote)
    assert server[server.index('--protocol') + 1] == 'gr00t'
    assert server[server.index('--port') + 1] == '9001'
    assert 'serve_policy' not in [n.name for n in lt.enabled_nodes(
        {**remote, 'serve_reference': 'false'})]
    with pytest.raises(ValueError, match='policy:=lerobot'):
        lt.enabled_nodes({**args, 'policy': 'lerobot'})


def test_free_ports_link_the_policy_client_to_the_served_reference(tmp_path):
    target = tmp_path / 'params.yaml'
    ports = lt.params_on_free_ports(PARAMS, target)
    client = ros_params.load_config(config_module.PolicyClientConfig, 'policy_client', target)
    server = ros_params.load_config(config_module.ServePolicyConfig, 'serve_policy', target)
    assert client.server_port == server.port == ports['policy']
    assert server.episode_port == ports['episode']


def _names(**values: str) -> list[str]:
    return [n.name for n in lt.enabled_nodes(lt.launch_arguments(**values))]


def test_roles_split_the_cell_between_a_gpu_host_and_a_robot_host():
    # images stay on the GPU host, the robot's streams, chunks and commands on the robot host
    assert _names(role='gpu_host', sim='true', record='true') == [
        'camera_bridge', 'vlm_node', 'bag_recorder']
    assert _names(role='robot_host', sim='true', record='true') == [
        'sim_cell', 'robot_bridge', 'sensor_bridge', 'action_expert', 'chunk_executor',
        'bag_recorder']
    assert _names(role='robot_host', reference='true') == [
        'robot_bridge', 'sensor_bridge', 'reference_policy', 'chunk_executor']
    assert _names(role='robot_host', policy='openpi', serve_reference='true') == [
        'robot_bridge', 'sensor_bridge', 'policy_client', 'serve_policy', 'chunk_executor']
    assert sorted(_names(role='gpu_host', sim='true') + _names(role='robot_host', sim='true')) \
        == sorted(_names(sim='true'))                         # each program on one host
    assert {n.host for n in lt.NODES} <= set(lt.ROLES[1:]) | {''}
    with pytest.raises(ValueError, match="one of all, gpu_host, robot_host, got 'gpu'"):
        _names(role='gpu')


def test_dds_profile_selects_a_shipped_or_given_fastdds_file(tmp_path):
    config = ROOT / 'config'
    assert lt.dds_environment(lt.launch_arguments(), config) == {}
    two_hosts = lt.launch_arguments(dds_profile='two_hosts')
    shipped = str(config / 'fastdds_two_hosts.xml')
    assert lt.dds_environment(two_hosts, config, 'kilted') == {
        'FASTDDS_DEFAULT_PROFILES_FILE': shipped}             # Fast DDS 3
    assert lt.dds_environment(two_hosts, config, '') == {     # the Kilted wheels set none
        'FASTDDS_DEFAULT_PROFILES_FILE': shipped}
    for distro in ('humble', 'jazzy'):                        # Fast DDS 2
        assert lt.dds_environment(two_hosts, config, distro) == {
            'FASTRTPS_DEFAULT_PROFILES_FILE': shipped}
    own = tmp_path / 'mine.xml'
    own.write_text('<dds/>')
    assert set(lt.dds_environment({'dds_profile': str(own)}, config).values()) == {str(own)}
    with pytest.raises(ValueError, match='no file'):
        lt.dds_environment({'dds_profile': str(tmp_path / 'missing.xml')}, config)


def test_the_two_host_profile_fragments_at_the_dds_level_with_large_buffers():
    import xml.etree.ElementTree as ET
    root = ET.parse(ROOT / 'config' / lt.DDS_PROFILES['two_hosts']).getroot()

    def local(element) -> str:                      # the tag without its XML namespace
        return element.tag.rsplit('}', 1)[-1]

    def find(element, name: str) -> list:
        return [e for e in element.iter() if local(e) == name]

    def text(element, name: str) -> str:
        return find(element, name)[0].text.strip()

    assert local(root) == 'dds'
    descriptors = find(root, 'transport_descriptor')
    udp = [t for t in descriptors if text(t, 'type') == 'UDPv4']
    assert len(udp) == 1
    assert int(text(udp[0], 'maxMessageSize')) <= 1472              # no IP fragments
    for size in ('sendBufferSize', 'receiveBufferSize'):
        assert int(text(udp[0], size)) >= 4 * 2**20
    participant = find(root, 'participant')[0]
    assert participant.get('is_default_profile') == 'true'          # rmw_fastrtps uses it
    assert text(participant, 'useBuiltinTransports') == 'false'
    used = {e.text for e in find(find(participant, 'userTransports')[0], 'transport_id')}
    assert used == {text(t, 'transport_id') for t in descriptors}
