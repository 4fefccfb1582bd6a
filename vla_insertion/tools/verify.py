"""verify: check that this machine is ready to run the cell, and print a pass/fail table.

    ros2 run vla_insertion verify                       # the installed params file
    ros2 run vla_insertion verify --params-file my_cell.yaml --robot-ip <robot PC>
    ros2 run vla_insertion verify --two-hosts --dds-profile two_hosts   # on each of two hosts

Checks the Python dependencies, the built package (messages and executables), the params file
(every node's section validates), the VLM model files and the action-expert checkpoint with
their feature contracts, the local ports the bridges bind, whether the configured senders are
sending, and the GPU. Exits 1 if any check fails. Senders are only contacted at the configured
addresses (loopback by default). With --two-hosts also what a cell split over two hosts needs
(docs/bringup.md "Two hosts"): the Fast DDS profile, the kernel's socket buffer limits, DDS
discovery beyond this host, and a synchronised clock.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
import sys

from vla_insertion.core import config as config_module
from vla_insertion.core.config import ConfigError
from vla_insertion.core.orchestration import verify
from vla_insertion.core.orchestration.launch_table import (
    dds_profile_path, installed_paths, NODES)
from vla_insertion.core.orchestration.verify import CheckResult, FAIL, PASS, WARN
from vla_insertion.core.params import load_config


def check_package() -> list[CheckResult]:
    rows = []
    try:
        from vla_insertion.msg import ActionChunk, SensorWindow, VLFeatures  # noqa: F401
        rows.append(CheckResult('package: messages', PASS, 'vla_insertion.msg imports'))
    except ImportError as exc:
        rows.append(CheckResult('package: messages', FAIL,
                                f'{exc}; build with colcon and source install/setup.bash'))
    try:
        lib_dir, _ = installed_paths()
    except (ImportError, LookupError) as exc:
        return rows + [CheckResult('package: executables', FAIL, f'package not found: {exc}')]
    missing = [n.executable for n in NODES if not os.access(lib_dir / n.executable, os.X_OK)]
    rows.append(CheckResult('package: executables', FAIL if missing else PASS,
                            f'missing in {lib_dir}: {missing}' if missing else str(lib_dir)))
    return rows


def check_params(params_file: Path) -> tuple[list[CheckResult], dict]:
    """Validate every node's section; return the rows and the configs that built."""
    rows, configs = [], {}
    for spec in NODES:
        cls = getattr(config_module, spec.config)
        try:
            configs[spec.name] = load_config(cls, spec.name, params_file)
            rows.append(CheckResult(f'params: {spec.name}', PASS, 'valid'))
        except (ConfigError, OSError) as exc:
            rows.append(CheckResult(f'params: {spec.name}', FAIL, str(exc)))
    return rows, configs


def check_models(vlm_config, expert_config) -> list[CheckResult]:
    """Check the VLM files and the checkpoint, and that their feature contracts agree."""
    from vla_insertion.core.expert.checkpoint import CheckpointError, load_checkpoint
    from vla_insertion.core.feature_contract import differences
    from vla_insertion.core.vlm.contract import feature_contract_for
    from vla_insertion.core.vlm.source import resolve_model, VlmLoadError
    rows = []
    contract = None
    try:
        source = resolve_model(vlm_config.model, download=False, revision=vlm_config.revision)
        contract = feature_contract_for(vlm_config, source)
        if source.untrained:
            rows.append(CheckResult('vlm model', WARN, f'{source.model_id} in {source.folder} '
                                    'has UNTRAINED random weights (demo and tests only)'))
        else:
            rows.append(CheckResult('vlm model', PASS, f'{source.model_id} in {source.folder}'))
    except VlmLoadError as exc:
        rows.append(CheckResult('vlm model', FAIL, str(exc)))
    try:
        checkpoint = load_checkpoint(expert_config.checkpoint)
        meta = checkpoint.meta
        rows.append(CheckResult(
            'expert checkpoint', WARN if meta.untrained else PASS,
            f'{expert_config.checkpoint}, contract {meta.contract_digest}'
            + (': UNTRAINED, never drive a real robot with it' if meta.untrained else '')))
    except CheckpointError as exc:
        return rows + [CheckResult('expert checkpoint', FAIL, str(exc))]
    if contract is not None:
        same = contract.digest == meta.contract_digest
        rows.append(CheckResult(
            'feature contract', PASS if same else FAIL,
            f'VLM {contract.digest} == checkpoint {meta.contract_digest}' if same else
            f'VLM features {contract.digest} (model {contract.model_id}) differ from the '
            f"checkpoint's {meta.contract_digest}: "
            + '; '.join(differences(meta.contract, contract))))
    return rows


