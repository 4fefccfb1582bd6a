"""The demo brings the whole cell up, every node declares its parameters, and SIGINT stops all.

Also the verify tool on the same models: it passes, and it fails on a contract mismatch.
"""
import dataclasses
import json
from pathlib import Path
import signal
import subprocess
import sys
import threading
import time

import pytest
from rcl_interfaces.srv import ListParameters
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from vla_insertion.core import config as config_module
from vla_insertion.core.orchestration.launch_table import (
    enabled_nodes, launch_arguments, NODES, params_on_free_ports)
from vla_insertion.tools import make_untrained_checkpoint, verify

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope='module')
def checkpoint_dir(tiny_vlm_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp('expert') / 'untrained'
    params = ROOT / 'config' / 'vla_insertion.yaml'
    assert make_untrained_checkpoint.main(
        ['--vlm-model', str(tiny_vlm_dir), '--params-file', str(params),
         '--out', str(out)]) in (0, None)
    return out


def test_verify_passes_on_matching_models(tiny_vlm_dir, checkpoint_dir, capsys):
    code = verify.main(['--params-file', str(ROOT / 'config' / 'vla_insertion.yaml'),
                        '--vlm-model', str(tiny_vlm_dir), '--checkpoint', str(checkpoint_dir),
                        '--no-network'])
    out = capsys.readouterr().out
    assert code == 0, out
    assert 'feature contract' in out and 'UNTRAINED' in out


def test_verify_fails_on_contract_mismatch(tiny_vlm_dir, tmp_path, capsys):
    other = tmp_path / 'other_prompt'
    contract = {'model_id': 'vla_insertion/tiny-qwen2.5-vl-untrained-seed0',
                'reduction': 'other', 'num_tokens': 41, 'feature_dim': 64,
                'image_width': 640, 'image_height': 360,
                'view_names': ['zed_1', 'zed_2', 'zed_3', 'zed_4', 'oak'], 'prompt': 'x'}
    make_untrained_checkpoint.main(['--contract-json', json.dumps(contract),
                                    '--out', str(other)])
    code = verify.main(['--params-file', str(ROOT / 'config' / 'vla_insertion.yaml'),
                        '--vlm-model', str(tiny_vlm_dir), '--checkpoint', str(other),
                        '--no-network'])
    out = capsys.readouterr().out
    assert code == 1
    assert 'feature contract' in out and 'differ' in out
    assert "prompt: VLM '" in out and "vs checkpoint 'x'" in out      # names what differs


def _params_on_free_ports(path: Path) -> Path:
    """Copy the shipped params file with free ports, so no other cell on this host interferes."""
    params_on_free_ports(ROOT / 'config' / 'vla_insertion.yaml', path)
    return path


def _declared_parameters(node: Node, executor, name: str, timeout_s: float
                         ) -> set[str] | None:
    client = node.create_client(ListParameters, f'/{name}/list_parameters')
    try:
        if not client.wait_for_service(timeout_sec=timeout_s):
            return None
        future = client.call_async(ListParameters.Request())
        deadline = time.monotonic() + timeout_s
        while not future.done() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
        return set(future.result().result.names) if future.done() else None
    finally:
        node.destroy_client(client)


def summary_text(text: str) -> str:
    return text[text.index('demo summary'):]


def test_demo_runs_declares_parameters_and_shuts_down_cleanly(
        tiny_vlm_dir, checkpoint_dir, ros_env, ros_domain_id, tmp_path):
    out = tmp_path / 'demo'
    params = _params_on_free_ports(tmp_path / 'params.yaml')
    # the untrained checkpoint: the demo asks to arm and is refused (never an untrained expert)
    cmd = [sys.executable, '-m', 'vla_insertion.tools.demo', '--duration', '8',
           '--policy', 'untrained',
           '--params-file', str(params),
           '--status-period', '4', '--out', str(out), '--vlm-model', str(tiny_vlm_dir),
           '--checkpoint', str(checkpoint_dir), '--startup-timeout', '240']
    demo = subprocess.Popen(cmd, env=ros_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines: list[str] = []
    measuring = threading.Event()

    def read():
        for line in demo.stdout:
            lines.append(line)
            if 'first action chunk' in line:
                measuring.set()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    declared = {}
    try:
        assert measuring.wait(timeout=300), ''.join(lines[-40:])
        context = rclpy.Context()
        rclpy.init(context=context, domain_id=ros_domain_id)
        try:
            probe = Node('param_probe', context=context)
            executor = SingleThreadedExecutor(context=context)
            executor.add_node(probe)
            # the programs the demo starts: the sim with the expert (not policy_client)
            for spec in enabled_nodes(launch_arguments(sim='true', execute='true')):
                if spec.ros_node:
                    declared[spec.name] = _declared_parameters(probe, executor, spec.name, 10.0)
            executor.shutdown()
            probe.destroy_node()
        finally:
            rclpy.try_shutdown(context=context)
        code = demo.wait(timeout=120)
    finally:
        if demo.poll() is None:  # a failed assertion: let the demo stop its programs first
            demo.send_signal(signal.SIGINT)
            try:
                demo.wait(timeout=30)
            except subprocess.TimeoutExpired:
                demo.kill()
        reader.join(timeout=5)
    text = ''.join(lines)
    assert code == 0, text[-4000:]

    for name, names in declared.items():
        spec = next(n for n in NODES if n.name == name)
        fields = {f.name for f in dataclasses.fields(getattr(config_module, spec.config))}
        assert names is not None, f'{name}: list_parameters did not answer'
        assert fields <= names, f'{name} does not declare {sorted(fields - names)}'

    summary = json.loads((out / 'summary.json').read_text())
    assert summary['actions'] > 0 and summary['vl_updates'] > 0
    assert summary['forced'] == [] and summary['orphans'] == []
    # the scored episodes in the keys of every episode summary (core/evaluation/summary.py)
    assert summary['episodes'] == len(summary['per_episode'])
    assert 0 <= summary['successes'] <= summary['episodes']
    assert all(c == 0 for c in summary['exit_codes'].values()), summary['exit_codes']
    assert 'demo summary' in text and 'shutdown            clean' in text
    assert 'arming the chunk executor: the action expert is untrained' in text
    assert 'never armed' in summary_text(text) and summary['actions'] > 0
    for log in (out / 'logs').glob('*.log'):
        assert 'Traceback' not in log.read_text(), f'{log.name} has a traceback'
