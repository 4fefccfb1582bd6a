"""Package linters as tests: flake8 with ament's settings, pep257, package.xml validity."""
from pathlib import Path
import shutil
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[2]
PY_DIRS = ['vla_insertion', 'test', 'launch', 'benchmarks', 'scripts']


def _existing(dirs):
    return [d for d in dirs if (ROOT / d).exists()]


@pytest.mark.slow
def test_flake8():
    result = subprocess.run([sys.executable, '-m', 'flake8', *_existing(PY_DIRS)],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_pep257():
    result = subprocess.run([sys.executable, '-m', 'pydocstyle', *_existing(PY_DIRS)],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_package_xml_is_valid_format3():
    catkin_pkg = pytest.importorskip('catkin_pkg.package')
    package = catkin_pkg.parse_package(ROOT / 'package.xml')
    package.validate()
    assert package.package_format == 3
    assert package.name == 'vla_insertion'
    assert any(e.tagname == 'build_type' and e.content == 'ament_cmake'
               for e in package.exports)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which('xmllint') is None, reason='xmllint not installed')
def test_xmllint_well_formed():
    result = subprocess.run(['xmllint', '--noout', 'package.xml'], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
