"""core.params: params-file keys matched like rcl, unknown parameters refused by name."""
import pytest

from vla_insertion.core.config import ConfigError, ExpertConfig, VlmConfig
from vla_insertion.core.params import (
    key_matches, load_config, node_params, params_files, sections_not_applying,
    unknown_parameters)


@pytest.mark.parametrize('key,fqn,matches', [
    ('camera_bridge', '/camera_bridge', True),
    ('/camera_bridge', '/camera_bridge', True),
    ('camera_bridge', '/cell_a/camera_bridge', False),     # the namespace bug of issue 14
    ('/**/camera_bridge', '/camera_bridge', True),
    ('/**/camera_bridge', '/cell_a/camera_bridge', True),
    ('/**/camera_bridge', '/a/b/camera_bridge', True),
    ('/**', '/a/b/camera_bridge', True),
    ('/*/camera_bridge', '/cell_a/camera_bridge', True),
    ('/*/camera_bridge', '/camera_bridge', False),
    ('/cell_a/camera_bridge', '/cell_b/camera_bridge', False),
    ('/**/vlm_node', '/cell_a/camera_bridge', False),
])
def test_keys_match_like_rcl(key, fqn, matches):
    assert key_matches(key, fqn) is matches


def test_sections_apply_under_a_namespace_most_specific_last(tmp_path):
    path = tmp_path / 'p.yaml'
    path.write_text('/**:\n  ros__parameters:\n    use_sim_time: true\n'
                    '/cell_a/action_expert:\n  ros__parameters:\n    rate_hz: 5.0\n'
                    '/**/action_expert:\n  ros__parameters:\n    rate_hz: 20.0\n'
                    '    max_feature_age_s: 0.8\n')
    config = load_config(ExpertConfig, 'action_expert', path, namespace='cell_a')
    assert config.rate_hz == 5.0 and config.max_feature_age_s == 0.8
    config = load_config(ExpertConfig, 'action_expert', path, namespace='cell_b')
    assert config.rate_hz == 20.0
    assert node_params(path, 'vlm_node', 'cell_a') == {'use_sim_time': (True, '/**')}


def test_unknown_parameter_names_the_key_the_file_and_the_section(tmp_path):
    path = tmp_path / 'p.yaml'
    path.write_text('/**/action_expert:\n  ros__parameters:\n    rate_hz: 10.0\n'
                    '    max_featur_age_s: 0.5\n')
    with pytest.raises(ConfigError) as info:
        load_config(ExpertConfig, 'action_expert', path)
    message = str(info.value)
    assert 'max_featur_age_s' in message and '/**/action_expert' in message
    assert str(path) in message and 'ExpertConfig' in message


def test_global_section_keys_are_optional_and_ros_parameters_known(tmp_path):
    path = tmp_path / 'p.yaml'
    path.write_text('/**:\n  ros__parameters:\n    rate_hz: 7.0\n    use_sim_time: false\n')
    assert load_config(VlmConfig, 'vlm_node', path).model  # rate_hz is not a VLM parameter
    assert load_config(ExpertConfig, 'action_expert', path).rate_hz == 7.0
    assert unknown_parameters(ExpertConfig, ['qos_overrides./x.depth', 'use_sim_time',
                                             'autostart']) == []
    assert unknown_parameters(ExpertConfig, ['joint_limits.j1.max_velocity'],
                              extra_prefixes=('joint_limits.',)) == []


def test_overrides_defaults_and_bad_values(tmp_path):
    path = tmp_path / 'p.yaml'
    path.write_text('vlm_node:\n  ros__parameters:\n    view_names: [a, b]\n')
    config = load_config(VlmConfig, 'vlm_node', path, defaults={'model': 'local/folder'},
                         overrides={'instruction': 'go', 'model': None})
    assert (config.model, config.instruction) == ('local/folder', 'go')
    assert config.view_names == ('a', 'b')
    with pytest.raises(ConfigError, match='max_view_age_s'):
        load_config(VlmConfig, 'vlm_node', path, overrides={'max_view_age_s': -1.0})


@pytest.mark.parametrize('text', ['[1, 2]', 'vlm_node: 3', 'a: [b',
                                  'vlm_node:\n  ros__parameters: 5'])
def test_malformed_files_are_config_errors(tmp_path, text):
    path = tmp_path / 'p.yaml'
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config(VlmConfig, 'vlm_node', path)


def test_sections_that_name_a_node_but_miss_its_namespace_are_found(tmp_path):
    path = tmp_path / 'p.yaml'
    path.write_text('robot_bridge:\n  ros__parameters:\n    port: 1\n'
                    '/cell_b/robot_bridge:\n  ros__parameters:\n    port: 2\n'
                    '/**/robot_bridge:\n  ros__parameters:\n    port: 3\n'
                    '/**:\n  ros__parameters:\n    use_sim_time: false\n')
    assert sections_not_applying(path, 'robot_bridge', 'cell_a') == [
        'robot_bridge', '/cell_b/robot_bridge']
    assert sections_not_applying(path, 'robot_bridge') == ['/cell_b/robot_bridge']
    assert sections_not_applying(path, 'vlm_node', 'cell_a') == []


def test_params_files_are_read_from_the_ros_arguments_only():
    argv = ['node', '--params-file', 'not_ros.yaml', '--ros-args', '-r', '__ns:=/a',
            '--params-file', 'a.yaml', '-p', 'x:=1', '--params-file', 'b.yaml', '--', 'c']
    assert params_files(argv) == ['a.yaml', 'b.yaml']
