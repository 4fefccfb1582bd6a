"""A bridge that cannot open its socket exits with a clear fatal error, not a traceback."""
from pathlib import Path
import socket
import subprocess
import sys

ROOT = Path(__file__).resolve().parents[2]


def test_camera_bridge_on_a_busy_port_exits_2_with_a_clear_message(ros_env):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(('127.0.0.1', 0))
        held.listen()
        port = held.getsockname()[1]
        result = subprocess.run(
            [sys.executable, '-m', 'vla_insertion.nodes.camera_bridge', '--ros-args',
             '-p', f'port:={port}'], cwd=ROOT, env=ros_env, capture_output=True, text=True,
            timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert 'Address already in use' in output
    assert 'Traceback' not in output
