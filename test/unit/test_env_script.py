"""scripts/env.sh gives the shell `make setup` announces: the venv's ROS interfaces indexed.

`source install/setup.bash` alone names only this package's prefix, so ament-index lookups of
the wheels' interfaces (what `ros2 interface show std_msgs/msg/Header` does) failed.
"""
from pathlib import Path
import subprocess

import pytest

pytestmark = pytest.mark.slow         # bash runs scripts/env.sh
ROOT = Path(__file__).resolve().parents[2]
LOOKUP = ('python -c "from ament_index_python.packages import get_resource; '
          "print(get_resource('rosidl_interfaces', 'std_msgs')[1])\"")


def _bash(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(['bash', '-c', script], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={'PATH': '/usr/bin:/bin', 'HOME': str(Path.home())})


@pytest.fixture(scope='module', autouse=True)
def built():
    if not (ROOT / 'install' / 'setup.bash').is_file() or not (ROOT / '.venv').exists():
        pytest.skip('make setup has not run in this checkout')


def test_env_script_indexes_the_venvs_interfaces():
    result = _bash(f'source scripts/env.sh && source scripts/env.sh && '
                   f'echo "$AMENT_PREFIX_PATH" && {LOOKUP}')
    assert result.returncode == 0, result.stderr
    prefixes, found = result.stdout.splitlines()[-2:]
    venv = str((ROOT / '.venv').resolve())
    assert prefixes.split(':').count(venv) == 1, prefixes     # once, even sourced twice
    assert str(ROOT / 'install' / 'vla_insertion') in prefixes.split(':')
    assert found.startswith(venv)                             # std_msgs' share, in the venv


def test_setup_bash_alone_does_not():
    result = _bash(f'source .venv/bin/activate && source install/setup.bash && {LOOKUP}')
    assert result.returncode != 0 and 'LookupError' in result.stderr


def test_make_and_setup_use_it():
    assert 'ENV := source scripts/env.sh &&' in (ROOT / 'Makefile').read_text()
    assert 'source scripts/env.sh' in (ROOT / 'scripts' / 'setup.sh').read_text()
