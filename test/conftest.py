"""Shared fixtures: ROS domain isolation, an rclpy context per module, bounded waits."""
from __future__ import annotations

import os
import time
import zlib

import pytest

_USED_DOMAINS: set[int] = set()
# ROS domains the test modules may use: 'FIRST:COUNT'. The default 120..219 keeps clear of the
# default 0 and of the demo (77); two suites running at once on one host (two checkouts) give
# each its own range so their graphs never meet.
_DOMAINS = os.environ.get('VLA_TEST_DOMAINS', '120:100')


def _domain_for(module_name: str) -> int:
    # Stable per module, unique within one pytest run.
    first, count = (int(v) for v in _DOMAINS.split(':'))
    if len(_USED_DOMAINS) >= count:
        raise RuntimeError(f'VLA_TEST_DOMAINS={_DOMAINS} has no free ROS domain left')
    domain = first + zlib.crc32(module_name.encode()) % count
    while domain in _USED_DOMAINS:
        domain = first + (domain - first + 1) % count
    _USED_DOMAINS.add(domain)
    return domain


@pytest.fixture(scope='module')
def ros_domain_id(request) -> int:
    return _domain_for(request.module.__name__)


@pytest.fixture(scope='module')
def ros_env(ros_domain_id) -> dict:
    """Return the environment for child processes that join this module's ROS domain."""
    env = dict(os.environ)
    env['ROS_DOMAIN_ID'] = str(ros_domain_id)
    env.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    env['PYTHONUNBUFFERED'] = '1'
    return env


@pytest.fixture(scope='module')
def rclpy_context(ros_domain_id):
    """Yield an initialised rclpy context on this module's own domain."""
    rclpy = pytest.importorskip('rclpy')
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=ros_domain_id)
    yield context
    rclpy.try_shutdown(context=context)


def _spin_until(executor, predicate, timeout_s: float, step_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        executor.spin_once(timeout_sec=step_s)
    return predicate()


@pytest.fixture(scope='session')
def tiny_vlm_dir(tmp_path_factory):
    """Write the untrained tiny Qwen2.5-VL once per test session and return its folder."""
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    from vla_insertion.core.vlm.model import write_tiny_model
    return write_tiny_model(tmp_path_factory.mktemp('vlm') / 'tiny-qwen2.5-vl', seed=0)


@pytest.fixture
def spin_until():
    """Return a function that spins an executor until a predicate holds or a timeout passes."""
    return _spin_until
