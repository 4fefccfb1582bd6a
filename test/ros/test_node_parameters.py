"""Parameters as ROS users meet them: namespaces, live changes, read-only ones, ranges.

- The shipped params file applies under `-r __ns:=/cell_a`: a real robot_bridge process runs
  in the namespace and its parameters are read back through its GetParameters service (what
  `ros2 param get` calls); a section keyed without a namespace is warned about instead of
  dropped in silence; the node names itself by its fully qualified name in /diagnostics and
  vla/stats; its parameters are read-only.
- The action expert applies live parameters (rate, staleness limits, flow steps) through the
  SetParameters service with the same validation as at start-up: a bad value is refused with
  the reason and the old value kept; a configure-time parameter is refused while active.

ros2cli is not installed here; the services are the ones `ros2 param` calls.
"""
from __future__ import annotations

import os
from pathlib import Path
import signal
import socket
import subprocess
import sys
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
import pytest
from rcl_interfaces.msg import Parameter as ParameterMsg, ParameterType
from rcl_interfaces.srv import DescribeParameters, GetParameters, SetParameters
from rclpy.node import Node
from rclpy.parameter import Parameter
import yaml

from vla_insertion.core.expert.presets import make_untrained_checkpoint
from vla_insertion.core.expert.staleness import StalenessLimits
from vla_insertion.core.feature_contract import FeatureContract
from vla_insertion.msg import NodeStats
from vla_insertion.nodes.action_expert import ActionExpertNode
from vla_insertion.ros.qos import DIAGNOSTICS_QOS, LATEST_QOS

ROOT = Path(__file__).resolve().parents[2]
PARAMS = ROOT / 'config' / 'vla_insertion.yaml'
WAIT_S = 60.0
CONTRACT = FeatureContract(model_id='tiny-test-vlm', reduction='image_token_grid_pool',
                           num_tokens=6, feature_dim=32, image_width=64, image_height=36,
                           view_names=('zed_1', 'oak'), prompt='insert')