def check_cell(configs: dict, timeout_s: float) -> list[CheckResult]:
    cam, robot, sensor = (configs.get(n) for n in ('camera_bridge', 'robot_bridge',
                                                   'sensor_bridge'))
    from vla_insertion.core.wire.curve import CurveError, CurveLink, link_keys
    rows = []
    if cam is not None:
        rows.append(verify.check_bind_address('camera_bridge', cam.bind_address))
        rows.append(verify.check_port_free('tcp', cam.bind_address, cam.port))
    if robot is not None:
        try:
            keys = link_keys(robot.curve_keys_dir, 'robot', 'robot_bridge')
        except CurveError as exc:
            rows.append(verify.CheckResult('robot link keys', verify.FAIL, str(exc)))
        else:
            rows.append(verify.check_zmq_publisher(robot.robot_ip, robot.port, timeout_s,
                                                   CurveLink(keys).secure if keys else None))
    if sensor is not None:
        rows.append(verify.check_bind_address('sensor_bridge', sensor.bind_address))
        rows.append(verify.check_udp_sender(sensor.bind_address, sensor.port, timeout_s,
                                            sensor.allowed_sources))
    return rows


def check_two_hosts(profile: str | None, environ: dict) -> list[CheckResult]:
    """Check the DDS profile (`profile`: a dds_profile value, None: the environment's)."""
    if profile is None:
        path = verify.profile_in_environment(environ)
    else:
        try:
            path = str(dds_profile_path(profile, _default_params().parent) or '')
        except ValueError as exc:
            return [CheckResult('dds: profile', FAIL, str(exc))]
    rows, buffers = verify.check_dds_profile(path, environ)
    return rows + [verify.check_socket_buffers(buffers), verify.check_discovery(environ),
                   verify.check_clock_sync()]


def _default_params() -> Path:
    try:
        return installed_paths()[1]
    except (ImportError, LookupError):
        return Path('config/vla_insertion.yaml')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--params-file', type=Path, default=None,
                        help='ROS params file (default: the installed vla_insertion.yaml)')
    parser.add_argument('--robot-ip', default=None, help='override robot_bridge.robot_ip')
    parser.add_argument('--vlm-model', default=None, help='override vlm_node.model')
    parser.add_argument('--checkpoint', default=None, help='override action_expert.checkpoint')
    parser.add_argument('--timeout', type=float, default=2.0,
                        help='seconds to wait for each sender')
    parser.add_argument('--no-network', action='store_true',
                        help='skip the port and sender checks')
    parser.add_argument('--two-hosts', action='store_true',
                        help='also check the DDS profile, socket buffers, discovery and clock '
                        'of a cell split over two hosts')
    parser.add_argument('--dds-profile', default=None,
                        help='with --two-hosts: the dds_profile the launch gets (two_hosts or '
                        'a file; default: the one the environment selects)')
    args = parser.parse_args(argv)
    params_file = args.params_file or _default_params()

    rows = verify.check_python_deps() + check_package()
    param_rows, configs = check_params(params_file)
    rows += param_rows
    overrides = {'robot_bridge': {'robot_ip': args.robot_ip},
                 'vlm_node': {'model': args.vlm_model},
                 'action_expert': {'checkpoint': args.checkpoint}}
    for node, values in overrides.items():
        values = {k: v for k, v in values.items() if v is not None}
        if values and node in configs:
            configs[node] = dataclasses.replace(configs[node], **values)
    if 'vlm_node' in configs and 'action_expert' in configs:
        rows += check_models(configs['vlm_node'], configs['action_expert'])
    if not args.no_network:
        rows += check_cell(configs, args.timeout)
    if args.two_hosts:
        rows += check_two_hosts(args.dds_profile, dict(os.environ))
    rows.append(verify.check_gpu())
    print(verify.format_table(rows))
    return 1 if verify.overall(rows) == FAIL else 0


if __name__ == '__main__':
    sys.exit(main())
