"""scripts/env.sh gives the shell `make setup` announces: the venv's ROS interfaces indexed.

`source install/setup.bash` alone names only this package's prefix, so ament-index lookups of
the wheels' interfaces (what `ros2 interface show std_msgs/msg/Header` does) failed.

Checked for the distribution this suite runs on ($ROS_DISTRO: kilted's .venv and install/, or
jazzy's .venv-jazzy and install-jazzy/).
"""
import os
from pathlib import Path
import subprocess

import pytest

from vla_insertion.core.distro import DEFAULT_DISTRO, ros_distro

pytestmark = pytest.mark.slow         # bash runs scripts/env.sh
ROOT = Path(__file__).resolve().parents[2]
LOOKUP = ('python -c "from ament_index_python.packages import get_resource; '
          "print(get_resource('rosidl_interfaces', 'std_msgs')[1])\"")
DISTRO = ros_distro()
SUFFIX = '' if DISTRO == DEFAULT_DISTRO else f'-{DISTRO}'
VENV, INSTALL = f'.venv{SUFFIX}', f'install{SUFFIX}'


def _bash(script: str, distro: str | None = DISTRO) -> subprocess.CompletedProcess:
    env = {'PATH': '/usr/bin:/bin', 'HOME': str(Path.home())}
    if distro:
        env['ROS_DISTRO'] = distro
    return subprocess.run(['bash', '-c', script], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=env)


@pytest.fixture(scope='module', autouse=True)
def built():
    if not (ROOT / INSTALL / 'setup.bash').is_file() or not (ROOT / VENV).exists():
        pytest.skip(f'make setup has not run in this checkout for {DISTRO}')


def test_env_script_indexes_the_venvs_interfaces():
    result = _bash(f'source scripts/env.sh && source scripts/env.sh && '
                   f'echo "$AMENT_PREFIX_PATH" && {LOOKUP}')
    assert result.returncode == 0, result.stderr
    prefixes, found = result.stdout.splitlines()[-2:]
    venv = str((ROOT / VENV).resolve())
    assert prefixes.split(':').count(venv) == 1, prefixes     # once, even sourced twice
    assert str(ROOT / INSTALL / 'vla_insertion') in prefixes.split(':')
    assert found.startswith(venv)                             # std_msgs' share, in the venv


def test_env_script_exports_the_distribution():
    result = _bash('source scripts/env.sh && echo "$ROS_DISTRO" && python -c '
                   '"import sys; print(sys.prefix)"')
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [DISTRO, str((ROOT / VENV).resolve())]
    if DISTRO == DEFAULT_DISTRO:                              # unset: kilted's folders
        result = _bash('source scripts/env.sh && echo "$ROS_DISTRO"', distro=None)
        assert result.stdout.split() == [DEFAULT_DISTRO], result.stderr


def test_setup_bash_alone_does_not():
    result = _bash(f'source {VENV}/bin/activate && source {INSTALL}/setup.bash && {LOOKUP}')
    assert result.returncode != 0 and 'LookupError' in result.stderr


@pytest.mark.parametrize('args, distro', [([], 'kilted'), (['ROS_DISTRO=jazzy'], 'jazzy')])
def test_the_makefile_exports_the_distribution_to_its_recipes(args, distro):
    """`make test ROS_DISTRO=jazzy` reaches env.sh and pytest; kilted by default."""
    # not the outer make's command-line variables either (a suite run by `make test`)
    env = {k: v for k, v in os.environ.items()
           if k not in ('ROS_DISTRO', 'MAKEFLAGS', 'MFLAGS', 'MAKELEVEL')}
    result = subprocess.run(['make', '-s', '--eval', 'print-distro: ; @echo "$$ROS_DISTRO"',
                             'print-distro', *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.stdout.split() == [distro], result.stderr


def test_make_and_setup_use_it():
    assert 'ENV := source scripts/env.sh &&' in (ROOT / 'Makefile').read_text()
    assert 'source scripts/env.sh' in (ROOT / 'scripts' / 'setup.sh').read_text()