class Probe(Node):
    """Calls services and keeps the /diagnostics statuses and vla/stats it sees."""

    def __init__(self, context, call_service, stats_topic: str = 'vla/stats') -> None:
        super().__init__('param_probe', context=context)
        self.call = call_service
        self.lock = threading.Lock()
        self.statuses: dict[str, str] = {}      # diagnostics status name -> hardware_id
        self.stats_nodes: set[str] = set()
        self.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag,
                                 DIAGNOSTICS_QOS)
        self.create_subscription(NodeStats, stats_topic, self._on_stats, LATEST_QOS)

    def _on_diag(self, msg: DiagnosticArray) -> None:
        with self.lock:
            self.statuses.update({s.name: s.hardware_id for s in msg.status})

    def _on_stats(self, msg: NodeStats) -> None:
        with self.lock:
            self.stats_nodes.add(msg.node)

    def set_params(self, node: str, **values):
        request = SetParameters.Request(parameters=[
            Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
        response = self.call(self, SetParameters, f'{node}/set_parameters', request)
        assert response is not None, f'{node}/set_parameters did not answer'
        return response.results[0]

    def get(self, node: str, *names: str) -> dict:
        response = self.call(self, GetParameters, f'{node}/get_parameters',
                             GetParameters.Request(names=list(names)))
        assert response is not None, f'{node}/get_parameters did not answer'
        return {n: Parameter.from_parameter_msg(_named(n, v)).value
                for n, v in zip(names, response.values)}

    def describe(self, node: str, *names: str) -> dict:
        response = self.call(self, DescribeParameters, f'{node}/describe_parameters',
                             DescribeParameters.Request(names=list(names)))
        assert response is not None
        return {d.name: d for d in response.descriptors}


def _named(name, value) -> ParameterMsg:
    return ParameterMsg(name=name, value=value)


def _wait(predicate, timeout_s: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def test_the_shipped_file_is_keyed_for_any_namespace():
    doc = yaml.safe_load(PARAMS.read_text())
    assert doc and all(key.startswith('/**/') for key in doc), sorted(doc)


def test_a_namespaced_node_gets_its_params_file(ros_env, rclpy_context, spin, call_service,
                                                tmp_path):
    doc = yaml.safe_load(PARAMS.read_text())
    section = doc['/**/robot_bridge']['ros__parameters']
    section.update(min_rate_hz=42.0, port=_free_tcp_port())
    cell = tmp_path / 'cell.yaml'
    cell.write_text(yaml.safe_dump(doc))
    old_style = tmp_path / 'old_style.yaml'    # keyed the way that dropped parameters
    old_style.write_text('robot_bridge:\n  ros__parameters:\n    stale_after_s: 3.0\n')
    log = tmp_path / 'robot_bridge.log'
    with open(log, 'w') as out:
        proc = subprocess.Popen(
            [sys.executable, '-m', 'vla_insertion.nodes.robot_bridge', '--ros-args',
             '-r', '__ns:=/cell_a', '--params-file', str(cell), '--params-file', str(old_style)],
            env=ros_env, stdout=out, stderr=subprocess.STDOUT)
    probe = Probe(rclpy_context, call_service, stats_topic='/cell_a/vla/stats')
    spin(probe)
    try:
        values = probe.get('/cell_a/robot_bridge', 'min_rate_hz', 'port', 'stale_after_s')
        assert values == {'min_rate_hz': 42.0, 'port': section['port'], 'stale_after_s': 0.5}
        # one identity: the fully qualified name in /diagnostics and vla/stats
        assert _wait(lambda: 'cell_a/robot_bridge' in probe.statuses
                     and '/cell_a/robot_bridge' in probe.stats_nodes), \
            (probe.statuses, probe.stats_nodes)
        assert probe.statuses['cell_a/robot_bridge'] == '/cell_a/robot_bridge'
        # a bridge's parameters are read-only: the socket is bound once, at start
        result = probe.set_params('/cell_a/robot_bridge', port=1234)
        assert not result.successful and 'read-only' in result.reason
        assert probe.get('/cell_a/robot_bridge', 'port') == {'port': section['port']}
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
    text = log.read_text()
    assert code == 0, text[-2000:]
    assert "section 'robot_bridge' does not apply to /cell_a/robot_bridge" in text, text[-2000:]
    assert '/**/robot_bridge' in text


@pytest.fixture(scope='module')
def flow_checkpoint(tmp_path_factory):
    return make_untrained_checkpoint(tmp_path_factory.mktemp('expert') / 'flow', CONTRACT,
                                     preset='small', head='flow', flow_steps=10, seed=0)


def test_live_parameters_apply_with_the_start_up_validation(rclpy_context, spin, call_service,
                                                            flow_checkpoint):
    expert = ActionExpertNode(context=rclpy_context, parameter_overrides=[
        Parameter('checkpoint', value=str(flow_checkpoint)), Parameter('torch_threads', value=1)])
    assert expert.start() == 0
    probe = Probe(rclpy_context, call_service)
    spin(expert, probe)
    node = '/action_expert'
    assert expert._ticker.period_s == pytest.approx(0.1)

    # live: the loop restarts on the new period, the runner gets the new limits and steps
    result = probe.set_params(node, rate_hz=5.0)
    assert result.successful, result.reason
    assert expert._ticker.period_s == pytest.approx(0.2)
    assert probe.set_params(node, max_feature_age_s=0.4, require_complete_window=False).successful
    assert expert._runner.limits == StalenessLimits(
        max_feature_age_s=0.4, max_sensor_age_s=0.1, max_robot_age_s=0.2,
        require_complete_window=False)
    assert probe.set_params(node, flow_steps=3).successful
    assert expert._runner.policy.steps == 3

    # refused with the reason; the old value stays, in ROS and in the node
    for value, reason in ((-1.0, 'rate_hz'), (0.0, 'rate_hz must be a finite number > 0'),
                          (5000.0, 'rate_hz')):
        result = probe.set_params(node, rate_hz=value)
        assert not result.successful and reason in result.reason, result.reason
    result = probe.set_params(node, max_robot_age_s=-0.2)
    assert not result.successful and 'max_robot_age_s must be' in result.reason
    assert probe.get(node, 'rate_hz', 'max_robot_age_s') == {'rate_hz': 5.0,
                                                             'max_robot_age_s': 0.2}
    assert expert._ticker.period_s == pytest.approx(0.2)

    # configure-time parameters wait for the lifecycle
    result = probe.set_params(node, checkpoint='/somewhere/else')
    assert not result.successful and 'unconfigured' in result.reason, result.reason
    assert probe.get(node, 'checkpoint') == {'checkpoint': str(flow_checkpoint)}

    # what `ros2 param describe` shows: ranges, live or not, read-only
    described = probe.describe(node, 'rate_hz', 'checkpoint', 'autostart', 'flow_steps')
    rate = described['rate_hz']
    assert rate.type == ParameterType.PARAMETER_DOUBLE and not rate.read_only
    assert (rate.floating_point_range[0].from_value,
            rate.floating_point_range[0].to_value) == (0.0, 1000.0)
    assert 'live' in rate.additional_constraints
    assert described['flow_steps'].integer_range[0].to_value == 1000
    assert 'unconfigured' in described['checkpoint'].additional_constraints
    assert described['autostart'].read_only


def test_an_out_of_range_start_value_is_a_config_error(rclpy_context, flow_checkpoint):
    from vla_insertion.core.config import ConfigError
    with pytest.raises(ConfigError, match='rate_hz'):
        ActionExpertNode(context=rclpy_context, parameter_overrides=[
            Parameter('checkpoint', value=str(flow_checkpoint)),
            Parameter('rate_hz', value=2000.0)]).destroy_node()


@pytest.mark.parametrize('args,expected', [
    (['-p', 'rate_hz:=-1.0'], 'invalid configuration: rate_hz must be'),
    ([], 'configure failed: checkpoint: '),       # the relative default, from another folder
], ids=['bad_value', 'missing_checkpoint'])
def test_the_fatal_line_names_the_node_and_what_to_pass(ros_env, tmp_path, args, expected):
    env = {**ros_env, 'PYTHONPATH': os.pathsep.join([str(ROOT), ros_env.get('PYTHONPATH', '')])}
    result = subprocess.run(
        [sys.executable, '-m', 'vla_insertion.nodes.action_expert', '--ros-args', *args],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    line = next((line for line in result.stderr.splitlines() if expected in line), '')
    assert '[FATAL]' in line and '[action_expert]' in line, result.stderr[-2000:]
    if not args:   # says where it looked and what to pass
        assert str(tmp_path) in line and 'checkpoint:=' in line, line


def test_the_executor_takes_every_value_of_the_shipped_file(rclpy_context):
    # Typed arrays whose default is empty (workspace_min_m) must still take the file's
    # [x, y, z]: rclpy would type an empty default as a byte array.
    from vla_insertion.nodes.chunk_executor import ChunkExecutorNode
    section = yaml.safe_load(PARAMS.read_text())['/**/chunk_executor']['ros__parameters']
    given = {k: v for k, v in section.items() if not isinstance(v, dict)}
    node = ChunkExecutorNode(context=rclpy_context, parameter_overrides=[
        Parameter(name, value=value) for name, value in given.items()])
    try:
        config = node._config
        for name, value in given.items():
            got = getattr(config, name)
            assert (list(got) if isinstance(got, tuple) else got) == value, name
        assert len(config.workspace_min_m) == 3
        assert node.get_parameter_or('workspace_max_m').value is not None
    finally:
        node.destroy_node()
    unset = ChunkExecutorNode(context=rclpy_context)      # no box (a params file's [] too)
    try:
        assert unset._config.workspace_min_m == () == unset._config.workspace_max_m
    finally:
        unset.destroy_node()
